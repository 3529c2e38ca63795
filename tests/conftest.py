"""Shared fixtures.

Tests that need the real data and models in ``../shared`` use the ``shared_dir`` fixture. Where the folder
is absent they skip, unless ``ROBUSTKIT_REQUIRE_SHARED=1`` (set by ``.ci/run``), in which case they fail:
a green CI therefore means they ran.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("ROBUSTKIT_SHARED_DIR", REPO.parent / "shared")).resolve()

# Two cores: keep torch from oversubscribing them when pytest runs alongside other work.
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="module")
def one_torch_thread():
    """Single-threaded for a module of many tiny passes (LeNet5, AutoAttack, host-sync counting): on a
    shared 2-core machine two intra-op threads made a LeNet5 pass on 24 images 28x slower (0.23 s vs
    0.008 s measured), because every op waits for the other thread to be scheduled. Module scope, so it is
    in place before module-scoped attack runs. Use: ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """The ``../shared`` folder of real data and weights; skip (or fail under CI) where it is absent."""
    if not (SHARED / "README.md").is_file():
        if os.environ.get("ROBUSTKIT_REQUIRE_SHARED") == "1":
            pytest.fail(f"ROBUSTKIT_REQUIRE_SHARED=1 but the shared folder {SHARED} is missing")
        pytest.skip(f"shared data folder {SHARED} not present")
    return SHARED


@pytest.fixture(scope="session")
def mnist_test(shared_dir: Path):
    """The full real MNIST test set (10000 images)."""
    from robustkit.data import load_dataset

    return load_dataset("mnist", root=shared_dir / "data" / "mnist")


@pytest.fixture(scope="session")
def lenet5_clean(shared_dir: Path):
    """advertorch's standard-trained MNIST LeNet5 (98.89% clean), eval mode, CPU."""
    from robustkit.zoo import load_model

    return load_model({"name": "lenet5-clean", "arch": "lenet5",
                       "checkpoint": str(shared_dir / "weights/advertorch/mnist_lenet5_clntrained.pt")})


@pytest.fixture(scope="session")
def lenet5_adv(shared_dir: Path):
    """advertorch's PGD-40 (Linf 0.3) adversarially trained MNIST LeNet5 (98.64% clean), eval mode, CPU."""
    from robustkit.zoo import load_model

    return load_model({"name": "lenet5-adv", "arch": "lenet5",
                       "checkpoint": str(shared_dir / "weights/advertorch/mnist_lenet5_advtrained.pt")})
