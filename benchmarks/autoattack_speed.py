"""Official AutoAttack vs robustkit ``autoattack`` vs ``autoattack-fast``: robust accuracy, seconds, passes.

    python benchmarks/autoattack_speed.py                  # needs ../shared; all 11 models, 32 images each
    python benchmarks/autoattack_speed.py --n 16 --models mnist-lenet5-clean cifar10-resnet2b-pgd

One process, one torch thread, the same images and one batch per model for all three. "official" is the
official ``AutoAttack(...).run_standard_evaluation`` (version standard, seed 0) of the installed official
package (the git install if importable, else pyautoattack); "autoattack" and "autoattack-fast" are
robustkit's attacks called directly (seed 0). Each run is timed twice: wall seconds (``time.perf_counter``)
and the CPU seconds of this process (``time.process_time``; with one torch thread that is the work done,
nearly unaffected by other processes competing for the cores, which wall seconds are not). The goals are
judged on the CPU-time ratio. Passes are forward + backward sample-passes of the evaluated model
(:class:`robustkit.passes.PassCounter`), per image. ``verdicts≠`` counts the images whose robust/broken
verdict differs from the official one. Models and eps:

* MNIST (images 5000..5000+n of the test set): advertorch's LeNet5, standard (Linf 0.1) and PGD-trained
  (0.3); convex_adversarial's certified small ConvNet (``models_scaled/mnist_small_0_3.pth``, the first model
  of its cascade, 85.23% clean on the 10000 test images; ``kw-small``), at 0.3; and two models
  trained here with ``robustkit train`` on test images 0..4999 as in ``benchmarks/mnist_defenses.py``
  (kw-small, defensive distillation at T = 100, and the standard CNN behind a 3-bit bit-depth reduction
  without BPDA), both at 0.1.
* CIFAR-10 (the first n exact test images): ResNet-20/32/44/56 (8/255) and the PGD-trained ResNet-2B/4B
  (2/255).
"""
from __future__ import annotations

import argparse
import contextlib
import io
import time
from pathlib import Path

import numpy as np
import torch
import yaml

from robustkit.attacks import _aa_official, build_attack
from robustkit.cli import main as cli_main
from robustkit.data import load_dataset
from robustkit.defenses import build_defense
from robustkit.passes import PassCounter
from robustkit.predict import predict
from robustkit.threat import ThreatModel
from robustkit.zoo import load_model

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
C8, C2 = 8 / 255, 2 / 255
# name -> (dataset, eps)
MODELS = {
    "mnist-lenet5-clean": ("mnist", 0.1), "mnist-lenet5-pgd": ("mnist", 0.3),
    "mnist-kw-small-certified": ("mnist", 0.3),
    "mnist-cnn-distilled": ("mnist", 0.1), "mnist-cnn-bitdepth3": ("mnist", 0.1),
    "cifar10-resnet20": ("cifar10", C8), "cifar10-resnet32": ("cifar10", C8), "cifar10-resnet44": ("cifar10", C8),
    "cifar10-resnet56": ("cifar10", C8), "cifar10-resnet2b-pgd": ("cifar10", C2),
    "cifar10-resnet4b-pgd": ("cifar10", C2),
}
# robustkit train flags of the two models trained here (the same as benchmarks/mnist_defenses.py's)
TRAIN = {"cnn-standard": ["--method", "standard", "--seed", "0"],
         "cnn-distilled": ["--method", "distillation", "--temperature", "100", "--seed", "0"]}


def trained_card(name: str, cache: Path, shared: Path) -> Path:
    card = cache / f"{name}.yaml"
    if not card.is_file():
        args = ["train", "--arch", "kw-small", "--dataset", "mnist", "--root", str(shared / "data" / "mnist"),
                "--lr", "3e-3", "--n-examples", "5000", "--eval-examples", "5000", "--epochs", "10",
                "--batch-size", "64", "--name", name, "--out", str(cache), "--quiet", *TRAIN[name]]
        if cli_main(args) != 0:
            raise SystemExit(f"training {name} failed: robustkit {' '.join(args)}")
    return card


def build_model(name: str, shared: Path, cache: Path) -> torch.nn.Module:
    weights = shared / "weights"
    if name.startswith("mnist-lenet5"):
        kind = "clntrained" if name.endswith("clean") else "advtrained"
        return load_model({"name": name, "arch": "lenet5",
                           "checkpoint": str(weights / "advertorch" / f"mnist_lenet5_{kind}.pt")})
    if name == "mnist-kw-small-certified":  # a cascade of 3 models in one file; index 0 is the certified one
        path = weights / "convex_adversarial" / "models_scaled" / "mnist_small_0_3.pth"
        return load_model({"name": name, "arch": "kw-small", "checkpoint": {"path": str(path), "index": 0}})
    if name == "mnist-cnn-distilled":
        return load_model(trained_card("cnn-distilled", cache, shared))
    if name == "mnist-cnn-bitdepth3":
        base = load_model(trained_card("cnn-standard", cache, shared))
        return build_defense({"name": "bit-depth", "bits": 3, "bpda": False}, base).eval()
    return load_model(name, weights_dir=weights)


