"""Sweep configs (YAML): parsing, validation and resolution into a runnable :class:`Sweep`.

Everything is checked before any computation starts -- keys (with "did you mean"), types, eps values, attack
names and parameters, dataset and checkpoint files, then the dataset and every model are loaded -- so a
typo costs a second, not the hours of compute that ran before it was reached. Every error is one
:class:`robustkit.errors.ConfigError` line that starts with the config file's name. Relative paths (dataset
root, checkpoints, model cards, output) resolve against the folder of the config file. See docs/engine.md.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping


from robustkit.data import load_dataset
from robustkit.defenses.sweep import check_model_entry, defended_model
from robustkit.errors import ConfigError, RobustkitError, check_keys, short_repr
from robustkit.threat import canonical_norm
from robustkit.userfiles import read_yaml_file
from robustkit.zoo import load_model
from robustkit.zoo.cards import CARD_KEYS

from .devices import resolve_device
from .options import OPTION_KEYS, RunOptions, parse_options
from .sweep import ModelEntry, Sweep, build_suite, check_suite, eps_list
from .beyond_lp import check_specs
from .threat_specs import ThreatSpec, split_threat_models

CONFIG_KEYS = ("seed", "device", "batch_size", "dataset", "models", "threat_model", "attacks", "output",
               *OPTION_KEYS)
THREAT_KEYS = ("norm", "eps")
# Model-entry keys the engine itself reads (defenses: robustkit.defenses.sweep); every other key of a model
# entry must be a model-card key (robustkit.zoo.cards.CARD_KEYS).
ENGINE_MODEL_KEYS: tuple[str, ...] = ("defense", "members", "model")
CARD_FILE_SUFFIXES = (".yaml", ".yml", ".json")


@dataclass
class SweepConfig:
    """A validated config whose paths are absolute; nothing is loaded yet (see :func:`resolve_config`)."""

    source: str                     # the config file's name (or "command line"), the prefix of every error
    base_dir: Path
    dataset: Any                    # a name or a mapping for robustkit.data.load_dataset
    models: list[Any]               # names, card paths or card mappings for robustkit.zoo.load_model
    norm: str
    eps: list[float]
    attacks: list[Any]
    seed: int = 0
    device: str = "auto"
    batch_size: int | None = None
    output: Path | None = None
    options: RunOptions = field(default_factory=RunOptions)  # checks, certified radii, curve, workers, ...
    raw: dict[str, Any] = field(default_factory=dict)
    extra_threats: list[ThreatSpec] = field(default_factory=list)  # corruption / patch / universal sections

    def error(self, message: str) -> ConfigError:
        return ConfigError(f"{self.source}: {message}")


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _check_keys(data: Mapping[str, Any], allowed: tuple[str, ...], where: str, source: str) -> None:
    check_keys(data, allowed, f"{source}: {where}")


def _int(value: Any, key: str, source: str, *, positive: bool = False, optional: bool = False) -> int | None:
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or (positive and value < 1):
        what = "a positive integer" if positive else "an integer"
        raise ConfigError(f"{source}: {key}: expected {what}, got {short_repr(value)} ({_type_name(value)})")
    return value


def _path(value: Any, base_dir: Path) -> Path:
    p = Path(os.path.expanduser(str(value)))
    return Path(os.path.abspath(p if p.is_absolute() else base_dir / p))


def _looks_like_card_path(text: str) -> bool:
    return text.lower().endswith(CARD_FILE_SUFFIXES) or "/" in text or os.sep in text


def _parse_dataset(value: Any, base_dir: Path, source: str) -> Any:
    if isinstance(value, str) and value.strip():
        return value.strip()
    if not isinstance(value, Mapping):
        raise ConfigError(f"{source}: dataset: expected a name or a mapping with 'name' (and root, n_examples, "
                          f"...), got {short_repr(value)} ({_type_name(value)})")
    spec = dict(value)
    if not isinstance(spec.get("name"), str) or not spec["name"].strip():
        raise ConfigError(f"{source}: dataset.name: required, expected a dataset name, got {short_repr(spec.get('name'))}")
    if "n_examples" in spec:
        _int(spec["n_examples"], "dataset.n_examples", source, positive=True)
    if spec.get("root") is not None:
        if not isinstance(spec["root"], str) or not spec["root"].strip():
            raise ConfigError(f"{source}: dataset.root: expected a path, got {short_repr(spec['root'])}")
        root = _path(spec["root"], base_dir)
        if not root.exists():
            raise ConfigError(f"{source}: dataset.root: not found: {root}")
        spec["root"] = str(root)
    return spec


def _parse_model(value: Any, i: int, base_dir: Path, source: str, where: str | None = None) -> Any:
    where = where or f"models[{i}]"
    if isinstance(value, str) and value.strip():
        text = value.strip()
        if _looks_like_card_path(text):
            card = _path(text, base_dir)
            if not card.is_file():
                raise ConfigError(f"{source}: {where}: model card not found: {card}")
            return str(card)
        return text
    if not isinstance(value, Mapping):
        raise ConfigError(f"{source}: {where}: expected a zoo name, a card path or a mapping with name/arch/"
                          f"checkpoint, got {short_repr(value)} ({_type_name(value)})")
    allowed = tuple(CARD_KEYS) + ENGINE_MODEL_KEYS
    _check_keys(value, allowed, f"{where}: ", source)
    entry = dict(value)
    if not isinstance(entry.get("name"), str) or not entry["name"].strip():
        raise ConfigError(f"{source}: {where}.name: required, expected a string, got {short_repr(entry.get('name'))}")
    if set(entry) == {"name"}:
        return entry["name"].strip()  # {name: <zoo name>}
    if any(k in entry for k in ENGINE_MODEL_KEYS):
        return _parse_defended_model(entry, where, base_dir, source)
    ckpt = entry.get("checkpoint")
    ckpt_path = ckpt.get("path") if isinstance(ckpt, Mapping) else ckpt
    if ckpt_path is not None:
        if not isinstance(ckpt_path, str) or not ckpt_path.strip():
            raise ConfigError(f"{source}: {where}.checkpoint: expected a path, got {short_repr(ckpt_path)}")
        resolved = _path(ckpt_path, base_dir)
        if not resolved.is_file():
            raise ConfigError(f"{source}: {where}.checkpoint: file not found: {resolved}")
        entry["checkpoint"] = {**ckpt, "path": str(resolved)} if isinstance(ckpt, Mapping) else str(resolved)
    return entry


def _parse_defended_model(entry: dict[str, Any], where: str, base_dir: Path, source: str) -> dict[str, Any]:
    """An entry with ``defense`` / ``members`` / ``model``: its base model(s) are parsed like any model entry."""
    try:
        check_model_entry(entry, where)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    if "members" in entry:
        entry["members"] = [_parse_model(m, 0, base_dir, source, f"{where}.members[{j}]")
                            for j, m in enumerate(entry["members"])]
    elif "model" in entry:
        entry["model"] = _parse_model(entry["model"], 0, base_dir, source, f"{where}.model")
    elif any(k in entry for k in ("arch", "checkpoint")):
        base = _parse_model({k: v for k, v in entry.items() if k != "defense"}, 0, base_dir, source, where)
        entry = {**base, "defense": entry["defense"]} if isinstance(base, Mapping) else entry
    else:
        raise ConfigError(f"{source}: {where}: a defended model needs its base model: model: <zoo name, card "
                          f"path or card mapping>, or arch and checkpoint")
    return entry


def _parse_threat(value: Any, source: str) -> tuple[str, list[float], list[ThreatSpec]]:
    """The Lp entry (norm, eps) and the non-Lp sections of ``threat_model`` (a mapping or a list)."""
    if isinstance(value, list) and not value:
        raise ConfigError(f"{source}: threat_model: has no threat model; expected an Lp entry (norm, eps) and/or "
                          f"corruption, patch or universal entries")
    lp, extra = split_threat_models(value, source)
    if lp is None:  # a sweep of corruptions, patches or universal perturbations only: no Lp jobs
        return "Linf", [], extra
    norm, eps = _parse_lp_threat(lp, source)
    return norm, eps, extra


def _parse_lp_threat(value: Any, source: str) -> tuple[str, list[float]]:
    if not isinstance(value, Mapping):
        raise ConfigError(f"{source}: threat_model: expected a mapping with norm and eps, got {short_repr(value)}")
    _check_keys(value, THREAT_KEYS, "threat_model: ", source)
    if "eps" not in value:
        raise ConfigError(f"{source}: threat_model.eps: required (a number, a fraction like 8/255, or a list)")
    try:
        norm = canonical_norm(value.get("norm", "Linf"))
        return norm, eps_list(value["eps"], norm)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None


def parse_config(data: Any, *, source: str, base_dir: Path) -> SweepConfig:
    """Validate a config mapping (as read from YAML) without loading data or models."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{source}: expected a mapping of config keys ({', '.join(CONFIG_KEYS)}), "
                          f"got {_type_name(data)}")
    _check_keys(data, CONFIG_KEYS, "", source)
    for key in ("dataset", "models", "threat_model"):
        if key not in data:
            raise ConfigError(f"{source}: {key}: required")
    norm, eps, extra_threats = _parse_threat(data["threat_model"], source)
    if eps and "attacks" not in data:
        raise ConfigError(f"{source}: attacks: required (the attacks of the Lp entry of threat_model)")
    if not eps and data.get("attacks") is not None:
        raise ConfigError(f"{source}: attacks: only for an Lp entry of threat_model (norm, eps), which this config "
                          f"has not; add one, or give the patch/universal attacks in their own threat_model entry")
    seed = _int(data.get("seed", 0), "seed", source)
    device = data.get("device", "auto")
    if not isinstance(device, str):
        raise ConfigError(f"{source}: device: expected auto, cpu, cuda or cuda:N, got {short_repr(device)}")
    batch_size = _int(data.get("batch_size"), "batch_size", source, positive=True, optional=True)
    models = data["models"]
    if isinstance(models, (str, Mapping)):
        models = [models]
    if not isinstance(models, list) or not models:
        raise ConfigError(f"{source}: models: expected a non-empty list of models, got {short_repr(data['models'])}")
    output = data.get("output")
    if output is not None and (not isinstance(output, str) or not output.strip()):
        raise ConfigError(f"{source}: output: expected a folder path, got {short_repr(output)}")
    attacks = data.get("attacks") if eps else []
    if isinstance(attacks, (str, Mapping)):
        attacks = [attacks]
    if eps and (not isinstance(attacks, list) or not attacks):
        raise ConfigError(f"{source}: attacks: expected a non-empty list of attacks, got {short_repr(data['attacks'])}")
    cfg = SweepConfig(
        source=source, base_dir=base_dir,
        dataset=_parse_dataset(data["dataset"], base_dir, source),
        models=[_parse_model(m, i, base_dir, source) for i, m in enumerate(models)],
        norm=norm, eps=eps, attacks=list(attacks), seed=int(seed or 0), device=device.strip(),
        batch_size=batch_size, output=_path(output, base_dir) if output else None, raw=dict(data),
        options=parse_options(data, norm, f"{source}: "),
        extra_threats=extra_threats,
    )
    # unknown attack names/parameters, duplicate labels and unsupported norms fail here, before any loading
    try:
        if eps:
            check_suite(build_attacks(cfg), norm)
    except ConfigError as exc:
        raise ConfigError(str(exc) if str(exc).startswith(f"{source}: ") else f"{source}: {exc}") from None
    return cfg


