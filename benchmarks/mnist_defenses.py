"""The MNIST defense sweep (issue 5): train each defense's model, evaluate all of them in one sweep, print it.

    python benchmarks/mnist_defenses.py                 # needs ../shared; ~25 min on 2 shared CPU cores
    python benchmarks/mnist_defenses.py --n-eval 100    # a quick look (AutoAttack part: --aa-n, default 20)

The shared folder has only the MNIST *test* set, so the models trained here use test images 0..4999, and
every model is evaluated on images of 5000..9999 (every ``5000 / n_eval``-th one; default 500 images).

1. ``robustkit train`` (the CLI, in-process; ``kw-small``, Adam, 10 epochs) trains into ``--cache``: a
   standard CNN (three seeds: one is "the" standard CNN, all three form the ensemble), a PGD-trained CNN
   (Madry et al., PGD-10 at Linf 0.3, eps ramped up over the first 5 of 30 epochs: without the ramp the
   training collapsed to chance on 5000 images), a TRADES-trained CNN (Linf 0.3, 20 epochs), a defensively
   distilled CNN (T = 100) and Gaussian-noise-trained bases (sigma 0.25, 0.5) for smoothing. Existing cards
   are reused. advertorch's PGD-trained LeNet5 of the shared folder (PGD-40, Linf 0.3, trained by its
   authors on the full MNIST training set) is evaluated beside them as a reference point.
2. The sweep config ``benchmarks/configs/mnist-defenses.yaml`` (regenerated here) names those models with
   ``defense:`` / ``members:`` / ``model:``; the engine runs FGSM, PGD-20 (cross-entropy) and CW (PGD-20
   on the Carlini-Wagner margin) as a cascade at Linf 0.1/0.2/0.3, and certifies the smoothed models
   (n0 100, n 1000, alpha 0.001) at L2 radii 0..1, in one leaderboard.
3. The complete sweep of the issue -- every model above, FGSM, PGD, CW **and** AutoAttack (reference
   settings; randomized models get its EOT), one leaderboard -- is ``benchmarks/configs/mnist-defenses-aa.yaml``
   on the first ``--aa-n`` evaluation images (default 50): AutoAttack is too slow on 2 CPU cores for
   n_eval images. Step 2's table is the same sweep without AutoAttack on 10x the images (tighter
   intervals). Both leaderboards are printed; ``runs/mnist-defenses/{main,aa}/leaderboard.{csv,md}`` hold them.
"""
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
CONFIGS = ROOT / "benchmarks" / "configs"
ARCH = "kw-small"  # convex_adversarial's small ConvNet (Wong & Kolter 2018): cheap enough for 2 CPU cores

# name -> extra `robustkit train` flags (all: kw-small, MNIST test images 0..4999, Adam lr 3e-3, batch 64)
MODELS = {
    "cnn-standard": ["--method", "standard", "--seed", "0"],
    "cnn-standard-s1": ["--method", "standard", "--seed", "1"],
    "cnn-standard-s2": ["--method", "standard", "--seed", "2"],
    # PGD training (Madry et al.) of kw-small at Linf 0.3 from scratch on 5000 images collapsed to chance
    # (11% clean, lr 3e-3 and 1e-3) at the full eps from the first batch; with eps ramped up it trains.
    "cnn-pgd": ["--method", "pgd", "--eps", "0.3", "--steps", "10", "--eps-warmup", "5", "--lr", "1e-3",
                "--seed", "0", "--epochs", "30"],
    "cnn-trades": ["--method", "trades", "--eps", "0.3", "--steps", "10", "--lr", "1e-3", "--seed", "0",
                   "--epochs", "20"],
    "cnn-distilled": ["--method", "distillation", "--temperature", "100", "--seed", "0"],
    "cnn-noise-0.25": ["--method", "noise", "--sigma", "0.25", "--seed", "0"],
    "cnn-noise-0.5": ["--method", "noise", "--sigma", "0.5", "--seed", "0"],
}
ATTACKS = ["fgsm", {"name": "pgd", "steps": 20, "restarts": 1},
           {"name": "cw-linf", "steps": 20, "label": "cw"}]


def train_models(cache: Path, mnist: Path, epochs: int) -> dict[str, Path]:
    from robustkit.cli import main

    cards = {}
    for name, flags in MODELS.items():
        card = cache / f"{name}.yaml"
        if not card.is_file():
            t0 = time.perf_counter()
            args = ["train", "--arch", ARCH, "--dataset", "mnist", "--root", str(mnist), "--lr", "3e-3",
                    "--n-examples", "5000", "--eval-examples", "5000", "--epochs", str(epochs), "--batch-size", "64",
                    "--name", name, "--out", str(cache), "--quiet", *flags]
            if main(args) != 0:
                raise SystemExit(f"training {name} failed: robustkit {' '.join(args)}")
            print(f"trained {name} in {time.perf_counter() - t0:.0f} s", flush=True)
        cards[name] = card
        print(f"{name}: clean accuracy {yaml.safe_load(card.read_text())['reported_clean_acc']}% on images "
              f"5000..9999", flush=True)
    return cards


