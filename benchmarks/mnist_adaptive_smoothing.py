"""Adaptive smoothing on MNIST: the accurate and robust members, a fixed-alpha mixture and the trained mixing
network, attacked end to end (mixing network included) at Linf 0.3.

    python benchmarks/mnist_adaptive_smoothing.py            # needs ../shared
    python benchmarks/mnist_adaptive_smoothing.py --n-eval 200 --aa apgd-ce   # quicker: one component

Members (the shared folder's advertorch models, trained by their authors on the MNIST training set): the
standard LeNet5 (accurate) and the PGD-40-trained LeNet5 (robust, Linf 0.3). The mixing network is trained by
``robustkit train --method mixing-network`` on MNIST test images 0..4999 (PGD on the whole mixture at Linf 0.3),
reading both members' features at ``--layers`` (forward hooks; the paper's mixing network reads intermediate
features of the base classifiers); everything is evaluated on every ``5000 / n_eval``-th image of 5000..9999
with FGSM then AutoAttack (``--aa``: the standard ensemble by default), the declared adaptive attack, end to end
(mixing network included), with the checks on (``--checks``).
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
import yaml

import robustkit
import robustkit.engine  # noqa: F401 - import everything now
from robustkit.cli import main as cli
from robustkit.data import load_dataset
from robustkit.defenses import build_defense
from robustkit.engine.leaderboard import to_markdown
from robustkit.predict import eval_mode
from robustkit.training import pgd_examples
from robustkit.zoo import load_model

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shared", type=Path, default=SHARED)
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "mnist-adaptive-smoothing")
    ap.add_argument("--n-eval", type=int, default=100)
    ap.add_argument("--alpha", type=float, nargs="+", default=[0.5], help="fixed mixing weights to evaluate")
    ap.add_argument("--aa", nargs="+", default=["standard"], help="AutoAttack components ('standard': all)")
    ap.add_argument("--layers", nargs="+", default=["maxpool1", "maxpool2", "relu3"],
                    help="layers of both LeNet5 members the mixing network reads")
    ap.add_argument("--steps", type=int, default=10, help="PGD steps when training the mixing network")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--only", nargs="*", choices=("accurate", "robust", "fixed", "network"),
                    default=["accurate", "robust", "fixed", "network"],
                    help="evaluate only these models (e.g. to split the evaluation over two processes)")
    ap.add_argument("--checks", default="cheap", help="checks of the evaluation (cheap | full | off)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    weights, mnist = args.shared / "weights", args.shared / "data" / "mnist"
    cache = args.out / "models"
    entry_path = cache / "mnist-adaptive-smoothing.yaml"
    if not entry_path.is_file():
        t0 = time.perf_counter()
        layers = [arg for layer in args.layers for arg in ("--accurate-layer", layer, "--robust-layer", layer)]
        rc = cli(["train", "--method", "mixing-network", "--member", "mnist-lenet5-clean", "--member",
                  "mnist-lenet5-pgd", *layers, "--weights-dir", str(weights), "--dataset", "mnist", "--root",
                  str(mnist), "--n-examples", "5000", "--eval-examples", "5000", "--eps", "0.3", "--steps",
                  str(args.steps), "--epochs", str(args.epochs), "--batch-size", "128", "--lr", "1e-3", "--out",
                  str(cache)])
        if rc != 0:
            raise SystemExit("training the mixing network failed")
        print(f"mixing network trained in {time.perf_counter() - t0:.0f} s", flush=True)
    print(entry_path.read_text(), flush=True)
    entry = yaml.safe_load(entry_path.read_text())
    accurate = load_model("mnist-lenet5-clean", weights_dir=weights)
    robust = load_model("mnist-lenet5-pgd", weights_dir=weights)
    models = {"accurate: lenet5 standard": accurate, "robust: lenet5 PGD": robust}
    for alpha in args.alpha:
        models[f"adaptive-smoothing alpha={alpha:g} (fixed)"] = build_defense(
            {"name": "adaptive-smoothing", "alpha": alpha}, [accurate, robust])
    models["adaptive-smoothing mixing network"] = build_defense(entry["defense"], [accurate, robust])
    keys = dict(zip(models, ("accurate", "robust", *(["fixed"] * len(args.alpha)), "network")))
    data = load_dataset("mnist", root=mnist)
    idx = 5000 + torch.arange(args.n_eval) * (5000 // args.n_eval)
    alpha_report(models["adaptive-smoothing mixing network"], data.x[idx], data.y[idx])
    models = {name: model for name, model in models.items() if keys[name] in args.only}
    if not models:
        return
    aa = {"name": "autoattack", "seed": 0} if args.aa == ["standard"] else \
        {"name": "autoattack", "seed": 0, "version": "custom", "attacks_to_run": args.aa}
    t0 = time.perf_counter()
    result = robustkit.evaluate(models, dataset=(data.x[idx], data.y[idx]), attacks=["fgsm", aa], eps=[0.3],
                                out=args.out / f"eval-{'-'.join(args.only)}", checks=args.checks)
    print(f"{args.n_eval} images, Linf 0.3, FGSM then AutoAttack {'+'.join(args.aa)}: "
          f"{time.perf_counter() - t0:.0f} s\n{to_markdown(result.leaderboard)}")


def alpha_report(mixed: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
    """The mixing network's alpha on the clean images and on PGD-20 examples of the whole mixture: does it see
    the attack (high alpha) and let the accurate member answer clean images (low alpha)?"""
    with eval_mode(mixed):  # deployed: the batch norm on gamma uses its running statistics
        x_adv = pgd_examples(mixed, x, y, eps=0.3, norm="Linf", steps=20, step_size=0.025,
                             generator=torch.Generator().manual_seed(0))
    with torch.no_grad(), eval_mode(mixed):
        for label, images in (("clean", x), ("PGD-20 on the mixture", x_adv)):
            out, gamma = mixed.mix(images)
            prm = mixed.params
            alpha = prm["alpha_min"] + (prm["alpha_max"] - prm["alpha_min"]) * torch.sigmoid(gamma)
            print(f"alpha on {label}: mean {alpha.mean():.3f}, min {alpha.min():.3f}, max {alpha.max():.3f}; "
                  f"mixture accuracy {100 * (out.argmax(1) == y).float().mean():.0f}%", flush=True)


if __name__ == "__main__":
    main()
