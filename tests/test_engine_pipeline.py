"""The runner as a pipeline: registered finishing stages, and run options parsed once."""
from __future__ import annotations

import torch
import yaml
from torch import nn

from robustkit.cli import main
from robustkit.engine import ModelEntry, RunOptions, Sweep, options as options_module, run_sweep
from robustkit.engine.stages import FINISHING_STAGES, RunContext, finishing_stage, stages_in_order
from robustkit.engine.sweep import build_suite

from test_distributed import small_config


def _sweep() -> Sweep:
    torch.manual_seed(0)
    x = torch.rand(24, 1, 4, 4)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3)).eval()
    y = model(x).argmax(1)
    from robustkit.engine.api import resolve_dataset

    return Sweep(dataset=resolve_dataset((x, y)), models=[ModelEntry("lin", model)], attacks=build_suite(["fgsm"]),
                 norm="Linf", eps=[0.05, 0.2], device="cpu", batch_size=8)


def test_builtin_stages_are_registered_in_order():
    names = [s.name for s in stages_in_order()]
    assert [n for n in names if n in ("certified", "checks", "leaderboard", "report", "curve")] == \
        ["certified", "checks", "leaderboard", "report", "curve"]


def test_a_registered_stage_runs_after_the_ones_before_it_and_its_file_is_listed(tmp_path):
    seen: list[RunContext] = []

    @finishing_stage("test-summary", order=45)
    def summary(ctx: RunContext) -> None:
        assert ctx.leaderboard is not None and "report.md" not in {p.name for p in ctx.files}  # 40 ran, 50 not yet
        path = ctx.out / "summary.txt"
        path.write_text(f"{ctx.run_id} {len(ctx.per_sample)} {ctx.options.checks}")
        ctx.wrote(path)
        seen.append(ctx)

    try:
        result = run_sweep(_sweep(), tmp_path, options=RunOptions(checks="off"))
    finally:
        FINISHING_STAGES._items.pop("test-summary")
    assert len(seen) == 1
    assert (tmp_path / "summary.txt").read_text() == f"{result.run_id} 48 off"
    assert [p.name for p in result.files][:5] == ["leaderboard.csv", "leaderboard.md", "per_sample.csv",
                                                  "summary.txt", "report.md"]


def test_run_options_are_parsed_once_per_command(shared_dir, tmp_path, monkeypatch, capsys):
    """``robustkit eval --config`` validates checks and curve once (they used to be parsed 4-5 times)."""
    calls = {"parse_curve": 0, "check_mode": 0}

    def counting(name, fn):
        def wrapper(*args, **kwargs):
            calls[name] += 1
            return fn(*args, **kwargs)
        return wrapper

    monkeypatch.setattr(options_module, "parse_curve", counting("parse_curve", options_module.parse_curve))
    monkeypatch.setattr(options_module, "check_mode", counting("check_mode", options_module.check_mode))
    cfg = small_config(shared_dir, tmp_path, steps=2)
    data = yaml.safe_load(cfg.read_text())
    data["curve"] = {"attack": {"name": "fmn", "steps": 5}, "eps": [0.1, 0.3]}
    data["checks"] = "off"  # still validated (once); the cheap checks would only add minutes here
    cfg.write_text(yaml.safe_dump(data))
    assert main(["eval", "--config", str(cfg), "--out", str(tmp_path / "out"), "--n-examples", "16", "--quiet"]) == 0
    assert calls == {"parse_curve": 1, "check_mode": 1}
    assert (tmp_path / "out" / "curve.csv").is_file()
    assert "curve.csv" in capsys.readouterr().err
