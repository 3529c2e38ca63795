"""The mixed sweep of README "Beyond Lp balls": Lp attacks, 15 corruptions, a patch and a UAP in one run.

    ROBUSTKIT_WEIGHTS_DIR=../shared/weights python benchmarks/cifar10_mixed_sweep.py [--shared ../shared]

Writes ``runs/cifar10-mixed/cifar10_300_exact.npz`` (the exact first 100 CIFAR-10 test images of ../shared,
then the 200 of ``abcrown_sdp200_exact.npz``; never inside the repository's tracked files) and runs
``robustkit eval --config benchmarks/configs/cifar10-mixed.yaml`` on it: leaderboard.csv (Lp), corruption.csv,
corruption_summary.csv, patch.csv, universal.csv and report.md (a section per threat model) in
``runs/cifar10-mixed``. Re-running resumes from the results store.
"""
from __future__ import annotations

import argparse
import io
import sys
import time
from pathlib import Path

import numpy as np

from robustkit.cli import main as cli_main
from robustkit.outputs import write_bytes

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
FILES = ("cifar10_test_first100_exact.npz", "abcrown_sdp200_exact.npz")


def build_npz(shared: Path, target: Path) -> None:
    """Concatenate the two exact CIFAR-10 files (uint8 HWC images, int labels) into one npz."""
    xs, ys = [], []
    for name in FILES:
        with np.load(shared / "data" / "cifar10" / name, allow_pickle=False) as f:
            xs.append(f["x"])
            ys.append(f["y"])
    buf = io.BytesIO()
    np.savez(buf, x=np.concatenate(xs), y=np.concatenate(ys).astype(np.int64))
    target.parent.mkdir(parents=True, exist_ok=True)
    write_bytes(target, buf.getvalue())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shared", type=Path, default=SHARED)
    args, rest = ap.parse_known_args()
    build_npz(args.shared, ROOT / "runs" / "cifar10-mixed" / "cifar10_300_exact.npz")
    t0 = time.perf_counter()
    code = cli_main(["eval", "--config", str(ROOT / "benchmarks" / "configs" / "cifar10-mixed.yaml"), *rest])
    print(f"wall-clock {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
