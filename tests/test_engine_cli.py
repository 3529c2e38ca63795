"""``robustkit eval`` end to end: the quickstart (no arguments) and the ad hoc form."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

from robustkit.cli import main
from robustkit.engine.quickstart import QUICKSTART_EPS
from robustkit.zoo import DIGITS_MODEL_NAMES


def _robustkit_command() -> list[str]:
    script = Path(sys.executable).parent / "robustkit"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "robustkit.cli"]


def test_quickstart_end_to_end(tmp_path):
    """``robustkit eval`` with no argument: digits zoo (trained on first use) x built-in suite."""
    t0 = time.monotonic()
    proc = subprocess.run(_robustkit_command() + ["eval"], cwd=tmp_path, capture_output=True, text=True,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"}, timeout=900)
    seconds = time.monotonic() - t0
    print(f"quickstart took {seconds:.1f} s")  # reported in the engine's hand-over notes
    assert proc.returncode == 0, proc.stderr
    # stdout: only the leaderboard table; stderr: progress bars with the robust count
    assert proc.stdout.startswith("| rank | model | dataset | norm | eps |")
    assert "robust=" in proc.stderr and "sample" in proc.stderr
    board = pd.read_csv(tmp_path / "runs" / "quickstart" / "leaderboard.csv")
    assert sorted(board["model"].unique()) == sorted(DIGITS_MODEL_NAMES)
    assert sorted(board["eps"].unique()) == sorted(QUICKSTART_EPS)
    assert set(board["dataset"]) == {"digits"} and set(board["n_examples"]) == {500}
    assert set(board["attacks"]) == {"fgsm=robustkit;pgd=robustkit"}
    # the adversarially trained model is the most robust at the largest eps
    top = board[board.eps == max(QUICKSTART_EPS)].sort_values("rank").iloc[0]
    assert top["model"] == "digits-cnn-pgd" and top["robust_acc"] > 0
    for model in DIGITS_MODEL_NAMES:
        assert f"| {model} |" in proc.stdout


def test_adhoc_eval_with_fraction_eps_and_deterministic_default_out(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    args = ["eval", "--model", "digits-mlp", "--dataset", "digits", "--attack", "fgsm",
            "--attack", "{name: pgd, steps: 5}", "--eps", "8/255", "--eps", "0.1", "--n-examples", "40", "--quiet"]
    assert main(args) == 0
    first = capsys.readouterr()
    outs = list((tmp_path / "runs").iterdir())
    assert len(outs) == 1 and outs[0].name.startswith("digits-Linf-")
    board = pd.read_csv(outs[0] / "leaderboard.csv")
    assert board["eps"].tolist() == [8 / 255, 0.1]
    assert list(board.columns[10:12]) == ["acc_fgsm", "acc_pgd"]
    assert "| 8/255 |" in first.out
    assert main(args) == 0  # the same command resumes the same folder: nothing to recompute
    second = capsys.readouterr()
    assert list((tmp_path / "runs").iterdir()) == outs
    assert "(0 batches computed, 2 reused)" in second.err
    strip = lambda text: [line.rsplit("|", 2)[0] for line in text.splitlines() if line.startswith("| ")]  # noqa: E731
    assert strip(second.out) == strip(first.out) and len(strip(first.out)) == 3  # same table apart from seconds


def test_config_and_adhoc_options_do_not_mix(tmp_path, capsys):
    code = main(["eval", "--config", str(tmp_path / "x.yaml"), "--model", "digits-mlp"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("error: command line: use either --config or") and "\n" not in err


def test_adhoc_requires_eps(capsys):
    assert main(["eval", "--model", "digits-mlp", "--dataset", "digits"]) == 2
    assert "--eps: required" in capsys.readouterr().err
