"""The example sweep on real data (tests/configs/mnist-linf.yaml): numbers checked against torchattacks, and
a SIGKILLed ``robustkit eval`` that resumes to the identical CSV.

Cost (2 CPU cores): one full run of the example config (1000 MNIST images, two LeNet5s, eps 0.1/0.2/0.3,
FGSM + PGD-40), torchattacks' FGSM and PGD on the same images, and a 300-image run that is killed and
resumed plus its uninterrupted reference.
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from robustkit.cli import main

CONFIG = Path(__file__).parent / "configs" / "mnist-linf.yaml"
PGD = {"steps": 40, "step_size": 0.01, "random_start": True}


def example_config(shared_dir: Path, tmp: Path) -> Path:
    """The example config itself, or (if the shared folder is elsewhere) a copy with its paths pointed there."""
    if (CONFIG.parent / "../../../shared").resolve() == shared_dir.resolve():
        return CONFIG
    data = yaml.safe_load(CONFIG.read_text())
    data["dataset"]["root"] = str(shared_dir / "data" / "mnist")
    for m in data["models"]:
        m["checkpoint"] = str(shared_dir / "weights" / "advertorch" / Path(m["checkpoint"]).name)
    path = tmp / CONFIG.name
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture(scope="module")
def example_run(shared_dir, tmp_path_factory):
    """``robustkit eval --config tests/configs/mnist-linf.yaml --out <tmp>``, uninterrupted."""
    tmp = tmp_path_factory.mktemp("mnist-example")
    cfg = example_config(shared_dir, tmp)
    out = tmp / "out"
    assert main(["eval", "--config", str(cfg), "--out", str(out), "--quiet"]) == 0
    return {"out": out, "board": pd.read_csv(out / "leaderboard.csv"), "per_sample": pd.read_csv(out / "per_sample.csv")}


def test_example_leaderboard_shape(example_run):
    board = example_run["board"]
    assert list(board.columns) == ["rank", "model", "defense", "evaluation", "dataset", "norm", "eps", "n_examples",
                                   "clean_acc", "robust_acc", "acc_fgsm", "acc_pgd", "clean_acc_ci_low",
                                   "clean_acc_ci_high", "robust_acc_ci_low", "robust_acc_ci_high", "p_vs_next",
                                   "tied_with_next", "seconds", "passes", "flags", "attacks", "run_id"]
    assert board["flags"].astype("string").fillna("").eq("").all()  # cheap checks: no false flag on lenet5 clean / adv
    assert len(board) == 6 and set(board["n_examples"]) == {1000}
    assert set(board["attacks"]) == {"fgsm=robustkit;pgd=robustkit"}
    # the adversarially trained model ranks first at every eps, and robust accuracy falls with eps
    assert board.groupby("eps").first()["model"].tolist() == ["lenet5-adv"] * 3
    for _, part in board.groupby("model"):
        assert part.sort_values("eps")["robust_acc"].is_monotonic_decreasing
    assert (board["robust_acc"] <= board["acc_fgsm"]).all()
    assert (example_run["out"] / "leaderboard.md").read_text().startswith("| rank | model |")


def test_example_sweep_writes_the_report_and_plots(example_run):
    """The README's example sweep leaves report.html (every model, no external resource) and plots/ (PNG + SVG)."""
    out = example_run["out"]
    html = (out / "report.html").read_text()
    assert "lenet5-clean" in html and "lenet5-adv" in html and not re.search(r'(src|href)="(https?:)?//', html)
    for name in ("robust_accuracy_vs_eps", "cascade", "per_class"):
        assert (out / "plots" / f"{name}.png").is_file() and (out / "plots" / f"{name}.svg").is_file()
    for model in ("lenet5-clean", "lenet5-adv"):
        assert (out / "plots" / "models" / model / "examples.png").is_file()


