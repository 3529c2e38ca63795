"""The model zoo: architectures by name, safe checkpoint loading, model cards and ready-to-evaluate models.

::

    from robustkit.zoo import load_model
    model = load_model("cifar10-resnet20", download=True)        # a built-in card
    model = load_model("digits-cnn-pgd")                          # quickstart zoo, trained on first use
    model = load_model({"name": "mine", "arch": "resnet20", "checkpoint": "runs/best.pt",
                        "normalization": "imagenet"})

Every model maps [0, 1] images to logits (normalization is a module inside it) and carries its provenance
(``model.robustkit_card``, ``model.robustkit_checkpoint_sha256``; see :func:`model_info`). See docs/zoo.md.
"""
from __future__ import annotations

# architecture modules register themselves on import
from . import archs_cifar_resnet, archs_robustbench, archs_small  # noqa: F401
from .arch_registry import ARCHS, build_arch, create_model, register_model
from .cards import CARD_KEYS, CheckpointSpec, ModelCard, parse_card, read_card_file, write_card
from .catalog import ZooEntry, builtin_cards_dir, collect_cards, find_card, list_entries
from .checkpoint import extract_state_dict, load_into, load_state_dict, read_checkpoint, save_safetensors, sha256_file
from .digits_zoo import DIGITS_MODEL_NAMES, ensure_digits_zoo
from .download import cache_root
from .loader import load_model, model_info, resolve_card
from .normalize import NORMALIZATION_PRESETS, Normalize, with_normalization
from .weights import checkpoint_status, locate_checkpoint

__all__ = [
    "ARCHS", "CARD_KEYS", "CheckpointSpec", "DIGITS_MODEL_NAMES", "ModelCard", "NORMALIZATION_PRESETS", "Normalize",
    "ZooEntry", "build_arch", "builtin_cards_dir", "cache_root", "checkpoint_status", "collect_cards", "create_model",
    "ensure_digits_zoo", "extract_state_dict", "find_card", "list_entries", "load_into", "load_model",
    "load_state_dict", "locate_checkpoint", "model_info", "parse_card", "read_card_file", "read_checkpoint",
    "register_model", "resolve_card", "save_safetensors", "sha256_file", "with_normalization", "write_card",
]
