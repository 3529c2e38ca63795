"""GPU-readiness options, simulated on the CPU: channels_last and torch.compile keep every verdict of eager mode,
and the automatic chunk size is probed once per model and then used for every batch of it."""
from __future__ import annotations

import sqlite3

import pandas as pd
import pytest
import torch
from torch import nn

from robustkit.data import load_dataset
from robustkit.engine import ModelEntry, RunOptions, Sweep, run_sweep
from robustkit.engine import devices
from robustkit.engine.sweep import build_suite

VOLATILE = ["seconds", "run_id"]


def _cnn(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                         nn.Flatten(), nn.Linear(8 * 8 * 8, 10)).eval()


def _sweep(n: int = 48) -> Sweep:
    data = load_dataset("digits", n_examples=n)
    models = [ModelEntry("cnn-a", _cnn(0)), ModelEntry("cnn-b", _cnn(1))]
    return Sweep(dataset=data, models=models, attacks=build_suite(["fgsm", {"name": "pgd", "steps": 5}]),
                 norm="Linf", eps=[0.05, 0.1], seed=3, device="cpu", batch_size=16)


def _same_verdicts(a, b) -> None:
    pd.testing.assert_frame_equal(a.per_sample, b.per_sample)
    pd.testing.assert_frame_equal(a.leaderboard.drop(columns=VOLATILE), b.leaderboard.drop(columns=VOLATILE))


def test_channels_last_gives_the_verdicts_of_eager_mode(tmp_path):
    eager = run_sweep(_sweep(), tmp_path / "eager", options=RunOptions(checks="off"))
    cl = run_sweep(_sweep(), tmp_path / "cl", options=RunOptions(checks="off", channels_last=True))
    _same_verdicts(eager, cl)
    assert 0 < eager.per_sample["robust"].sum() < len(eager.per_sample)  # a sweep with something to decide


@pytest.mark.slow  # inductor compiles each shape the cascade meets: minutes on 2 shared CPU cores
def test_compile_gives_the_verdicts_of_eager_mode(tmp_path):
    torch._dynamo.reset()
    eager = run_sweep(_sweep(32), tmp_path / "eager", options=RunOptions(checks="off"))
    compiled = run_sweep(_sweep(32), tmp_path / "compiled", options=RunOptions(checks="off", compile=True))
    _same_verdicts(eager, compiled)


def test_config_keys_parse_into_run_options(tmp_path):
    from robustkit.engine.config import parse_config
    from robustkit.errors import ConfigError

    raw = {"dataset": "digits", "models": ["m"], "threat_model": {"eps": 0.1}, "attacks": ["fgsm"],
           "compile": True, "channels_last": True, "workers": 3}
    options = parse_config(raw, source="s.yaml", base_dir=tmp_path).options
    assert (options.compile, options.channels_last, options.workers) == (True, True, 3)
    with pytest.raises(ConfigError, match=r"^s.yaml: compile: expected true or false, got 'yes'"):
        parse_config({**raw, "compile": "yes"}, source="s.yaml", base_dir=tmp_path)
    with pytest.raises(ConfigError, match=r"^s.yaml: workers: expected a positive integer, got 0"):
        parse_config({**raw, "workers": 0}, source="s.yaml", base_dir=tmp_path)


class _SmallGPU(nn.Module):
    """A model on a pretend GPU that runs out of memory on more than 8 samples at once."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = _cnn(2)
        self.sizes: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.sizes.append(int(x.shape[0]))
        if x.shape[0] > 8:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return self.inner(x)


def test_chunk_size_is_probed_once_per_model_and_remembered(tmp_path):
    model = _SmallGPU().eval()
    data = load_dataset("digits", n_examples=40)

    def sweep() -> Sweep:
        return Sweep(dataset=data, models=[ModelEntry("small", model)], attacks=build_suite(["fgsm"]), norm="Linf",
                     eps=[0.05, 0.1], seed=0, device="cpu", batch_size=32)

    res = run_sweep(sweep(), tmp_path / "a", options=RunOptions(checks="off"))
    probes = [s for s in model.sizes if s in (32, 16)]
    assert probes == [32, 16]  # the probe halved 32 -> 16 -> 8 once; no batch ever reached the model whole
    assert max(model.sizes) == 32 and model.sizes.count(32) == 1
    with sqlite3.connect(tmp_path / "a" / "results.sqlite") as c:
        chunks = [r[0] for r in c.execute("SELECT chunk_size FROM batches")]
    assert chunks == [8] * 4  # 2 jobs x (a batch of 32 and one of 8), each evaluated in chunks of 8
    model.sizes.clear()
    run_sweep(sweep(), tmp_path / "b", options=RunOptions(checks="off"))
    assert max(model.sizes) <= 8  # remembered: no second probe for the same model in this process
    assert devices.probe_chunk_size(model, tuple(data.x.shape[1:]), torch.device("cpu"), 4) == 4

