"""The same sweep on 1 process x 1 thread and on N processes x 1 thread (torchrun, gloo), side by side.

    python benchmarks/distributed_scaling.py                     # needs ../shared; ~2 min on 2 idle CPU cores
    python benchmarks/distributed_scaling.py --n-examples 256 --steps 10   # a quick look

The sweep: the MNIST example (two advertorch LeNet5s, Linf 0.1/0.2/0.3) on ``--n-examples`` test images,
FGSM then PGD-``--steps``, batches of 32, checks off. Both runs are launched from this script, one after
the other, each in a fresh output folder:

* ``python -m robustkit eval ...`` with ``OMP_NUM_THREADS=1`` (1 process x 1 thread), and
* ``python -m torch.distributed.run --standalone --nproc-per-node N -m robustkit eval ...`` (N processes x
  1 thread each).

**Samples per second** counts evaluated (model, eps, sample) verdicts over the time the batches were being
computed: from the start of the first batch to the commit of the last one, read from the batches table of
the results store (``computed_at - seconds`` .. ``computed_at``). Process start-up (importing torch, loading
the data and models: the same in both runs, and paid once per sweep) and the finishing stages are left out;
the wall-clock time of each whole command is printed next to it. The two runs' leaderboards are compared
too (they must be equal except ``seconds`` and ``run_id``). Run it on an otherwise idle machine: the load
average at the start and the end is printed with the table.
"""
from __future__ import annotations

import argparse
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import yaml

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"


def write_config(folder: Path, steps: int) -> Path:
    weights = SHARED / "weights" / "advertorch"
    config = {
        "seed": 0, "device": "cpu", "batch_size": 32,
        "dataset": {"name": "mnist", "root": str(SHARED / "data" / "mnist")},
        "models": [{"name": name, "arch": "lenet5", "checkpoint": str(weights / f"mnist_lenet5_{file}trained.pt")}
                   for name, file in (("lenet5-clean", "cln"), ("lenet5-adv", "adv"))],
        "threat_model": {"norm": "Linf", "eps": [0.1, 0.2, 0.3]},
        "attacks": ["fgsm", {"name": "pgd", "steps": steps, "step_size": 0.01, "random_start": True}],
        "checks": "off",
    }
    path = folder / "scaling.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def compute_rate(out: Path) -> tuple[float, float, int]:
    """(samples per second, seconds, samples) of the batch computation, from the results store."""
    with sqlite3.connect(out / "results.sqlite") as c:
        first, last, samples = c.execute(
            "SELECT MIN(computed_at - seconds), MAX(computed_at), SUM(stop - start) FROM batches").fetchone()
    span = float(last) - float(first)
    return samples / span, span, int(samples)


def run(label: str, launcher: list[str], config: Path, out: Path, n: int) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    cmd = launcher + ["eval", "--config", str(config), "--out", str(out), "--n-examples", str(n), "--quiet"]
    t0 = time.perf_counter()
    # cwd: the output folder, not the source checkout (python -m would import its robustkit/ without the plugins)
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=out.parent)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"{label} failed:\n{proc.stderr[-3000:]}")
    rate, span, samples = compute_rate(out)
    return {"run": label, "samples": samples, "compute_s": round(span, 1), "samples_per_s": round(rate, 1),
            "wall_s": round(wall, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n-examples", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--procs", type=int, default=2)
    args = parser.parse_args()
    if not (SHARED / "data" / "mnist").is_dir():
        sys.exit(f"needs the shared MNIST data in {SHARED}")
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="robustkit-scaling-") as tmp:
        folder = Path(tmp)
        config = write_config(folder, args.steps)
        one = run("1 process x 1 thread", [sys.executable, "-m", "robustkit"], config, folder / "one",
                  args.n_examples)
        many = run(f"{args.procs} processes x 1 thread",
                   [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={args.procs}",
                    "-m", "robustkit"], config, folder / "many", args.n_examples)
        boards = [pd.read_csv(folder / name / "leaderboard.csv").drop(columns=["seconds", "run_id"])
                  for name in ("one", "many")]
        pd.testing.assert_frame_equal(*boards)
    load_after = os.getloadavg()
    print(f"MNIST LeNet5 x2, Linf 0.1/0.2/0.3, FGSM + PGD-{args.steps}, {args.n_examples} images, batches of 32, "
          f"{os.cpu_count()} CPU cores")
    columns = list(one)
    print("| " + " | ".join(columns) + " |")
    print("|" + "|".join("---" if c == "run" else "---:" for c in columns) + "|")
    for row in (one, many):
        print("| " + " | ".join(str(row[c]) for c in columns) + " |")
    print(f"speed-up ({args.procs} processes / 1): {many['samples_per_s'] / one['samples_per_s']:.2f}x "
          f"(leaderboards equal except seconds and run_id)")
    print(f"load average (1 min) before: {load_before[0]:.2f}, after: {load_after[0]:.2f}")


if __name__ == "__main__":
    main()
