"""Model cards: one small YAML/JSON file per zoo entry, validated strictly.

A card says everything needed to rebuild a model and to report where its numbers come from: architecture
and its arguments, number of classes, dataset, the normalization the model applies inside itself, where the
checkpoint is (a local path, or a file name + sha256 + download URL), and metadata (training, threat model,
source, reported clean accuracy, licence). A misspelt key is an error, not a silently ignored field: an
ignored ``normalisation`` would give plausible-looking but wrong accuracies.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Mapping

import torch
import yaml

from robustkit.errors import ConfigError, check_keys, short_repr, unknown_name
from robustkit.outputs import output_dir, write_text
from robustkit.threat import canonical_norm, parse_eps
from robustkit.userfiles import read_yaml_file

from .arch_registry import ARCHS
from .checkpoint import save_safetensors, sha256_file
from .normalize import parse_normalization

CARD_KEYS = ("name", "arch", "arch_kwargs", "num_classes", "dataset", "normalization", "checkpoint",
             "training", "threat_model", "source", "reported_clean_acc", "licence")
REQUIRED_KEYS = ("name", "arch")
CHECKPOINT_KEYS = ("path", "url", "sha256", "file", "key", "index")
CARD_SUFFIXES = (".yaml", ".yml", ".json")
EXTERNAL_PREFIXES = ("robustbench", "torchvision", "timm")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class CheckpointSpec:
    """Where a card's weights are: a local ``path``, or a ``file`` (+ ``sha256``, optional ``url``) that is
    looked up in a weights folder or the download cache. ``key`` / ``index`` select inside the file."""

    path: Path | None = None
    file: str | None = None
    sha256: str | None = None
    url: str | None = None
    key: str | None = None
    index: int | None = None


@dataclass(frozen=True)
class ModelCard:
    """A validated model card. ``origin`` names the card file (or the config it came from) for messages."""

    name: str
    arch: str
    arch_kwargs: dict[str, Any]
    num_classes: int
    dataset: str | None
    normalization: tuple[tuple[float, ...], tuple[float, ...]] | None
    checkpoint: CheckpointSpec | None
    training: str | None
    threat_model: str | None
    source: str | None
    reported_clean_acc: float | None
    licence: str | None
    origin: str
    path: Path | None = None
    raw: dict[str, Any] = field(default_factory=dict, compare=False)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable card, with the checkpoint resolved as far as the card itself can say."""
        ckpt: Any = None
        if self.checkpoint is not None:
            c = self.checkpoint
            ckpt = {k: v for k, v in (("path", str(c.path) if c.path else None), ("file", c.file),
                                      ("sha256", c.sha256), ("url", c.url), ("key", c.key), ("index", c.index))
                    if v is not None}
        norm = None
        if self.normalization is not None:
            norm = {"mean": list(self.normalization[0]), "std": list(self.normalization[1])}
        return {"name": self.name, "arch": self.arch, "arch_kwargs": dict(self.arch_kwargs),
                "num_classes": self.num_classes, "dataset": self.dataset, "normalization": norm,
                "checkpoint": ckpt, "training": self.training, "threat_model": self.threat_model,
                "source": self.source, "reported_clean_acc": self.reported_clean_acc, "licence": self.licence,
                "card": str(self.path) if self.path is not None else self.origin}


def is_external(arch: str) -> bool:
    """True for ``robustbench:...``, ``torchvision:...`` and ``timm:...`` names."""
    return ":" in arch and arch.split(":", 1)[0].lower() in EXTERNAL_PREFIXES


def _opt_str(data: Mapping[str, Any], key: str, where: str) -> str | None:
    value = data.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise ConfigError(f"{where}: {key}: expected a string, got {short_repr(value)}")
    return value.strip() or None


def _threat_model(value: Any, where: str) -> str | None:
    if value is None or isinstance(value, str):
        return value.strip() if isinstance(value, str) and value.strip() else None
    if isinstance(value, Mapping) and set(value) == {"norm", "eps"}:
        norm = canonical_norm(value["norm"])
        eps_text = str(value["eps"]).strip()
        parse_eps(value["eps"], field=f"{where}: threat_model.eps")
        return f"{norm} {eps_text}"
    raise ConfigError(f"{where}: threat_model: expected a string like 'Linf 8/255' or {{norm, eps}}, got {short_repr(value)}")


def _checkpoint(value: Any, where: str, base_dir: Path | None) -> CheckpointSpec | None:
    if value is None:
        return None
    base = base_dir if base_dir is not None else Path.cwd()
    if isinstance(value, (str, Path)):
        text = str(value).strip()
        if not text:
            raise ConfigError(f"{where}: checkpoint: expected a path, got an empty string")
        p = Path(text).expanduser()
        return CheckpointSpec(path=p if p.is_absolute() else (base / p))
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where}: checkpoint: expected a path or a mapping with file/sha256/url, got {short_repr(value)}")
    check_keys(value, CHECKPOINT_KEYS, f"{where}: checkpoint: ")
    for k in ("path", "url", "sha256", "file", "key"):
        if value.get(k) is not None and not isinstance(value[k], str):
            raise ConfigError(f"{where}: checkpoint.{k}: expected a string, got {short_repr(value[k])}")
    index = value.get("index")
    if index is not None and (isinstance(index, bool) or not isinstance(index, int) or index < 0):
        raise ConfigError(f"{where}: checkpoint.index: expected an integer >= 0, got {short_repr(index)}")
    sha = value.get("sha256")
    if sha is not None:
        sha = sha.strip().lower()
        if not _SHA256.match(sha):
            raise ConfigError(f"{where}: checkpoint.sha256: expected 64 hex digits, got {short_repr(value['sha256'])}")
    has_path, has_file = bool(value.get("path")), bool(value.get("file"))
    if has_path == has_file:
        raise ConfigError(f"{where}: checkpoint: give exactly one of path (a local file) or file (+ sha256, url)")
    url = value.get("url")
    if url is not None and not url.lower().startswith(("https://", "http://", "file://")):
        raise ConfigError(f"{where}: checkpoint.url: expected an http(s):// or file:// URL, got {short_repr(url)}")
    if has_file:
        rel = PurePosixPath(value["file"])
        if rel.is_absolute() or ".." in rel.parts or not rel.parts:
            raise ConfigError(f"{where}: checkpoint.file: expected a relative path without '..', got {short_repr(value['file'])}")
        if sha is None:
            raise ConfigError(f"{where}: checkpoint: file {short_repr(value['file'])} needs its sha256")
        return CheckpointSpec(file=str(rel), sha256=sha, url=url, key=value.get("key"), index=index)
    p = Path(value["path"]).expanduser()
    return CheckpointSpec(path=p if p.is_absolute() else (base / p), sha256=sha, url=url,
                          key=value.get("key"), index=index)