def test_numbers_agree_with_torchattacks(example_run, mnist_test, lenet5_clean, lenet5_adv):
    """FGSM equals torchattacks' FGSM exactly; robust accuracy is at most torchattacks' PGD + 0.5 points."""
    import torchattacks

    board, ps = example_run["board"], example_run["per_sample"]
    data = mnist_test.subset(1000)
    x, y = data.x, data.y
    smallest = board["eps"].min()
    compared = 0
    for name, model in (("lenet5-clean", lenet5_clean), ("lenet5-adv", lenet5_adv)):
        for eps in sorted(board["eps"].unique()):
            row = board[(board.model == name) & (board.eps == eps)].iloc[0]
            ours = ps[(ps.model == name) & (ps.eps == eps)].sort_values("index")
            tk_fgsm_adv = torchattacks.FGSM(model, eps=float(eps))(x, y)
            with torch.no_grad():
                tk_fgsm_pred = model(tk_fgsm_adv).argmax(1)
            tk_fgsm_success = (tk_fgsm_pred != y).numpy()
            if eps == smallest:
                assert row["acc_fgsm"] == round(100 * float((tk_fgsm_pred == y).float().mean()), 2)
            attacked = ours["attacked"].to_numpy() == 1  # none for lenet5-clean at 0.3: all broken at 0.2
            compared += int(attacked.sum())
            our_success = ours["robust_after_fgsm"].to_numpy() == 0
            mismatch = (our_success != tk_fgsm_success)[attacked]
            assert not mismatch.any(), f"{name} eps={eps}: FGSM disagrees on {int(mismatch.sum())} samples"
            if row["robust_acc"] == 0:
                continue  # 0 <= any accuracy + 0.5: nothing to compare (and 80k gradient steps saved)
            torch.manual_seed(0)
            pgd = torchattacks.PGD(model, eps=float(eps), alpha=PGD["step_size"], steps=PGD["steps"],
                                   random_start=PGD["random_start"])
            tk_pgd_adv = pgd(x, y)
            with torch.no_grad():
                tk_pgd_acc = 100 * float((model(tk_pgd_adv).argmax(1) == y).float().mean())
            assert row["robust_acc"] <= tk_pgd_acc + 0.5, f"{name} eps={eps}: {row['robust_acc']} vs {tk_pgd_acc}"
    assert compared > 3000  # FGSM was compared sample by sample on thousands of (model, eps, sample) triples


def _robustkit_command() -> list[str]:
    script = Path(sys.executable).parent / "robustkit"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "robustkit.cli"]


def _batches(db: Path) -> list[tuple]:
    if not db.exists():
        return []
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as c:
            return c.execute("SELECT id, job_id, batch_index, computed_at FROM batches ORDER BY id").fetchall()
    except sqlite3.Error:  # the schema is being created right now
        return []


def test_sigkill_midway_then_rerun_gives_identical_csv_without_recomputing(shared_dir, tmp_path):
    cfg = example_config(shared_dir, tmp_path)
    options = ["--n-examples", "300", "--batch-size", "100", "--quiet"]
    killed = tmp_path / "killed"
    cmd = _robustkit_command() + ["eval", "--config", str(cfg), "--out", str(killed)] + options
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    db = killed / "results.sqlite"
    deadline = time.monotonic() + 600
    try:
        while len(_batches(db)) < 4:  # 3 batches per job: the kill lands inside the second job
            assert proc.poll() is None, f"finished before it could be killed: {proc.communicate()}"
            assert time.monotonic() < deadline, "no batches were committed in time"
            time.sleep(0.1)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    before = _batches(db)
    assert 4 <= len(before) < 18

    rerun = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    assert rerun.returncode == 0, rerun.stderr
    assert rerun.stdout.startswith("| rank | model |")
    after = _batches(db)
    assert len(after) == 18
    assert after[:len(before)] == before  # finished batches kept their ids and timestamps: not recomputed
    assert f"({18 - len(before)} batches computed, {len(before)} reused)" in rerun.stderr

    reference = tmp_path / "reference"
    assert main(["eval", "--config", str(cfg), "--out", str(reference)] + options) == 0
    got = pd.read_csv(killed / "leaderboard.csv").drop(columns=["seconds"])
    want = pd.read_csv(reference / "leaderboard.csv").drop(columns=["seconds"])
    pd.testing.assert_frame_equal(got, want)
    assert (killed / "per_sample.csv").read_bytes() == (reference / "per_sample.csv").read_bytes()
    shutil.rmtree(reference)
