"""The checks and the report as a user reaches them: ``robustkit eval --checks`` and ``robustkit report``."""
from __future__ import annotations

import pandas as pd
import torch

from robustkit.cli import main


def _adhoc(out, checks):
    return ["eval", "--model", "digits-mlp", "--dataset", "digits", "--attack", "fgsm", "--attack",
            "{name: pgd, steps: 5}", "--eps", "0.1", "--n-examples", "40", "--out", str(out), "--quiet",
            "--checks", checks]


def test_checks_option_and_report_command(tmp_path, capsys):
    assert main(_adhoc(tmp_path / "full", "full")) == 0
    assert main(_adhoc(tmp_path / "off", "off")) == 0
    capsys.readouterr()
    full = pd.read_csv(tmp_path / "full" / "leaderboard.csv", keep_default_na=False)
    off = pd.read_csv(tmp_path / "off" / "leaderboard.csv", keep_default_na=False)
    assert full["robust_acc"].tolist() == off["robust_acc"].tolist()  # checks never change a number
    assert (full["robust_acc_ci_low"] <= full["robust_acc"]).all() and (full["robust_acc"] <= full["robust_acc_ci_high"]).all()

    assert main(["report", str(tmp_path / "full")]) == 0
    text = capsys.readouterr().out
    run_id = str(full["run_id"].iloc[0])
    assert run_id in text and f"torch: {torch.__version__}" in text and "seed: 0" in text
    assert "checks: full" in text and "unconstrained-failure" in text  # every check is listed, fired or not
    assert (tmp_path / "full" / "report.md").read_text(encoding="utf-8").strip() == text.strip()


def test_bad_checks_value_and_missing_run_dir_are_one_line_errors(tmp_path, capsys):
    assert main(_adhoc(tmp_path / "x", "everything")) == 2
    err = capsys.readouterr().err
    assert "--checks" in err and "Traceback" not in err
    assert main(["report", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "results.sqlite" in err
