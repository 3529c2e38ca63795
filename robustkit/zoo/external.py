"""Models from other libraries by name: ``robustbench:<model>``, ``torchvision:<model>``, ``timm:<model>``.

These libraries are optional. Each is probed with ``import`` inside ``try/except Exception`` because a
broken install (e.g. a torchvision built for another torch) fails with RuntimeError, not ImportError; either
way the user gets one line saying what is missing or broken. Their pretrained weights are fetched and cached
by the library itself, which robustkit allows only with ``download=True`` (nothing is fetched if the library
already has them cached). ImageNet-style models get their normalization as a module inside the model, like
every robustkit model; RobustBench models already include theirs.
"""
from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any

from torch import nn

from robustkit.errors import CheckpointError, ConfigError, RobustkitError

from .download import cache_root
from .normalize import with_normalization

PIP_NAMES = {"robustbench": "git+https://github.com/RobustBench/robustbench.git", "torchvision": "torchvision",
             "timm": "timm"}


def import_optional(package: str, spec: str) -> ModuleType:
    """Import an optional package or raise a one-line RobustkitError saying it is missing or broken."""
    try:
        return importlib.import_module(package)
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.split(".")[0] != package:
            detail = f"it needs {exc.name!r}, which is not installed"
            raise RobustkitError(f"{spec!r} needs the {package} package, which is installed but broken ({detail})") from exc
        raise RobustkitError(f"{spec!r} needs the {package} package, which is not installed "
                             f"(pip install {PIP_NAMES.get(package, package)})") from exc
    except Exception as exc:  # a broken install raises anything: RuntimeError, OSError, AttributeError...
        first = (str(exc).strip().splitlines() or [""])[0]
        raise RobustkitError(
            f"{spec!r} needs the {package} package, which is installed but fails to import "
            f"({type(exc).__name__}: {first}); reinstall a {package} build that matches your torch"
        ) from exc


def split_external(spec: str) -> tuple[str, str]:
    """'timm:resnet18' -> ('timm', 'resnet18')."""
    prefix, _, name = spec.partition(":")
    prefix = prefix.lower()
    if prefix not in PIP_NAMES or not name:
        raise ConfigError(f"external model {spec!r}: expected robustbench:<name>, torchvision:<name> or timm:<name>")
    return prefix, name


def _require_download(spec: str, download: bool) -> None:
    if not download:
        raise CheckpointError(f"{spec!r}: its pretrained weights come from the library's own download/cache; "
                              f"pass download=True (CLI: --download) to allow it")


def _robustbench(name: str, spec: str, download: bool) -> tuple[nn.Module, dict[str, Any]]:
    """``robustbench:<model>`` (CIFAR-10, Linf) or ``robustbench:<dataset>/<threat>/<model>``."""
    parts = name.split("/")
    if len(parts) == 1:
        dataset, threat, model_name = "cifar10", "Linf", parts[0]
    elif len(parts) == 3:
        dataset, threat, model_name = parts
    else:
        raise ConfigError(f"external model {spec!r}: expected robustbench:<model> or robustbench:<dataset>/<threat>/<model>")
    import_optional("torchvision", spec)  # robustbench imports it: name the real culprit when it is broken
    import_optional("robustbench", spec)
    utils = import_optional("robustbench.utils", spec)
    _require_download(spec, download)
    model = utils.load_model(model_name=model_name, dataset=dataset, threat_model=threat,
                             model_dir=str(cache_root() / "robustbench"))
    return model, {"dataset": dataset, "threat_model": threat, "source": f"RobustBench model zoo: {model_name}"}


def _torchvision(name: str, spec: str, pretrained: bool, num_classes: int | None,
                 download: bool) -> tuple[nn.Module, dict[str, Any]]:
    tv = import_optional("torchvision", spec)
    if not pretrained:
        return tv.models.get_model(name, weights=None, num_classes=num_classes or 1000), {"source": "torchvision"}
    _require_download(spec, download)
    weights = tv.models.get_model_weights(name).DEFAULT
    model = tv.models.get_model(name, weights=weights)
    preprocess = weights.transforms()
    model = with_normalization(model, (tuple(preprocess.mean), tuple(preprocess.std)))
    return model, {"dataset": "imagenet", "source": f"torchvision weights {weights}"}


def _timm(name: str, spec: str, pretrained: bool, num_classes: int | None,
          download: bool) -> tuple[nn.Module, dict[str, Any]]:
    timm = import_optional("timm", spec)
    kwargs = {} if num_classes is None else {"num_classes": num_classes}
    if pretrained:
        _require_download(spec, download)
    model = timm.create_model(name, pretrained=pretrained, **kwargs)
    if not pretrained:
        return model, {"source": "timm"}
    cfg = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None) or {}
    if "mean" not in cfg or "std" not in cfg:
        raise RobustkitError(f"{spec!r}: timm gives no normalization (mean/std) for this model's weights")
    return with_normalization(model, (tuple(cfg["mean"]), tuple(cfg["std"]))), {"source": f"timm {name}"}


def build_external(spec: str, *, pretrained: bool = True, num_classes: int | None = None,
                   download: bool = False) -> tuple[nn.Module, dict[str, Any]]:
    """Build an external model (mapping [0, 1] images to logits) and metadata for its card."""
    prefix, name = split_external(spec)
    if prefix == "robustbench":
        if not pretrained:
            raise ConfigError(f"{spec!r}: RobustBench models come with their own weights; do not give a checkpoint")
        return _robustbench(name, spec, download)
    if prefix == "torchvision":
        return _torchvision(name, spec, pretrained, num_classes, download)
    return _timm(name, spec, pretrained, num_classes, download)
