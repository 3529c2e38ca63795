"""No host synchronisation per step in the attack loops.

On a GPU, every ``.item()``, ``bool(tensor)``, ``.cpu()``, ``nonzero`` or boolean-mask index waits for the
device to finish all queued work: one per step serialises the loop. robustkit's loops may synchronise a
constant number of times per attack call (PGD drops finished samples at 4 fixed steps per restart, CW
checks for an early abort at most 10 times per search step), never once per step.

On CPU the test counts the calls that would synchronise, made from robustkit's own code, and checks the
count does not grow with the number of steps. With CUDA the same loops run under
``torch.cuda.set_sync_debug_mode``, which sees every synchronisation, also inside torch.
"""
from __future__ import annotations

import sys
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

from robustkit.attacks import build_attack
from robustkit.pgd_loop import ascend, input_gradient
from robustkit.threat import ThreatModel
from robustkit.training import pgd_examples

REPO = Path(__file__).resolve().parents[1]
OWN_CODE = (str(REPO / "attacks"), str(REPO / "robustkit"))

# Tensor methods that read a value back to the host (a device sync on CUDA)
SYNCING_METHODS = ("item", "__bool__", "__int__", "__float__", "__index__", "tolist", "cpu", "numpy", "nonzero")


def _is_bool_index(index) -> bool:
    items = index if isinstance(index, tuple) else (index,)
    return any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in items)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


class SyncCounter(list):
    """Names of the syncing calls made from ``paths`` (robustkit's own code unless told otherwise)."""

    paths: tuple[str, ...] = OWN_CODE


@pytest.fixture
def count_syncs(monkeypatch) -> SyncCounter:
    """Patch the syncing Tensor methods (and boolean-mask indexing) to count calls made from robustkit code."""
    calls = SyncCounter()

    def from_counted_code() -> bool:
        return sys._getframe(2).f_code.co_filename.startswith(calls.paths)

    for name in SYNCING_METHODS:
        original = getattr(torch.Tensor, name)

        def wrapper(self, *args, __original=original, __name=name, **kwargs):
            if from_counted_code():
                calls.append(__name)
            return __original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, wrapper)
    for name in ("__getitem__", "__setitem__"):
        original = getattr(torch.Tensor, name)

        def indexer(self, index, *args, __original=original, __name=name):
            if _is_bool_index(index) and from_counted_code():
                calls.append(f"{__name}[mask]")
            return __original(self, index, *args)

        monkeypatch.setattr(torch.Tensor, name, indexer)
    return calls


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 10)).eval()


def _batch(model: nn.Module, n: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.rand(n, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return x, model(x).argmax(1)


def _perturb_syncs(calls: list[str], spec: dict, eps: float, norm: str = "Linf") -> tuple[int, dict]:
    model = _model()
    x, y = _batch(model)
    attack = build_attack(spec)
    eps_t = torch.full((x.shape[0],), eps)
    calls.clear()
    out = attack.perturb(model, x, y, eps_t, norm, target=None, generator=torch.Generator().manual_seed(0))
    info = out[1] if isinstance(out, tuple) else {}
    return len(calls), info


@pytest.mark.parametrize("norm,eps", [("Linf", 1e-4), ("L2", 0.3)])  # nothing breaks / samples break on the way
def test_pgd_syncs_do_not_grow_with_the_steps(count_syncs, norm, eps):
    n16, info16 = _perturb_syncs(count_syncs, {"name": "pgd", "steps": 16}, eps, norm)
    n64, info64 = _perturb_syncs(count_syncs, {"name": "pgd", "steps": 64}, eps, norm)
    if eps < 1e-3:
        assert info16["steps_run"] == 16 and info64["steps_run"] == 64  # the loop really ran every step
    assert n64 <= n16 < 64, (n16, n64)


def test_the_counter_sees_a_per_step_sync_and_the_core_loop_has_none(count_syncs):
    model = _model()
    x, y = _batch(model)
    eps = torch.full((x.shape[0],), 0.1)
    ce = input_gradient(model, lambda logits: nn.functional.cross_entropy(logits, y, reduction="none"))
    count_syncs.paths = (*OWN_CODE, __file__)  # count this file's calls too
    ascend(x, x, eps, eps / 4, "Linf", ce, steps=10, observe=lambda xk, loss, logits: bool(loss.any()))
    assert count_syncs.count("__bool__") == 10  # not blind: a per-step bool(tensor) is caught
    count_syncs.clear()
    ascend(x, x, eps, eps / 4, "Linf", ce, steps=10)
    assert count_syncs == []  # the core loop itself: no sync at all


@pytest.mark.parametrize("spec", [{"name": "fmn"}, {"name": "cw", "binary_search_steps": 1, "abort_early": True}])
def test_minimum_norm_attacks_syncs_do_not_grow_with_the_steps(count_syncs, spec):
    n16, _ = _perturb_syncs(count_syncs, {**spec, "steps": 16}, 1.0, "L2")
    n64, _ = _perturb_syncs(count_syncs, {**spec, "steps": 64}, 1.0, "L2")
    assert n64 <= n16 < 64, (n16, n64)


def test_training_pgd_never_syncs(count_syncs):
    model = _model()
    x, y = _batch(model)
    count_syncs.clear()
    pgd_examples(model, x, y, eps=0.1, norm="Linf", steps=10, step_size=0.025, generator=torch.Generator())
    assert count_syncs == []


# ----------------------------------------------------------------------------------------------------- GPU
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (torch.cuda.set_sync_debug_mode)")


def _cuda_task() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    model = _model().cuda()
    x, y = _batch(model.cpu())
    model.cuda()
    return model, x.cuda(), y.cuda()


@cuda
def test_cuda_core_loop_and_training_pgd_never_sync():
    model, x, y = _cuda_task()
    eps = torch.full((x.shape[0],), 0.1, device="cuda")
    ce = input_gradient(model, lambda logits: nn.functional.cross_entropy(logits, y, reduction="none"))
    ascend(x, x, eps, eps / 4, "Linf", ce, steps=2)  # warm-up: lazy CUDA initialisation may sync
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        ascend(x, x, eps, eps / 4, "Linf", ce, steps=20)
        pgd_examples(model, x, y, eps=0.1, norm="Linf", steps=20, step_size=0.025,
                     generator=torch.Generator(device="cuda"))
    finally:
        torch.cuda.set_sync_debug_mode("default")


@cuda
@pytest.mark.parametrize("spec", [{"name": "pgd"}, {"name": "fmn"}])
def test_cuda_attack_syncs_do_not_grow_with_the_steps(spec):
    model, x, y = _cuda_task()
    attack_eps = torch.full((x.shape[0],), 1e-4, device="cuda")

    def syncs(steps: int) -> int:
        attack = build_attack({**spec, "steps": steps})
        torch.cuda.synchronize()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                attack.perturb(model, x, y, attack_eps, "Linf", target=None,
                               generator=torch.Generator(device="cuda").manual_seed(0))
            finally:
                torch.cuda.set_sync_debug_mode("default")
        return sum("synchroniz" in str(w.message) for w in caught)

    syncs(2)  # warm-up
    few, many = syncs(10), syncs(40)
    assert many <= few, (few, many)
