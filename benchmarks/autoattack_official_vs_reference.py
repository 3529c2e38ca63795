"""Official AutoAttack vs robustkit's reference ensemble (torchattacks components), through one robustkit evaluation.

Needs the official package in the running environment (it is installed from git, not from PyPI)::

    pip install git+https://github.com/fra31/auto-attack
    python benchmarks/autoattack_official_vs_reference.py --n 40      # needs ../shared

Same model (advertorch's PGD-trained MNIST LeNet5), same images, Linf 0.3, seed 0, one torch thread; prints
the robust accuracy, the implementation string the leaderboard records, and the seconds of each.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

import robustkit
from robustkit.data import load_dataset
from robustkit.zoo import load_model

SHARED = Path(__file__).resolve().parents[2] / "shared"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=40, help="first N MNIST test images")
    ap.add_argument("--eps", type=float, default=0.3)
    ap.add_argument("--shared", type=Path, default=SHARED)
    args = ap.parse_args()
    torch.set_num_threads(1)
    data = load_dataset("mnist", root=args.shared / "data" / "mnist", n_examples=args.n)
    model = load_model({"name": "lenet5-adv", "arch": "lenet5",
                        "checkpoint": str(args.shared / "weights" / "advertorch" / "mnist_lenet5_advtrained.pt")})
    print("| implementation | robust acc % | seconds |\n|---|---:|---:|")
    for impl in ("official", "torchattacks"):
        t0 = time.perf_counter()
        res = robustkit.evaluate(model, dataset=(data.x, data.y), eps=[args.eps], norm="Linf", quiet=True,
                                 attacks=[{"name": "autoattack", "implementation": impl, "seed": 0}], checks="off")
        row = res.leaderboard.iloc[0]
        print(f"| {row['attacks']} | {row['robust_acc']:.2f} | {time.perf_counter() - t0:.0f} |", flush=True)


if __name__ == "__main__":
    main()
