"""Distributed sweeps under torchrun (gloo, CPU): the same leaderboard and per-sample CSV as one process.

The sweep is the MNIST example (tests/configs/mnist-linf.yaml: two LeNet5s, Linf 0.1/0.2/0.3) reduced to 48
images, FGSM + a 10-step PGD and batches of 8 (6 batches per job, 36 in all), so that several ranks get
work. Every comparison drops only ``seconds`` (wall-clock) and ``run_id``.
"""
from __future__ import annotations

import os
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from robustkit.cli import main

CONFIG = Path(__file__).parent / "configs" / "mnist-linf.yaml"
ARGS = ["--n-examples", "48", "--checks", "off", "--quiet"]
VOLATILE = ["seconds", "run_id"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
# Not the source checkout: ``python -m`` puts the working folder first on sys.path, and the checkout's
# robustkit/ folder lacks the robustkit.attacks / robustkit.defenses plugin packages of an installed copy.
CWD = tempfile.gettempdir()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def small_config(shared_dir: Path, folder: Path, *, steps: int = 10) -> Path:
    """The example sweep with absolute paths, cheap attacks and batches of 8."""
    data = yaml.safe_load(CONFIG.read_text())
    data["dataset"]["root"] = str(shared_dir / "data" / "mnist")
    for m in data["models"]:
        m["checkpoint"] = str(shared_dir / "weights" / "advertorch" / Path(m["checkpoint"]).name)
    data["attacks"] = ["fgsm", {"name": "pgd", "steps": steps, "step_size": 0.03, "random_start": True}]
    data["batch_size"] = 8
    data["device"] = "cpu"
    data.pop("output", None)
    path = folder / f"mnist-small-{steps}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def torchrun(*launcher: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", *launcher, "-m", "robustkit", "eval"]


def assert_same_results(got: Path, want: Path) -> None:
    for name in ("leaderboard.csv", "per_sample.csv"):
        a = pd.read_csv(got / name).drop(columns=VOLATILE, errors="ignore")
        b = pd.read_csv(want / name).drop(columns=VOLATILE, errors="ignore")
        pd.testing.assert_frame_equal(a, b)
    assert not (got / "shards").exists()  # merged into results.sqlite and removed


def n_batches(db: Path) -> int:
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as c:
            return int(c.execute("SELECT COUNT(*) FROM batches").fetchone()[0])
    except sqlite3.Error:
        return 0


@pytest.fixture(scope="module")
def reference(shared_dir, tmp_path_factory):
    """The single-process run every distributed run must reproduce."""
    folder = tmp_path_factory.mktemp("distributed")
    cfg = small_config(shared_dir, folder)
    out = folder / "reference"
    assert main(["eval", "--config", str(cfg), "--out", str(out), *ARGS]) == 0
    return cfg, out


@pytest.mark.parametrize("world_size", [1, 3])
def test_torchrun_matches_one_process(reference, tmp_path, world_size):
    cfg, ref = reference
    out = tmp_path / f"w{world_size}"
    cmd = torchrun("--standalone", f"--nproc-per-node={world_size}") + ["--config", str(cfg), "--out", str(out), *ARGS]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=ENV, cwd=CWD, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("| rank | model |") == 1  # only rank 0 prints the leaderboard
    assert_same_results(out, ref)
    with sqlite3.connect(out / "results.sqlite") as c:
        prov = yaml.safe_load(c.execute("SELECT provenance FROM runs").fetchone()[0])
    assert prov["distributed"]["world_size"] == world_size
    assert [r["rank"] for r in prov["distributed"]["devices"]] == list(range(world_size))
    assert {r["device"] for r in prov["distributed"]["devices"]} == {"cpu"}