def eval_subset(cache: Path, mnist: Path, n: int) -> Path:
    """Every (5000 / n)-th image of MNIST test images 5000..9999 as an npz file (uint8, as in the IDX files)."""
    from robustkit.data import load_dataset

    path = cache / f"mnist-test-5000-9999-n{n}.npz"
    if not path.is_file():
        data = load_dataset("mnist", root=mnist)
        idx = 5000 + np.arange(n) * (5000 // n)
        x = np.rint(data.x[idx].numpy()[:, 0] * 255).astype(np.uint8)
        np.savez(path, x=x, y=data.y[idx].numpy().astype(np.int64), index=idx)
    return path


def _rel(path: Path) -> str:
    """A path relative to the configs folder (the engine resolves config paths against the config's folder)."""
    return os.path.relpath(path, CONFIGS)


def model_entries(cards: dict[str, Path], shared: Path, randomized: bool = True) -> list:
    c = {k: _rel(v) for k, v in cards.items()}
    pgd = {"name": "lenet5-pgd-advertorch", "arch": "lenet5",
           "checkpoint": _rel(shared / "weights" / "advertorch" / "mnist_lenet5_advtrained.pt")}
    entries = [
        c["cnn-standard"], c["cnn-pgd"], pgd, c["cnn-trades"],  # plain models (a card's name is its leaderboard name)
        {"name": "cnn-distilled", "model": c["cnn-distilled"], "defense": {"name": "distillation", "temperature": 100}},
        {"name": "ensemble-3-probs", "members": [c["cnn-standard"], c["cnn-standard-s1"], c["cnn-standard-s2"]],
         "defense": {"name": "ensemble", "aggregation": "probs"}},
        {"name": "bitdepth-naive", "model": c["cnn-standard"], "defense": {"name": "bit-depth", "bits": 3, "bpda": False}},
        {"name": "bitdepth-bpda", "model": c["cnn-standard"], "defense": {"name": "bit-depth", "bits": 3, "bpda": True}},
    ]
    if randomized:
        for sigma in ("0.25", "0.5"):
            entries.append({"name": f"smoothing-{sigma}", "model": c[f"cnn-noise-{sigma}"],
                            "defense": {"name": "smoothing", "sigma": float(sigma), "samples": 2, "n0": 100,
                                        "n": 1000, "alpha": 0.001}})
    return entries


def write_config(path: Path, data_npz: Path, n: int, models: list, attacks: list, out: Path) -> Path:
    cfg = {"seed": 0, "device": "auto", "batch_size": 100,
           "dataset": {"name": "npz", "root": _rel(data_npz), "n_examples": n, "num_classes": 10},
           "models": models, "threat_model": {"norm": "Linf", "eps": [0.1, 0.2, 0.3]},
           "attacks": attacks, "output": _rel(out)}
    path.parent.mkdir(parents=True, exist_ok=True)
    header = ("# Written by benchmarks/mnist_defenses.py (run it; it trains the cards this file names).\n"
              "# MNIST test images 5000..9999 (subset), models trained on test images 0..4999.\n")
    path.write_text(header + yaml.safe_dump(cfg, sort_keys=False), encoding="utf-8")
    return path


def run(config: Path, out: Path) -> str:
    from robustkit.engine.config import load_config, resolve_config
    from robustkit.engine.leaderboard import to_markdown
    from robustkit.engine.runner import run_sweep

    t0 = time.perf_counter()
    cfg = load_config(config)
    result = run_sweep(resolve_config(cfg), out, quiet=False, options=cfg.options)  # checks, radii of the config
    print(f"{config.name}: {time.perf_counter() - t0:.0f} s ({result.batches_computed} batches computed, "
          f"{result.batches_reused} reused)", flush=True)
    return to_markdown(result.leaderboard)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shared", type=Path, default=SHARED)
    ap.add_argument("--cache", type=Path, default=ROOT / "runs" / "mnist-defenses" / "models")
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "mnist-defenses")
    ap.add_argument("--n-eval", type=int, default=500, help="evaluation images (of 5000..9999)")
    ap.add_argument("--aa-n", type=int, default=50, help="evaluation images for the sweep with AutoAttack (0: skip)")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: best on a shared machine)")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    mnist = args.shared / "data" / "mnist"
    args.cache.mkdir(parents=True, exist_ok=True)
    cards = train_models(args.cache, mnist, args.epochs)
    npz = eval_subset(args.cache, mnist, args.n_eval)
    main_cfg = write_config(CONFIGS / "mnist-defenses.yaml", npz, args.n_eval, model_entries(cards, args.shared), ATTACKS,
                            args.out / "main")
    print(run(main_cfg, args.out / "main"))
    if args.aa_n:
        aa_cfg = write_config(CONFIGS / "mnist-defenses-aa.yaml", npz, args.aa_n, model_entries(cards, args.shared),
                              [*ATTACKS, {"name": "autoattack", "seed": 0}], args.out / "aa")
        print(run(aa_cfg, args.out / "aa"))


if __name__ == "__main__":
    main()
