"""``load_model``: from a zoo name, a card file or a sweep-config entry to an eval-mode model on [0, 1] inputs.

The returned module carries its provenance, which the engine records with every result:

* ``model.robustkit_name`` (str): the zoo / config name;
* ``model.robustkit_card`` (dict): the validated card, JSON-serialisable, with ``checkpoint_path`` and
  ``checkpoint_sha256`` of the weights actually loaded;
* ``model.robustkit_checkpoint_sha256`` (str or None): sha256 of the checkpoint file (None for random
  initialization and for external libraries' own weights).

:func:`model_info` reads these back (and gives sensible values for any other ``nn.Module``).
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any, Iterable, Mapping

import torch
from torch import nn

from robustkit.errors import ConfigError, short_repr

from .arch_registry import build_arch
from .cards import CARD_SUFFIXES, ModelCard, is_external, parse_card, read_card_file
from .catalog import find_card
from .checkpoint import load_into, load_state_dict, sha256_file
from .external import build_external
from .normalize import with_normalization
from .weights import locate_checkpoint


def resolve_card(name_or_card: str | os.PathLike | Mapping[str, Any], *, zoo_dirs: Iterable[str | os.PathLike] = (),
                 base_dir: str | os.PathLike | None = None) -> ModelCard:
    """Turn a zoo name, an external name, a card path or a config mapping into a validated card."""
    if isinstance(name_or_card, Mapping):
        label = name_or_card.get("name")
        origin = f"model {short_repr(label)}" if isinstance(label, str) else "model config"
        base = Path(base_dir).expanduser() if base_dir is not None else None
        return parse_card(name_or_card, origin=origin, base_dir=base)
    if not isinstance(name_or_card, (str, os.PathLike)):
        raise ConfigError(f"model: expected a zoo name, a card path or a mapping, got {type(name_or_card).__name__}")
    text = os.fspath(name_or_card)
    if is_external(text):
        return parse_card({"name": text, "arch": text}, origin=f"model {short_repr(text)}")
    if Path(text).suffix.lower() in CARD_SUFFIXES:
        path = Path(text).expanduser()
        if not path.is_absolute() and base_dir is not None:
            path = Path(base_dir).expanduser() / path
        return read_card_file(path)
    return find_card(text, zoo_dirs)


def _build(card: ModelCard, ckpt_path: Path | None, download: bool) -> tuple[nn.Module, dict[str, Any]]:
    """The network with weights loaded and normalization attached; plus metadata from external libraries."""
    if is_external(card.arch):
        if ckpt_path is None and card.normalization is not None:
            raise ConfigError(f"{card.origin}: normalization: {card.arch} brings its own normalization with its "
                              f"pretrained weights; remove the field (or give a checkpoint)")
        net, meta = build_external(card.arch, pretrained=ckpt_path is None,
                                   num_classes=card.num_classes if ckpt_path is not None else None, download=download)
        if ckpt_path is None:
            return net, meta
    else:
        net, meta = build_arch(card.arch, num_classes=card.num_classes, **card.arch_kwargs), {}
    if ckpt_path is not None:
        spec = card.checkpoint
        sd = load_state_dict(ckpt_path, key=spec.key if spec else None, index=spec.index if spec else None)
        load_into(net, sd, source=f"checkpoint {ckpt_path}", arch=card.arch)
    else:
        warnings.warn(f"model {short_repr(card.name)} has no checkpoint: its weights are randomly initialized", stacklevel=3)
    return with_normalization(net, card.normalization), meta


def load_model(name_or_card: str | os.PathLike | Mapping[str, Any], *, checkpoint: str | os.PathLike | None = None,
               zoo_dirs: Iterable[str | os.PathLike] = (), weights_dir: str | os.PathLike | None = None,
               download: bool = False, device: str | torch.device = "cpu",
               base_dir: str | os.PathLike | None = None) -> nn.Module:
    """Build a model that maps [0, 1] images to logits, in eval mode, fp32, on ``device``.

    ``name_or_card``: a zoo name (built-in, digits quickstart, or in ``zoo_dirs``), an external name
    (``timm:resnet18``...), a card file (.yaml/.yml/.json), or a mapping in sweep-config form
    ``{name, arch, checkpoint, normalization?, num_classes?, arch_kwargs?, ...}`` whose relative paths
    resolve against ``base_dir``. ``checkpoint`` overrides the card's checkpoint. Card checkpoints are
    looked up in ``weights_dir`` / ``$ROBUSTKIT_WEIGHTS_DIR``, then the cache, and downloaded only when
    ``download=True``; every file named by sha256 is verified.
    """
    card = resolve_card(name_or_card, zoo_dirs=zoo_dirs, base_dir=base_dir)
    if checkpoint is not None:
        ckpt_path: Path | None = Path(checkpoint).expanduser()
        if not ckpt_path.is_absolute() and base_dir is not None:
            ckpt_path = Path(base_dir).expanduser() / ckpt_path
    else:
        ckpt_path = locate_checkpoint(card, weights_dir=weights_dir, download=download)
    model, meta = _build(card, ckpt_path, download)
    model = model.float().to(device).eval()
    sha = sha256_file(ckpt_path) if ckpt_path is not None else None
    info = card.to_dict()
    for key, value in meta.items():
        if info.get(key) is None:
            info[key] = value
    info["checkpoint_path"] = str(ckpt_path.resolve()) if ckpt_path is not None else None
    info["checkpoint_sha256"] = sha
    model.robustkit_name = card.name
    model.robustkit_card = info
    model.robustkit_checkpoint_sha256 = sha
    return model


def model_info(model: nn.Module) -> dict[str, Any]:
    """``{name, arch, checkpoint_sha256, card}`` for provenance; works for models not built by the zoo too."""
    card = getattr(model, "robustkit_card", None)
    return {
        "name": getattr(model, "robustkit_name", None) or type(model).__name__,
        "arch": card.get("arch") if isinstance(card, dict) else type(model).__name__,
        "checkpoint_sha256": getattr(model, "robustkit_checkpoint_sha256", None),
        "card": dict(card) if isinstance(card, dict) else None,
    }