def test_workers_option_starts_torchrun_and_a_rerun_reuses_everything(reference, tmp_path):
    """``robustkit eval --workers 2`` (torchrun's launcher, started for the user); then 1 process resumes it."""
    cfg, ref = reference
    out = tmp_path / "workers2"
    cmd = [sys.executable, "-m", "robustkit", "eval", "--config", str(cfg), "--out", str(out), *ARGS]
    proc = subprocess.run(cmd + ["--workers", "2"], capture_output=True, text=True, env=ENV, cwd=CWD, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.startswith("| rank | model |")
    assert "(36 batches computed, 0 reused)" in proc.stderr
    assert_same_results(out, ref)
    again = subprocess.run(cmd, capture_output=True, text=True, env=ENV, cwd=CWD, timeout=600)
    assert again.returncode == 0 and "(0 batches computed, 36 reused)" in again.stderr, again.stderr[-2000:]


def test_two_nodes_with_the_c10d_rendezvous(reference, tmp_path):
    """Two torchrun launches (--nnodes 2, node ranks 0 and 1) meeting at 127.0.0.1 through c10d."""
    cfg, ref = reference
    out = tmp_path / "nodes"
    port = free_port()
    procs = [subprocess.Popen(torchrun("--nnodes=2", f"--node-rank={node}", "--nproc-per-node=1",
                                       "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{port}",
                                       "--rdzv-id=robustkit-test")
                              + ["--config", str(cfg), "--out", str(out), *ARGS],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV, cwd=CWD)
             for node in (0, 1)]
    outputs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [e[-2000:] for _, e in outputs]
    assert sum(o.count("| rank | model |") for o, _ in outputs) == 1
    assert_same_results(out, ref)


def _rank_pids(parent: int) -> dict[int, int]:
    """RANK -> pid of the worker processes torchrun (pid ``parent``) started."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            env = (entry / "environ").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue
        if ppid != parent:
            continue
        for item in env:
            if item.startswith(b"RANK="):
                found[int(item[5:])] = int(entry.name)
    return found


def _kill_rank_midway(cmd: list[str], out: Path, rank: int = 1,
                      also: list[list[str]] = ()) -> list[subprocess.CompletedProcess]:
    """Start ``cmd`` (torchrun) and the torchruns of the other nodes (``also``), SIGKILL worker ``rank`` once a
    few batches are stored, wait for every torchrun."""
    procs = [subprocess.Popen(c, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV, cwd=CWD)
             for c in [cmd, *also]]
    shard = out / "shards" / f"rank-{rank}.sqlite"
    deadline = time.monotonic() + 300
    try:
        while n_batches(shard) < 3:
            assert all(p.poll() is None for p in procs), f"finished before it could be killed: " \
                f"{[p.communicate()[1][-2000:] for p in procs]}"
            assert time.monotonic() < deadline, "no batches were committed in time"
            time.sleep(0.05)
        workers = {}
        for p in procs:
            workers.update(_rank_pids(p.pid))
        os.kill(workers[rank], signal.SIGKILL)
        outputs = [p.communicate(timeout=300) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    return [subprocess.CompletedProcess(p.args, p.returncode, o, e) for p, (o, e) in zip(procs, outputs)]


@pytest.fixture(scope="module")
def slow_reference(shared_dir, tmp_path_factory):
    """A longer sweep (144 images, PGD-40: 108 batches), so that a kill lands in the middle of it."""
    folder = tmp_path_factory.mktemp("distributed-slow")
    cfg = small_config(shared_dir, folder, steps=40)
    out = folder / "reference"
    assert main(["eval", "--config", str(cfg), "--out", str(out), "--n-examples", "144", "--checks", "off",
                 "--quiet"]) == 0
    return cfg, out


def test_sigkill_one_rank_then_the_same_command_resumes_with_nothing_lost(slow_reference, tmp_path):
    cfg, ref = slow_reference
    out = tmp_path / "killed"
    cmd = torchrun("--standalone", "--nproc-per-node=2") + ["--config", str(cfg), "--out", str(out),
                                                           "--n-examples", "144", "--checks", "off", "--quiet"]
    [killed] = _kill_rank_midway(cmd, out)
    assert killed.returncode != 0  # torchrun stopped the job
    stored = n_batches(out / "results.sqlite") + sum(n_batches(s) for s in (out / "shards").glob("rank-*.sqlite"))
    assert 3 <= stored < 108
    rerun = subprocess.run(cmd, capture_output=True, text=True, env=ENV, cwd=CWD, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert_same_results(out, ref)
    assert_killed_attempt_kept(out)


def assert_killed_attempt_kept(out: Path) -> None:
    """Every batch is stored once, and those the killed attempt committed were merged, not recomputed."""
    with sqlite3.connect(out / "results.sqlite") as c:
        assert c.execute("SELECT COUNT(*) FROM batches").fetchone()[0] == 108
        per_attempt = dict(c.execute("SELECT attempt, COUNT(*) FROM batches GROUP BY attempt").fetchall())
    assert sorted(per_attempt) == [1, 2] and per_attempt[1] >= 3, per_attempt


def test_max_restarts_resumes_after_a_killed_rank(slow_reference, tmp_path):
    """Elastic: with --max-restarts 1, torchrun restarts both workers after the kill and they finish the job.

    ``--fresh`` applies to the first attempt only: the restart keeps what the killed attempt stored.
    """
    cfg, ref = slow_reference
    out = tmp_path / "elastic"
    cmd = torchrun("--standalone", "--nproc-per-node=2", "--max-restarts=1") + [
        "--config", str(cfg), "--out", str(out), "--n-examples", "144", "--checks", "off", "--quiet", "--fresh"]
    [done] = _kill_rank_midway(cmd, out)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "exitcode: -9" in done.stderr  # torchrun saw the kill (and restarted the workers)
    assert_same_results(out, ref)
    assert_killed_attempt_kept(out)


@pytest.mark.slow
def test_max_restarts_on_two_nodes(slow_reference, tmp_path):
    """Two torchruns on 127.0.0.1 (c10d rendezvous), --max-restarts 1, rank 1 (on node 1) killed: both nodes
    restart their worker, and node 0 does so without counting a restart (TORCHELASTIC_RESTART_COUNT differs)."""
    cfg, ref = slow_reference
    out = tmp_path / "elastic-nodes"
    port = free_port()
    cmds = [torchrun("--nnodes=2", f"--node-rank={node}", "--nproc-per-node=1", "--max-restarts=1",
                     "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{port}", "--rdzv-id=robustkit-elastic")
            + ["--config", str(cfg), "--out", str(out), "--n-examples", "144", "--checks", "off", "--quiet"]
            for node in (0, 1)]
    done = _kill_rank_midway(cmds[0], out, also=cmds[1:])
    assert [d.returncode for d in done] == [0, 0], [d.stderr[-2000:] for d in done]
    assert_same_results(out, ref)
    assert_killed_attempt_kept(out)


def test_unreachable_rendezvous_is_one_line_naming_the_endpoint(reference, tmp_path):
    cfg, _ = reference
    port = free_port()
    cmd = [sys.executable, "-m", "robustkit", "eval", "--config", str(cfg), "--out", str(tmp_path / "x"), *ARGS,
           "--workers", "1", "--nnodes", "2", "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-timeout", "3"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=ENV, cwd=CWD, timeout=300)
    assert proc.returncode == 2
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: cannot reach the rendezvous at 127.0.0.1:{port}"), proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
