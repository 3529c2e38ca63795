"""Signals: Ctrl-C prints the documented resume line (exit 130) and a resumed run equals an uninterrupted one;
``kill -9`` loses nothing committed. The interrupted runs are real subprocesses (issue 12, Weak: Ctrl-C
printed only ``aborted``)."""
from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
import torch

from _hostile import MLP_KW, base_config
import robustkit.cli.eval_cmd as eval_cmd
from robustkit.cli import INTERRUPTED
from robustkit.zoo import load_model


def _slow_world(tiny) -> dict:
    """Labels = the model's own predictions (100% clean), a tiny eps (everything stays robust) and PGD with
    many steps: every batch takes a noticeable time, so a signal lands mid-sweep."""
    model = load_model({"name": "mlp", "arch": "mlp", "arch_kwargs": dict(MLP_KW),
                        "checkpoint": str(tiny.root / "mlp.safetensors")})
    with np.load(tiny.root / "data.npz") as f:
        x = f["x"]
    with torch.no_grad():
        y = model(torch.from_numpy(x).float() / 255).argmax(1).numpy()
    np.savez(tiny.root / "own.npz", x=x, y=y)
    cfg = base_config()
    cfg["dataset"]["root"] = "own.npz"
    cfg["batch_size"] = 4
    cfg["threat_model"]["eps"] = [0.0005]
    cfg["attacks"] = [{"name": "pgd", "steps": 60, "random_start": False}]
    return cfg


def _command(config) -> list[str]:
    return [sys.executable, "-m", "robustkit.cli", "eval", "--config", str(config), "-q"]


def _batches(db) -> int:
    try:
        with sqlite3.connect(db) as con:
            return con.execute("SELECT COUNT(*) FROM batches").fetchone()[0]
    except sqlite3.Error:
        return 0


@pytest.mark.parametrize("sig", [signal.SIGINT, pytest.param(signal.SIGKILL, marks=pytest.mark.slow)])
def test_interrupted_run_resumes_to_the_same_csvs(tiny, cli, sig):
    """The interrupted run is a subprocess; the resume and the uninterrupted reference run in-process."""
    cfg = _slow_world(tiny)
    cfg["output"] = "ref"
    ref = tiny.write_config(cfg, "ref.yaml")
    cfg["output"] = "cut"
    cut = tiny.write_config(cfg, "cut.yaml")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    # a user's Ctrl-C reaches a process that handles it; a test runner started in the background without job
    # control (`cmd &` in a script) passes SIGINT down as ignored, and Python keeps it ignored: reset it
    proc = subprocess.Popen(_command(cut), cwd=tiny.root, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 120
    while _batches(tiny.root / "cut" / "results.sqlite") < 1 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be interrupted"
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    done = _batches(tiny.root / "cut" / "results.sqlite")
    assert 1 <= done < 6
    if sig == signal.SIGINT:
        assert proc.returncode == 130
        lines = [line for line in err.splitlines() if line.strip()]
        assert lines == [INTERRUPTED] and "run the same command again to resume" in lines[0]
        assert "Traceback" not in err
    else:
        assert proc.returncode == -signal.SIGKILL
    code, _, err = cli("eval", "--config", cut, "-q")
    assert code == 0, err
    assert f"{6 - done} batches computed, {done} reused" in err
    code, _, err = cli("eval", "--config", ref, "-q")
    assert code == 0, err
    for name in ("per_sample.csv", "leaderboard.csv"):
        a = pd.read_csv(tiny.root / "cut" / name).drop(columns=["seconds"], errors="ignore")
        b = pd.read_csv(tiny.root / "ref" / name).drop(columns=["seconds"], errors="ignore")
        pd.testing.assert_frame_equal(a, b)


def test_ctrl_c_in_process_prints_the_resume_line(tiny, cli, monkeypatch, unchanged):
    """click turns KeyboardInterrupt into Abort; the entry point still prints the resume line, exit 130."""
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(eval_cmd, "run_sweep", interrupted)
    code, _, err = cli("eval", "--config", tiny.config, "-q")
    assert code == 130
    assert [line for line in err.splitlines() if line.strip()] == [INTERRUPTED]


def test_resume_hint_is_what_the_docs_promise():
    for doc in ("engine.md", "security.md"):
        with open(os.path.join(os.path.dirname(__file__), "..", "..", "docs", doc), encoding="utf-8") as f:
            text = " ".join(f.read().split())
        assert INTERRUPTED in text