def images(dataset: str, n: int, shared: Path) -> tuple[torch.Tensor, torch.Tensor]:
    if dataset == "mnist":
        data = load_dataset("mnist", root=shared / "data" / "mnist")
        return data.x[5000:5000 + n].contiguous(), data.y[5000:5000 + n].contiguous()
    arr = np.load(shared / "data" / "cifar10" / "cifar10_test_first100_exact.npz")
    x = torch.from_numpy(arr["x"][:n]).permute(0, 3, 1, 2).float().div(255).contiguous()
    return x, torch.from_numpy(arr["y"][:n]).long()


def run_official(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
    """The official orchestration, unchanged; returns the adversarial batch."""
    pkg = _aa_official.require_official()
    module = __import__(pkg.distribution, fromlist=["AutoAttack"])
    with contextlib.redirect_stdout(io.StringIO()):
        if pkg.distribution == "autoattack":  # the git install's signature
            adversary = module.AutoAttack(model, norm="Linf", eps=eps, seed=0, version="standard", device="cpu",
                                          verbose=False)
            return adversary.run_standard_evaluation(x, y, bs=x.shape[0])
        adversary = module.AutoAttack(model, norm="Linf", eps=eps, seed=0, version="standard", device="cpu")
        return adversary.run_standard_evaluation(x, y, batch_size=x.shape[0])[0]  # (x_adv, y_adv)


def measure(fn, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor
            ) -> tuple[torch.Tensor, float, float, float]:
    """(robust flags, wall seconds, CPU seconds of this process, passes per image) of one attack run."""
    with PassCounter(model) as counter:
        t0, c0 = time.perf_counter(), time.process_time()
        x_adv = fn()
        seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    robust = predict(model, x_adv) == y
    return robust, seconds, cpu, counter.total / x.shape[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=32, help="images per model (one batch)")
    ap.add_argument("--models", nargs="*", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--shared", type=Path, default=SHARED)
    ap.add_argument("--cache", type=Path, default=ROOT / "runs" / "mnist-defenses" / "models",
                    help="where the trained MNIST cards are (or are trained into)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    pkg = _aa_official.require_official()
    print(f"official: {pkg.label}; n = {args.n} images per model; 1 torch thread\n")
    header = ("| model | eps | n | official acc % | s | cpu s | passes | autoattack acc % | s | cpu s | passes | "
              "verdicts≠ | time × | cpu × | passes × | fast acc % | s | cpu s | passes | escalated | time × | cpu × | "
              "passes × |")
    print(header)
    print("|" + "|".join(["---"] * (header.count("|") - 1)) + "|", flush=True)
    totals = np.zeros(9)  # wall, cpu, passes x (official, autoattack, fast); passes summed over images
    for name in args.models:
        dataset, eps = MODELS[name]
        model = build_model(name, args.shared, args.cache)
        x, y = images(dataset, args.n, args.shared)
        threat = ThreatModel("Linf", eps)
        off = measure(lambda: run_official(model, x, y, eps), model, x, y)
        aa = build_attack({"name": "autoattack", "seed": 0})
        std = measure(lambda: aa(model, x, y, threat).x_adv, model, x, y)
        fast_attack = build_attack({"name": "autoattack-fast", "seed": 0})
        fast_info: dict = {}

        def fast_run() -> torch.Tensor:
            res = fast_attack(model, x, y, threat)
            fast_info.update(res.info)
            return res.x_adv

        fast = measure(fast_run, model, x, y)
        n = x.shape[0]
        totals += [off[1], off[2], off[3] * n, std[1], std[2], std[3] * n, fast[1], fast[2], fast[3] * n]
        acc = lambda r: 100.0 * float(r[0].float().mean())  # noqa: E731
        cols = lambda r: f"{r[1]:.1f} | {r[2]:.1f} | {r[3]:.0f}"  # noqa: E731
        ratios = lambda r: f"{r[1] / off[1]:.2f} | {r[2] / off[2]:.2f} | {r[3] / off[3]:.2f}"  # noqa: E731
        eps_s = f"{round(eps * 255)}/255" if dataset == "cifar10" else f"{eps:g}"
        print(f"| {name} | {eps_s} | {n} | {acc(off):.1f} | {cols(off)} | {acc(std):.1f} | {cols(std)} | "
              f"{int((std[0] != off[0]).sum())} | {ratios(std)} | {acc(fast):.1f} | {cols(fast)} | "
              f"{fast_info['escalated']['samples']} | {ratios(fast)} |", flush=True)
    o, s, f = totals[:3], totals[3:6], totals[6:]
    sums = lambda t: f"{t[0]:.1f} | {t[1]:.1f} | {t[2]:.0f}"  # noqa: E731
    ratio = lambda t: " | ".join(f"{t[k] / o[k]:.2f}" for k in range(3))  # noqa: E731
    print(f"| **total** | | | | {sums(o)} | | {sums(s)} | | {ratio(s)} | | {sums(f)} | | {ratio(f)} |")
    print("\ns: wall seconds; cpu s: CPU seconds of this process; passes: forward + backward sample-passes per "
          "image (total row: summed over all images); time ×, cpu ×, passes ×: ratio to official")


if __name__ == "__main__":
    main()
