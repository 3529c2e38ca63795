"""Provenance recorded with every run, and ``robustkit report`` printing it."""
from __future__ import annotations

import json
import sqlite3

import torch
from torch import nn

import robustkit
from robustkit.cli import main
from robustkit.provenance import NOT_INSTALLED, checkpoint_sha256, environment, package_version


def test_environment_versions() -> None:
    env = environment("cpu")
    assert env["robustkit"] == robustkit.__version__
    assert env["torch"] == torch.__version__
    assert env["torchattacks"] == package_version("torchattacks") != NOT_INSTALLED
    assert env["device"] == "cpu" and env["python"].count(".") == 2 and env["platform"]
    assert "autoattack" in env
    assert package_version("surely-not-a-robustkit-dependency") == NOT_INSTALLED


def _tiny_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(4, 3)).eval()


def test_run_records_provenance_and_report_prints_it(tmp_path, capsys) -> None:
    model = _tiny_model()
    model.robustkit_checkpoint_sha256 = "ab" * 32  # as set by robustkit.zoo loaders
    x = torch.rand(12, 1, 2, 2)
    y = torch.randint(0, 3, (12,))
    res = robustkit.evaluate({"tiny": model}, dataset=(x, y), attacks=["fgsm"], eps=[0.1], out=tmp_path, seed=3)
    assert (res.leaderboard["run_id"] == res.run_id).all()
    with sqlite3.connect(tmp_path / "results.sqlite") as conn:
        (text,) = conn.execute("SELECT provenance FROM runs WHERE run_id = ?", (res.run_id,)).fetchone()
    prov = json.loads(text)
    assert prov["seed"] == 3 and prov["dataset"]["n_examples"] == 12 and len(prov["dataset"]["content_hash"]) == 64
    assert prov["models"][0]["checkpoint_sha256"] == "ab" * 32
    assert prov["attacks"][0]["name"] == "fgsm" and prov["attacks"][0]["loss"] == "ce"
    assert prov["environment"]["torch"] == torch.__version__ and prov["checks"] == "cheap"
    assert checkpoint_sha256(nn.Sequential(model)) == "ab" * 32  # found through a wrapper
    other = nn.Linear(2, 2)
    other.robustkit_checkpoint_sha256 = "cd" * 32
    assert checkpoint_sha256(nn.ModuleList([model, other, model])) == "ab" * 32 + "," + "cd" * 32  # every member
    report = (tmp_path / "report.md").read_text()
    assert res.run_id in report and "checkpoint sha256 `" + "ab" * 32 in report
    capsys.readouterr()
    assert main(["report", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert printed == report and "torchattacks: " in printed and "## Checks" in printed
    # both official AutoAttack distributions are listed: either one may be the implementation that ran
    assert f"* pyautoattack: {package_version('pyautoattack')}" in printed and "* autoattack: " in printed


def test_report_on_a_folder_without_results_is_one_line_error(tmp_path, capsys) -> None:
    assert main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "results.sqlite" in err and err.count("\n") == 1
