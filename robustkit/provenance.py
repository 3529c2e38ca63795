"""Provenance of a run: everything a reader needs to know which code, data and weights made a number.

Recorded once per run in the results store (``runs.provenance``, JSON) and printed by ``robustkit report``.
Versions are read from installed package metadata, never imported for the purpose (importing autoattack or
torchvision can fail or be slow); a package that is absent is recorded as ``"not installed"``.
"""
from __future__ import annotations

import importlib.metadata
import platform
import sys
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

import robustkit
from robustkit.identity import model_fingerprint

if TYPE_CHECKING:  # pragma: no cover
    from robustkit.engine.sweep import Sweep

NOT_INSTALLED = "not installed"
# distribution names to try for each reported package (the official AutoAttack installs as "autoattack")
PACKAGES = {"torch": ("torch",), "torchattacks": ("torchattacks",), "autoattack": ("autoattack", "auto-attack"),
            "pyautoattack": ("pyautoattack",)}
# the environment entries the reports list, in this order (both official AutoAttack distributions: either may run)
REPORTED_ENVIRONMENT = ("robustkit", "torch", "torchattacks", "autoattack", "pyautoattack", "python", "platform",
                        "device", "gpu", "cuda")


def package_version(*distributions: str) -> str:
    """The installed version of the first of ``distributions`` found, else ``"not installed"``."""
    for dist in distributions:
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return NOT_INSTALLED


def environment(device: torch.device | str) -> dict[str, Any]:
    """Versions, interpreter, platform and the device the run computed on (with the GPU name on CUDA)."""
    device = torch.device(device)
    env: dict[str, Any] = {"robustkit": robustkit.__version__}
    env.update({name: package_version(*dists) for name, dists in PACKAGES.items()})
    env["torch"] = torch.__version__  # the running one (a local build may differ from the metadata)
    env["python"] = sys.version.split()[0]
    env["platform"] = platform.platform()
    env["device"] = str(device)
    if device.type == "cuda" and torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name(device)
        env["cuda"] = torch.version.cuda
    return env


def checkpoint_sha256(model: nn.Module) -> str | None:
    """sha256 of the checkpoint file(s) the model, or the models wrapped inside it, were loaded from.

    A defense wraps its model, an ensemble several: every distinct checkpoint is listed (comma-separated, in
    module order), so an ensemble's provenance names each member's weights, not only the first.
    """
    shas: list[str] = []
    for module in model.modules():
        sha = getattr(module, "robustkit_checkpoint_sha256", None)
        if sha and str(sha) not in shas:
            shas.append(str(sha))
    return ",".join(shas) or None


def run_provenance(sweep: "Sweep", device: torch.device | str) -> dict[str, Any]:
    """The full provenance record of a sweep run on ``device`` (JSON-able)."""
    models = []
    for entry in sweep.models:
        fp = model_fingerprint(entry.model)
        record = {"name": entry.name, "class": fp["class"], "checkpoint_sha256": checkpoint_sha256(entry.model),
                  "tensors_sha256": fp["tensors_sha256"]}
        defense = getattr(entry.model, "provenance", None)  # a defense: its config and fitting facts (calibration)
        if callable(defense):
            record["defense"] = defense()
        models.append(record)
    return {
        "environment": environment(device),
        "seed": sweep.seed,
        "dataset": {"name": sweep.dataset.name, "n_examples": len(sweep.dataset),
                    "content_hash": sweep.dataset.content_hash},
        "models": models,
        "threat_model": {"norm": sweep.norm, "eps": list(sweep.eps)},
        "attacks": [{"label": a.label, **a.config()} for a in sweep.attacks],
    }
