"""MixedNUTS on CIFAR-10 with the shared models: clean and AutoAttack accuracy of the members and the mixture.

Accurate member: akamaster's standard ResNet-56 (zoo ``cifar10-resnet56``); robust member: alpha-beta-CROWN's
PGD-trained ResNet-2B (``cifar10-resnet2b-pgd``, Linf 2/255). Threat model Linf 2/255 (the robust member's).

* Calibration split: the 200 exact CIFAR-10 test images of ``abcrown_sdp200_exact.npz`` (checked disjoint from
  the evaluation images by per-image hashes; the evaluator refuses overlapping samples anyway). The robust member
  alone is attacked there (AutoAttack ``--aa``, then margin-loss PGD-100 for the survivors' lowest-margin point).
* Evaluation: the first ``--n`` exact test images (``cifar10_test_first100_exact.npz``), every model in one
  sweep, the mixtures attacked end to end (the declared adaptive attack: AutoAttack through the paper's gradient
  bypass), after FGSM (a cascade: FGSM removes the easy points cheaply). ``--aa`` picks the AutoAttack
  components (CPU time: the default runs APGD-CE only; ``--aa standard`` the whole ensemble).
* Operating points: ``--betas`` (the paper's CIFAR-10 point is 98.5); ``--exact-gradient BETA`` adds the mixture
  at BETA attacked through the exact (masked) gradient, to show what the unmodified attack reports.
* The naive comparison (the paper's baseline, ``--naive BETA ...``): the untransformed probability mixture
  ``log((1 - a) softmax(g) + a softmax(h))`` (robustkit's ``adaptive-smoothing`` with a fixed weight a, attacked
  end to end), with ``a`` chosen on the calibration split so that its clean accuracy there matches MixedNUTS's at
  BETA (the largest ``a`` on a 0.01 grid whose calibration clean accuracy is at least MixedNUTS's): the two
  mixtures are compared at matched clean accuracy without looking at the evaluation images.

    python benchmarks/cifar10_mixednuts.py --n 50 --betas 98.5 95 --naive 95 --out runs/mixednuts
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import robustkit
import robustkit.engine  # noqa: F401 - everything imported now (a long run must not pick up later edits)
from robustkit.data import load_dataset
from robustkit.defenses import build_defense
from robustkit.stats import clopper_pearson_percent
from robustkit.zoo import load_model

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=50, help="evaluation images (first n of the exact first 100)")
    ap.add_argument("--betas", type=float, nargs="*", default=[98.5, 95.0])
    ap.add_argument("--aa", nargs="+", default=["standard"],
                    help="AutoAttack components for the calibration and the evaluation ('standard': the full "
                         "ensemble, the default; e.g. 'apgd-ce' for a quick run)")
    ap.add_argument("--naive", type=float, nargs="*", default=[], metavar="BETA",
                    help="also evaluate the untransformed mixture at MixedNUTS's calibration clean accuracy at BETA")
    ap.add_argument("--exact-gradient", type=float, default=None, metavar="BETA",
                    help="also attack the mixture at BETA through the exact (masked) gradient")
    ap.add_argument("--no-members", action="store_true",
                    help="evaluate only the mixtures (e.g. to split the run over processes)")
    ap.add_argument("--shared", type=Path, default=SHARED)
    ap.add_argument("--out", type=Path, default=Path("runs/mixednuts"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    eps = 2 / 255
    weights = args.shared / "weights"
    cal = load_dataset({"name": "npz", "root": str(args.shared / "data/cifar10/abcrown_sdp200_exact.npz"),
                        "num_classes": 10})
    ev = load_dataset({"name": "npz", "root": str(args.shared / "data/cifar10/cifar10_test_first100_exact.npz"),
                       "num_classes": 10})
    accurate = load_model("cifar10-resnet56", weights_dir=weights).eval()
    robust = load_model("cifar10-resnet2b-pgd", weights_dir=weights).eval()

    t0 = time.perf_counter()
    mixed = build_defense("mixednuts", [accurate, robust])
    aa = {"name": "autoattack", "seed": 0} if args.aa == ["standard"] else \
        {"name": "autoattack", "seed": 0, "version": "custom", "attacks_to_run": args.aa}
    record = mixed.calibrate(cal.x, cal.y, eps=eps, split="CIFAR-10 abcrown_sdp200_exact.npz (200 exact test images)",
                             attacks=[aa, {"name": "pgd", "loss": "margin", "steps": 100}],
                             generator=torch.Generator().manual_seed(0))
    print(f"calibration: {time.perf_counter() - t0:.0f} s, {record['robust_member_clean_wrong']} clean mistakes and "
          f"{record['robust_member_attack_survivors']} attack survivors of the robust member", flush=True)
    models = {} if args.no_members else {"accurate: resnet56": accurate, "robust: resnet2b-pgd": robust}
    points = {}
    for beta in args.betas:
        m = mixed.at_operating_point(beta)
        models[f"mixednuts beta={beta:g}"] = m
        points[beta] = {**{k: m.params[k] for k in ("s", "p", "c", "alpha", "alpha_diffable")},
                        "objective": m.calibration_record["objective"]}
        print(f"beta {beta:g}: {points[beta]}")
    matched = {}
    if args.naive:
        z_cal = torch.stack([logits(accurate, cal.x), logits(robust, cal.x)], dim=1)
    for beta in args.naive:
        target = clean_acc(mixed.at_operating_point(beta).mixed_log_probs(z_cal), cal.y)
        a, acc = naive_weight(z_cal, cal.y, target)
        matched[beta] = {"mixednuts_cal_clean": target, "naive_alpha": a, "naive_cal_clean": acc}
        print(f"naive mixture matched to beta {beta:g}: MixedNUTS {target:.1f}% clean on the calibration split, "
              f"untransformed mixture a = {a:.2f}: {acc:.1f}%", flush=True)
        models[f"naive mixture a={a:.2f} (matched to beta={beta:g})"] = build_defense(
            {"name": "adaptive-smoothing", "alpha": a}, [accurate, robust])
    if args.exact_gradient is not None:
        models[f"mixednuts beta={args.exact_gradient:g}, exact gradient (naive attack)"] = mixed.at_operating_point(
            args.exact_gradient, gradient="exact")
    t0 = time.perf_counter()
    result = robustkit.evaluate(models, dataset=(ev.x[:args.n], ev.y[:args.n]), attacks=["fgsm", aa], eps=[eps],
                                out=args.out, checks="cheap")
    seconds = time.perf_counter() - t0
    board = result.leaderboard
    print(f"\n{args.n} images, Linf 2/255, FGSM then AutoAttack {'+'.join(args.aa)}; {seconds:.0f} s\n")
    print("| model | clean | AutoAttack robust (95% Clopper-Pearson) | flags |\n|---|---|---|---|")
    for _, row in board.iterrows():
        k = round(row["robust_acc"] * args.n / 100)
        lo, hi = clopper_pearson_percent(k, args.n)
        print(f"| {row['model']} | {row['clean_acc']:.0f}% | {row['robust_acc']:.0f}% [{lo:.0f}, {hi:.0f}] "
              f"| {row['flags'] if isinstance(row['flags'], str) else ''} |")
    (args.out / "mixednuts_points.json").write_text(json.dumps({"calibration": record, "points": points,
                                                                "naive": matched}, indent=2, default=str))


@torch.no_grad()
def logits(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    return torch.cat([model(x[i:i + 100]).float() for i in range(0, x.shape[0], 100)])


def clean_acc(log_probs: torch.Tensor, y: torch.Tensor) -> float:
    return 100.0 * float((log_probs.argmax(1) == y).float().mean())


def naive_weight(z: torch.Tensor, y: torch.Tensor, target: float) -> tuple[float, float]:
    """(a, clean accuracy): the largest weight a of the robust member on a 0.01 grid whose untransformed mixture
    ``(1 - a) softmax(g) + a softmax(h)`` is at least ``target`` % accurate on the calibration logits ``z``."""
    best = (0.0, clean_acc(z[:, 0], y))
    for step in range(101):
        a = step / 100
        acc = clean_acc(torch.log((1 - a) * z[:, 0].softmax(1) + a * z[:, 1].softmax(1)), y)
        if acc >= target:
            best = (a, acc)
    return best


if __name__ == "__main__":
    main()
