"""Universal perturbations (SGA vs plain SPGD) and ordered top-K attacks (QuadAttack vs CW loss) on CIFAR-10.

Data: the 300 exact CIFAR-10 test images of ../shared (``cifar10_test_first100_exact.npz`` then
``abcrown_sdp200_exact.npz``). Model: the shared ResNet-20 (``cifar10-resnet20``). One torch thread, seed 0.

    python benchmarks/cifar10_beyond_lp.py uap  [--eps 8] [--train 150] [--epochs 10]
    python benchmarks/cifar10_beyond_lp.py topk [--eps 2] [--n 50] [--steps 60]

``uap``: fits each method on the first ``--train`` images (the training split) and reports, on the other
images (the held-out split), the fooling rate (prediction changed), robust accuracy and the McNemar test of
the two methods' per-image fooling; ``spgd-x4`` is the baseline given SGA's number of input gradients.
``topk``: success rate (the K largest logits equal the K random targets, in order, re-predicted) at
K = 1, 2, 3, 5. Every rate comes with its 95% Clopper-Pearson interval.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from robustkit.attacks import build_attack
from robustkit.attacks.topk import ordered_topk_success
from robustkit.data import load_dataset
from robustkit.stats import clopper_pearson_percent, mcnemar_exact
from robustkit.threat import ThreatModel
from robustkit.zoo import load_model

SHARED = Path(__file__).resolve().parents[2] / "shared"


def cifar300(shared: Path) -> tuple[torch.Tensor, torch.Tensor]:
    parts = [load_dataset({"name": "npz", "root": str(shared / "data" / "cifar10" / f)})
             for f in ("cifar10_test_first100_exact.npz", "abcrown_sdp200_exact.npz")]
    return torch.cat([p.x for p in parts]), torch.cat([p.y for p in parts])


def rate(count: int, n: int) -> str:
    low, high = clopper_pearson_percent(count, n)
    return f"{100 * count / n:.1f} [{low:.1f}, {high:.1f}]"


def run_uap(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, args: argparse.Namespace) -> None:
    threat = ThreatModel("Linf", args.eps / 255)
    xtr, ytr, xte, yte = x[:args.train], y[:args.train], x[args.train:], y[args.train:]
    with torch.no_grad():
        clean = model(xte).argmax(1)
    print(f"train split: images 0..{args.train - 1}; held-out split: images {args.train}..{x.shape[0] - 1} "
          f"(n={xte.shape[0]}); Linf eps {args.eps}/255; clean held-out acc {rate(int((clean == yte).sum()), len(yte))}")
    print("| method | epochs | input gradients | held-out fooling rate % [95% CI] | held-out robust acc % | seconds |")
    print("|---|---:|---:|---:|---:|---:|")
    fooled = {}
    for label, method, epochs in (("sga", "sga", args.epochs), ("spgd", "spgd", args.epochs),
                                  ("spgd-x4", "spgd", 4 * args.epochs)):
        attack = build_attack({"name": "uap", "method": method, "epochs": epochs})
        t0 = time.perf_counter()
        info = attack.fit(model, xtr, ytr, threat, generator=torch.Generator().manual_seed(0))
        result = attack(model, xte, yte, threat)
        seconds = time.perf_counter() - t0
        fooled[label] = (result.pred != clean).numpy()
        robust = int((result.pred == yte).sum())
        print(f"| {label} | {epochs} | {info['input_gradients']} | {rate(int(fooled[label].sum()), len(yte))} | "
              f"{rate(robust, len(yte))} | {seconds:.1f} |")
    for other in ("spgd", "spgd-x4"):
        test = mcnemar_exact(fooled["sga"], fooled[other])
        print(f"McNemar sga vs {other}: only sga fools {test.only_a}, only {other} fools {test.only_b}, "
              f"p = {test.p_value:.4g}")


def run_topk(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, args: argparse.Namespace) -> None:
    x, y = x[:args.n], y[:args.n]
    threat = ThreatModel("Linf", args.eps / 255)
    print(f"first {args.n} images, Linf eps {args.eps}/255, {args.steps} steps, random ordered targets (seed 0)")
    print("| K | QuadAttack success % [95% CI] | s | CW-loss PGD success % [95% CI] | s |")
    print("|---:|---:|---:|---:|---:|")
    for k in (1, 2, 3, 5):
        cells = []
        for method in ("quad", "cw"):
            attack = build_attack({"name": "topk", "k": k, "method": method, "steps": args.steps})
            t0 = time.perf_counter()
            result = attack(model, x, y, threat, generator=torch.Generator().manual_seed(0))
            with torch.no_grad():
                hit = ordered_topk_success(model(result.x_adv), result.info["topk_targets"])
            cells += [rate(int(hit.sum()), len(y)), f"{time.perf_counter() - t0:.1f}"]
        print(f"| {k} | " + " | ".join(cells) + " |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("what", choices=("uap", "topk"))
    ap.add_argument("--eps", type=float, default=None, help="Linf eps in /255 units (uap 8, topk 2)")
    ap.add_argument("--train", type=int, default=150)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--n", type=int, default=50)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--shared", type=Path, default=SHARED)
    args = ap.parse_args()
    args.eps = args.eps if args.eps is not None else (8.0 if args.what == "uap" else 2.0)
    torch.set_num_threads(1)
    model = load_model("cifar10-resnet20", weights_dir=args.shared / "weights")
    x, y = cifar300(args.shared)
    (run_uap if args.what == "uap" else run_topk)(model, x, y, args)


if __name__ == "__main__":
    main()
