"""Helpers of the hostile-input suite (imported by its conftest and test modules)."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

N_IMAGES = 24
MLP_KW = {"in_features": 64, "hidden": 16, "depth": 1}
CNN_KW = {"in_channels": 1, "input_size": 8, "width": 4}


def base_config() -> dict[str, Any]:
    return {
        "seed": 0,
        "device": "cpu",
        "batch_size": 8,
        "dataset": {"name": "npz", "root": "data.npz"},
        "models": [{"name": "mlp", "arch": "mlp", "arch_kwargs": dict(MLP_KW), "checkpoint": "mlp.safetensors"}],
        "threat_model": {"norm": "Linf", "eps": [0.01, 0.03]},
        "attacks": ["fgsm", {"name": "pgd", "steps": 3}],
        "checks": "off",
        "output": "out",
    }


@dataclass
class Tiny:
    root: Path

    @property
    def out(self) -> Path:
        return self.root / "out"

    @property
    def config(self) -> Path:
        return self.root / "sweep.yaml"

    def write_config(self, cfg: dict[str, Any] | str, name: str = "bad.yaml") -> Path:
        path = self.root / name
        path.write_text(cfg if isinstance(cfg, str) else yaml.safe_dump(cfg), encoding="utf-8")
        return path


def csv_hashes(folder: Path) -> dict[str, str]:
    """sha256 of every CSV/markdown output of a run folder (what 'no change to earlier results' compares)."""
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.glob("*")) if p.suffix in (".csv", ".md") and p.is_file()}


def assert_one_line_error(code: int, err: str, *needles: str) -> str:
    """Exit code 2, exactly one line on stderr, ``error: ...`` with every needle in it, no traceback."""
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, err
    assert len(lines) == 1, err
    assert lines[0].startswith("error: "), err
    assert "Traceback" not in err
    assert len(lines[0]) < 600, lines[0]
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]