def parse_card(data: Any, *, origin: str, base_dir: Path | None = None, path: Path | None = None) -> ModelCard:
    """Validate a card (or sweep-config model entry) and return a :class:`ModelCard`.

    ``origin`` is used in every error ("model card cards/foo.yaml: ..."). Relative checkpoint paths
    resolve against ``base_dir``; ``path`` is the card file, if any.
    """
    where = origin
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where}: expected a mapping of card fields, got {type(data).__name__}")
    check_keys(data, CARD_KEYS, f"{where}: ")
    for k in REQUIRED_KEYS:
        if not isinstance(data.get(k), str) or not data[k].strip():
            raise ConfigError(f"{where}: {k}: required, expected a non-empty string, got {short_repr(data.get(k))}")
    name = data["name"].strip()
    arch = data["arch"].strip()
    if name != arch and (is_external(name) or "/" in name or "\\" in name):
        # (an external model may be named by its spec, e.g. "timm:resnet18", when it is also its arch)
        raise ConfigError(f"{where}: name: {short_repr(name)} must not contain '/', '\\' or an external prefix like 'timm:'")
    if not is_external(arch) and arch.lower() not in ARCHS:
        raise ConfigError(f"{where}: arch: {unknown_name('architecture', arch, ARCHS.names())}")
    arch_kwargs = data.get("arch_kwargs") or {}
    if not isinstance(arch_kwargs, Mapping) or not all(isinstance(k, str) for k in arch_kwargs):
        raise ConfigError(f"{where}: arch_kwargs: expected a mapping of argument names to values, got {short_repr(arch_kwargs)}")
    num_classes = data.get("num_classes", 10)
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ConfigError(f"{where}: num_classes: expected a positive integer, got {short_repr(num_classes)}")
    acc = data.get("reported_clean_acc")
    if acc is not None and (isinstance(acc, bool) or not isinstance(acc, (int, float)) or not 0 <= acc <= 100):
        raise ConfigError(f"{where}: reported_clean_acc: expected a percentage between 0 and 100, got {short_repr(acc)}")
    return ModelCard(
        name=name,
        arch=arch,
        arch_kwargs=dict(arch_kwargs),
        num_classes=num_classes,
        dataset=_opt_str(data, "dataset", where),
        normalization=parse_normalization(data.get("normalization"), field=f"{where}: normalization"),
        checkpoint=_checkpoint(data.get("checkpoint"), where, base_dir),
        training=_opt_str(data, "training", where),
        threat_model=_threat_model(data.get("threat_model"), where),
        source=_opt_str(data, "source", where),
        reported_clean_acc=None if acc is None else float(acc),
        licence=_opt_str(data, "licence", where),
        origin=origin,
        path=path,
        raw=dict(data),
    )


def read_card_file(path: str | Path) -> ModelCard:
    """Read and validate one card file (.yaml/.yml/.json); relative checkpoint paths are relative to it."""
    p = Path(path).expanduser()
    origin = f"model card {p}"
    if p.suffix.lower() not in CARD_SUFFIXES:
        raise ConfigError(f"{origin}: expected a .yaml, .yml or .json file")
    data = read_yaml_file(p, origin)  # bounded: size and expanded aliases (robustkit.userfiles)
    return parse_card(data, origin=origin, base_dir=p.parent.resolve(), path=p.resolve())


def write_card(folder: str | Path, card: Mapping[str, Any], state_dict: Mapping[str, torch.Tensor], *,
               metadata: dict[str, str] | None = None) -> tuple[Path, Path, dict[str, Any]]:
    """Write a zoo entry: ``<name>.safetensors`` and the card ``<name>.yaml`` that names it (path + sha256).

    The one writer of model cards (``robustkit train`` and the digits quickstart zoo both use it). ``card``
    holds every field but ``checkpoint``, which is filled in here; the card is validated exactly as a reader
    validates it (:func:`parse_card`) before it is written, so a card robustkit writes always loads. Keys are
    written in :data:`CARD_KEYS` order. Returns (card path, weights path, the card as written).
    """
    folder = output_dir(folder)
    name = str(card["name"])
    weights = save_safetensors(state_dict, folder / f"{name}.safetensors", metadata=metadata)
    full = {**card, "checkpoint": {"path": weights.name, "sha256": sha256_file(weights)}}
    written = {key: full[key] for key in CARD_KEYS if key in full}
    card_path = folder / f"{name}.yaml"
    parse_card(written, origin=f"model card {card_path}", base_dir=folder.resolve(), path=card_path.resolve())
    write_text(card_path, yaml.safe_dump(written, sort_keys=False))
    return card_path, weights, written