def load_config(path: str | os.PathLike) -> SweepConfig:
    """Read and validate a YAML sweep config."""
    p = Path(path)
    source = p.name
    if not p.is_file():
        raise ConfigError(f"{source}: config file not found: {os.path.abspath(p)}")
    data = read_yaml_file(p, source)  # bounded: size and expanded aliases (robustkit.userfiles)
    return parse_config(data, source=source, base_dir=p.resolve().parent)


def build_attacks(cfg: SweepConfig) -> list:
    if not cfg.eps:
        return []  # no Lp entry: the sweep's attacks are those of its patch / universal entries
    try:
        return build_suite(cfg.attacks)
    except ConfigError as exc:
        raise cfg.error(str(exc)) from None


def resolve_config(cfg: SweepConfig, *, n_examples: int | None = None, device: str | None = None,
                   batch_size: int | None = None, seed: int | None = None) -> Sweep:
    """Load the dataset and every model and build the attacks: the last step before computing.

    Keyword arguments are command-line overrides of the config's values.
    """
    if n_examples is not None:
        _int(n_examples, "--n-examples", cfg.source, positive=True)
    if batch_size is not None:
        _int(batch_size, "--batch-size", cfg.source, positive=True)
    if seed is not None:
        _int(seed, "--seed", cfg.source)
    try:
        resolve_device(device or cfg.device)
    except ConfigError as exc:
        raise cfg.error(str(exc)) from None
    try:
        dataset = load_dataset(cfg.dataset, n_examples=n_examples, base_dir=cfg.base_dir)
    except RobustkitError as exc:
        raise cfg.error(f"dataset: {exc}") from None
    entries = []
    for i, spec in enumerate(cfg.models):
        label = spec if isinstance(spec, str) else spec.get("name")
        try:
            model = defended_model(spec, lambda s: load_model(s, base_dir=cfg.base_dir)) \
                if isinstance(spec, Mapping) else load_model(spec, base_dir=cfg.base_dir)
        except RobustkitError as exc:
            raise cfg.error(f"models[{i}] ({label}): {exc}") from None
        card = getattr(model, "robustkit_card", None) or {}
        name = spec.get("name") if isinstance(spec, Mapping) else card.get("name", spec)
        entries.append(ModelEntry(name=str(name), model=model, source={"spec": spec, "card": card}))
    try:
        sweep = Sweep(dataset=dataset, models=entries, attacks=build_attacks(cfg), norm=cfg.norm, eps=cfg.eps,
                      seed=cfg.seed if seed is None else seed, device=device or cfg.device,
                      batch_size=batch_size if batch_size is not None else cfg.batch_size,
                      extra_threats=cfg.extra_threats)
        check_specs(sweep)
    except ConfigError as exc:
        raise cfg.error(str(exc)) from None
    sweep.config = {"source": cfg.source, "config": _jsonable(cfg.raw), "dataset_spec": dataset.spec,
                    "models": [e.source for e in entries], "norm": sweep.norm, "eps": sweep.eps,
                    "attacks": [{"label": a.label, **a.config()} for a in sweep.attacks], "seed": sweep.seed,
                    "device": sweep.device, "batch_size": sweep.batch_size, "n_examples": len(dataset)}
    if sweep.extra_threats:
        sweep.config["threat_models"] = [{**s.describe(), "levels": s.levels, "baseline": s.baseline}
                                         for s in sweep.extra_threats]
    if cfg.options.curve is not None:
        sweep.config["curve"] = cfg.options.curve.to_json()
    return sweep


def _jsonable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)
