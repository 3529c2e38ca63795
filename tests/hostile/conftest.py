"""Fixtures of the hostile-input suite (issue 12): a tiny world in which every run takes well under a second.

``world`` writes, once per session, a synthetic 24-image 1x8x8 ten-class npz, two small models (an MLP and
a CNN, random weights saved as safetensors) with their cards, and a sweep config. Each test gets its own copy
of the folder (``tiny``) with a finished run in ``out/`` whose CSVs it can hash before and after the hostile
step (``csv_hashes``). ``cli`` runs ``robustkit`` in-process through the real entry point
(:func:`robustkit.cli.main`: the same exception handling and exit codes as the console script) and returns
(exit code, stdout, stderr); ``assert_one_line_error`` is the contract every bad input must meet.
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch
import yaml

from robustkit.cli import main
from robustkit.zoo import build_arch, save_safetensors

from _hostile import MLP_KW, CNN_KW, N_IMAGES, Tiny, base_config, csv_hashes  # noqa: E402


@pytest.fixture(scope="session")
def world(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("hostile-world")
    rng = np.random.RandomState(0)
    np.savez(root / "data.npz", x=rng.randint(0, 256, (N_IMAGES, 1, 8, 8), dtype=np.uint8),
             y=np.arange(N_IMAGES) % 10)
    torch.manual_seed(0)
    save_safetensors(build_arch("mlp", num_classes=10, **MLP_KW).state_dict(), root / "mlp.safetensors")
    save_safetensors(build_arch("small-cnn", num_classes=10, **CNN_KW).state_dict(), root / "cnn.safetensors")
    save_safetensors(build_arch("mlp", num_classes=5, **MLP_KW).state_dict(), root / "mlp5.safetensors")
    (root / "sweep.yaml").write_text(yaml.safe_dump(base_config()), encoding="utf-8")
    assert main(["eval", "--config", str(root / "sweep.yaml"), "--quiet"]) == 0
    return root


@pytest.fixture
def tiny(world: Path, tmp_path: Path) -> Tiny:
    """A private copy of the world, with the finished run in ``out/``."""
    root = tmp_path / "w"
    shutil.copytree(world, root, symlinks=True)
    return Tiny(root)


@pytest.fixture
def cli(capsys) -> Callable[..., tuple[int, str, str]]:
    def run(*args: str) -> tuple[int, str, str]:
        capsys.readouterr()
        code = main([str(a) for a in args])
        out, err = capsys.readouterr()
        return code, out, err
    return run


@pytest.fixture
def unchanged(tiny: Tiny):
    """Asserts, after the test body, that the finished run's CSVs are byte-identical to before."""
    before = csv_hashes(tiny.out)
    assert before
    yield tiny
    assert csv_hashes(tiny.out) == before
