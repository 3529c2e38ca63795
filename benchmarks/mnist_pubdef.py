"""PubDef on MNIST: white-box vs transfer-grid robust accuracy of a standard, a PGD-trained and a PubDef-trained
model, against public surrogates trained here (two architectures, standard and PGD).

    python benchmarks/mnist_pubdef.py                 # needs ../shared
    python benchmarks/mnist_pubdef.py --n-eval 100    # a quicker look

The shared folder has only the MNIST *test* set: every model is trained on test images 0..4999 (as
benchmarks/mnist_defenses.py does) and evaluated on every ``5000 / n_eval``-th image of 5000..9999.

1. ``robustkit train`` (the CLI, in-process) trains into ``--cache`` (existing cards are reused):
   * the public surrogates: ``small-cnn`` (width 8) and ``mlp``, each standard and PGD-trained (Linf 0.3);
   * the private targets (``kw-small``): standard, PGD-trained (PGD-5 at Linf 0.3, eps ramped up over 4 of 10
     epochs), and PubDef-trained (``--method pubdef``) against two of the four surrogates, the standard
     ``small-cnn`` and the PGD ``mlp`` (PubDef trains against a few sources and is evaluated on all of them).
2. White-box: AutoAttack on each target, Linf 0.3 (``--aa``: the standard ensemble by default; e.g.
   ``--aa apgd-ce apgd-t`` for a quicker look).
3. Transfer grid (``transfer-grid``): the four surrogates x FGSM, PGD-20 (cross-entropy), PGD-20 (margin loss),
   each pair on every image; the row's robust accuracy is the per-image worst case over the grid.
   ``<out>/transfer/transfer_grid.{csv,png}`` hold the grid and its heatmap.
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
from robustkit.engine.leaderboard import to_markdown

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
COMMON = ["--dataset", "mnist", "--n-examples", "5000", "--eval-examples", "5000", "--batch-size", "64", "--quiet"]
# sized for 2 shared CPU cores: PGD-5 training, eps ramped up over 4 of 10 epochs (PGD training from scratch at the
# full eps collapsed to chance in benchmarks/mnist_defenses.py)
PGD = ["--method", "pgd", "--eps", "0.3", "--steps", "5", "--eps-warmup", "4", "--lr", "1e-3", "--epochs", "10"]
STANDARD = ["--method", "standard", "--lr", "3e-3", "--epochs", "5"]
CNN = ["--arch", "small-cnn", "--arch-kwargs", "{width: 8, hidden: 64}"]
SURROGATES = {
    "pub-small-cnn-standard": [*CNN, *STANDARD],
    "pub-small-cnn-pgd": [*CNN, *PGD],
    "pub-mlp-standard": ["--arch", "mlp", *STANDARD],
    "pub-mlp-pgd": ["--arch", "mlp", *PGD],
}
PUBDEF_SOURCES = ("pub-small-cnn-standard", "pub-mlp-pgd")
TARGETS = {
    "target-standard": ["--arch", "kw-small", *STANDARD],
    "target-pgd": ["--arch", "kw-small", *PGD],
    "target-pubdef": ["--arch", "kw-small", "--method", "pubdef", "--eps", "0.3", "--steps", "10", "--lr", "3e-3",
                      "--epochs", "5"],
}
GRID_ATTACKS = [{"name": "fgsm"}, {"name": "pgd", "steps": 20},
                {"name": "pgd", "steps": 20, "loss": "margin", "label": "pgd-margin"}]


def train(cache: Path, mnist: Path, name: str, flags: list[str]) -> Path:
    card = cache / f"{name}.yaml"
    if not card.is_file():
        t0 = time.perf_counter()
        extra = [arg for src in PUBDEF_SOURCES for arg in ("--surrogate", str(cache / f"{src}.yaml"))] \
            if "pubdef" in flags else []
        args = ["train", "--root", str(mnist), *COMMON, "--name", name, "--out", str(cache), *flags, *extra]
        if cli(args) != 0:
            raise SystemExit(f"training {name} failed: robustkit {' '.join(args)}")
        print(f"trained {name} in {time.perf_counter() - t0:.0f} s", flush=True)
    print(f"{name}: clean accuracy {yaml.safe_load(card.read_text())['reported_clean_acc']}% on images 5000..9999",
          flush=True)
    return card


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shared", type=Path, default=SHARED)
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "mnist-pubdef")
    ap.add_argument("--n-eval", type=int, default=100, help="evaluation images (of 5000..9999)")
    ap.add_argument("--aa", nargs="+", default=["standard"],
                    help="AutoAttack components for the white-box row ('standard': the full ensemble)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    mnist = args.shared / "data" / "mnist"
    cache = args.out / "models"
    cache.mkdir(parents=True, exist_ok=True)
    surrogates = {name: train(cache, mnist, name, flags) for name, flags in SURROGATES.items()}
    targets = {name: train(cache, mnist, name, flags) for name, flags in TARGETS.items()}
    data = load_dataset("mnist", root=mnist)
    idx = 5000 + torch.arange(args.n_eval) * (5000 // args.n_eval)
    dataset = (data.x[idx], data.y[idx])
    models = {name: str(card) for name, card in targets.items()}
    t0 = time.perf_counter()
    aa = {"name": "autoattack", "seed": 0} if args.aa == ["standard"] else \
        {"name": "autoattack", "seed": 0, "version": "custom", "attacks_to_run": args.aa}
    white = robustkit.evaluate(models, dataset=dataset, attacks=[aa], eps=[0.3], out=args.out / "whitebox")
    print(f"white-box: {time.perf_counter() - t0:.0f} s\n{to_markdown(white.leaderboard)}", flush=True)
    t0 = time.perf_counter()
    grid = {"name": "transfer-grid", "surrogates": [str(c) for c in surrogates.values()], "attacks": GRID_ATTACKS}
    transfer = robustkit.evaluate(models, dataset=dataset, attacks=[grid], eps=[0.3], out=args.out / "transfer")
    print(f"transfer grid: {time.perf_counter() - t0:.0f} s\n{to_markdown(transfer.leaderboard)}", flush=True)
    print((args.out / "transfer" / "transfer_grid.csv").read_text())


if __name__ == "__main__":
    main()
