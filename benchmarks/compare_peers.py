"""Side-by-side robust accuracy and time: robustkit vs torchattacks, ART and foolbox (when installed).

Same model object, same images, same batches (``--batch``), same attack parameters for every library, measured
in one process on the same threads, so the robust accuracies and time ratios are comparable:

    python benchmarks/compare_peers.py --n 500 --batch 250     # needs ../shared (MNIST + advertorch LeNet5)

ART and foolbox are optional (``pip install -c constraints.txt ".[peers]"``, best in a separate venv); a
library that is not importable is shown as such. Every library's adversarial examples are re-predicted here
by the same code; a minimum-norm attack's (CW) example counts only if its L2 norm is within the eps (relative
tolerance 1e-6), robustkit's rule.

Settings (identical across libraries where the library has the parameter):

* FGSM, Linf eps 0.3.
* PGD-40, Linf eps 0.3, step 0.01, one random start.
* CW-L2, counted within L2 eps ``--cw-eps`` (2.0): 5 binary-search steps of 100 optimisation steps, initial
  constant 1.0, learning rate 0.1, kappa 0 (the test suite's fast CW; the reference 9 x 10000 at lr 0.01 is
  far too slow for a CPU benchmark of four libraries). torchattacks' CW has no binary search: it runs one
  constant (c = 1.0) for 100 steps. ART's CW optimises with its own line search, not Adam.
* AutoAttack standard, Linf eps 0.3. robustkit: the reference ensemble (APGD-CE, APGD-T 9 targets, FAB-T 9
  targets, Square 5000 queries, 100 iterations). torchattacks: the same four components with the same
  parameters in its ``MultiAttack`` cascade (its own ``AutoAttack`` class runs 10 iterations, not 100). ART has
  no FAB and no targeted APGD in its ``AutoAttack`` class: APGD-CE, APGD-DLR (100 iterations, 1 start, first
  step 2 eps like the reference) and Square (5000 iterations) are run there. foolbox has no AutoAttack.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Callable

import torch

from robustkit.attacks import build_attack
from robustkit.data import load_dataset
from robustkit.threat import RTOL, ThreatModel, perturbation_norm
from robustkit.zoo import load_model

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
LINF_EPS = 0.3
CW = {"steps": 100, "binary_search_steps": 5, "initial_const": 1.0, "lr": 0.1}
Result = tuple[float, float]  # (robust accuracy %, seconds)


def robust_acc(model, x, x_adv, y, norm: str | None = None, eps: float | None = None) -> float:
    """Robust accuracy (%) from adversarial inputs: correct on x_adv, or x_adv outside the eps-ball."""
    with torch.no_grad():
        ok = model(x_adv).argmax(1) == y
    if norm is not None:
        ok |= perturbation_norm(x, x_adv, norm) > eps * (1 + RTOL)
    return 100.0 * ok.float().mean().item()


def batched(fn: Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor], x, y, batch: int
            ) -> tuple[torch.Tensor, float]:
    """Adversarial inputs for all of x, computed batch by batch; seconds of the attack calls only."""
    torch.manual_seed(0)
    out, seconds = [], 0.0
    for b, start in enumerate(range(0, len(x), batch)):
        xb, yb = x[start:start + batch], y[start:start + batch]
        t = time.perf_counter()
        adv = fn(xb, yb, b)
        seconds += time.perf_counter() - t
        out.append(torch.as_tensor(adv).detach().float())
    return torch.cat(out), seconds


# ------------------------------------------------------------------------------------------- robustkit
def run_robustkit(model, x, y, name, args) -> Result:
    specs = {
        "fgsm": ("Linf", LINF_EPS, "fgsm"),
        "pgd": ("Linf", LINF_EPS, {"name": "pgd", "steps": 40, "step_size": 0.01, "random_start": True}),
        "cw": ("L2", args.cw_eps, {"name": "cw", **CW}),
        "autoattack": ("Linf", LINF_EPS, {"name": "autoattack", "version": "standard", "seed": 0}),
    }
    norm, eps, spec = specs[name]
    attack = build_attack(spec)
    threat = ThreatModel(norm, eps)
    robust, seconds = [], 0.0
    torch.manual_seed(0)
    for b, start in enumerate(range(0, len(x), args.batch)):
        xb, yb = x[start:start + args.batch], y[start:start + args.batch]
        t = time.perf_counter()
        res = attack(model, xb, yb, threat, generator=torch.Generator().manual_seed(b))
        seconds += time.perf_counter() - t
        robust.append(~res.success)
    return 100.0 * torch.cat(robust).float().mean().item(), seconds


# ---------------------------------------------------------------------------------------- torchattacks
def run_torchattacks(model, x, y, name, args) -> Result:
    import torchattacks as ta

    if name == "fgsm":
        atk = ta.FGSM(model, eps=LINF_EPS)
    elif name == "pgd":
        atk = ta.PGD(model, eps=LINF_EPS, alpha=0.01, steps=40, random_start=True)
    elif name == "cw":
        atk = ta.CW(model, c=CW["initial_const"], kappa=0.0, steps=CW["steps"], lr=CW["lr"])
    else:
        common = dict(norm="Linf", eps=LINF_EPS, seed=0, verbose=False)
        atk = ta.MultiAttack([
            ta.APGD(model, steps=100, n_restarts=1, loss="ce", rho=0.75, **common),
            ta.APGDT(model, steps=100, n_restarts=1, rho=0.75, n_classes=10, **common),
            ta.FAB(model, steps=100, n_restarts=1, multi_targeted=True, n_classes=10, **common),
            ta.Square(model, n_queries=5000, n_restarts=1, p_init=0.8, loss="margin", resc_schedule=False,
                      **common),
        ])
    x_adv, sec = batched(lambda xb, yb, b: atk(xb, yb), x, y, args.batch)
    if name == "cw":
        return robust_acc(model, x, x_adv, y, "L2", args.cw_eps), sec
    return robust_acc(model, x, x_adv, y, "Linf", LINF_EPS), sec


# ------------------------------------------------------------------------------------------------- ART
def run_art(model, x, y, name, args) -> Result | None:
    try:
        import numpy as np
        from art.attacks.evasion import (AutoAttack, AutoProjectedGradientDescent, CarliniL2Method,
                                         FastGradientMethod, ProjectedGradientDescent, SquareAttack)
        from art.estimators.classification import PyTorchClassifier
    except Exception:
        return None
    clf = PyTorchClassifier(model=model, loss=torch.nn.CrossEntropyLoss(), input_shape=tuple(x.shape[1:]),
                            nb_classes=10, clip_values=(0.0, 1.0), device_type="cpu")
    bs = args.batch
    if name == "fgsm":
        atk = FastGradientMethod(clf, norm=np.inf, eps=LINF_EPS, batch_size=bs)
    elif name == "pgd":
        atk = ProjectedGradientDescent(clf, norm=np.inf, eps=LINF_EPS, eps_step=0.01, max_iter=40,
                                       num_random_init=1, batch_size=bs, verbose=False)
    elif name == "cw":
        atk = CarliniL2Method(clf, confidence=0.0, learning_rate=CW["lr"], binary_search_steps=CW["binary_search_steps"],
                              max_iter=CW["steps"], initial_const=CW["initial_const"], batch_size=bs, verbose=False)
    else:
        apgd = dict(norm=np.inf, eps=LINF_EPS, eps_step=2 * LINF_EPS, max_iter=100, nb_random_init=1,
                    batch_size=bs, verbose=False)
        atk = AutoAttack(clf, norm=np.inf, eps=LINF_EPS, batch_size=bs, attacks=[
            AutoProjectedGradientDescent(clf, loss_type="cross_entropy", **apgd),
            AutoProjectedGradientDescent(clf, loss_type="difference_logits_ratio", **apgd),
            SquareAttack(clf, norm=np.inf, eps=LINF_EPS, max_iter=5000, p_init=0.8, nb_restarts=1, batch_size=bs,
                         verbose=False),
        ])
    np.random.seed(0)
    torch.manual_seed(0)
    t = time.perf_counter()
    x_adv = torch.from_numpy(atk.generate(x.numpy(), y=y.numpy())).float()
    sec = time.perf_counter() - t
    if name == "cw":
        return robust_acc(model, x, x_adv, y, "L2", args.cw_eps), sec
    return robust_acc(model, x, x_adv, y, "Linf", LINF_EPS), sec


# --------------------------------------------------------------------------------------------- foolbox
def run_foolbox(model, x, y, name, args) -> Result | None:
    try:
        import foolbox as fb
    except Exception:
        return None
    fmodel = fb.PyTorchModel(model, bounds=(0, 1))
    if name == "fgsm":
        atk, eps = fb.attacks.FGSM(), LINF_EPS
    elif name == "pgd":
        atk, eps = fb.attacks.LinfPGD(abs_stepsize=0.01, steps=40, random_start=True), LINF_EPS
    elif name == "cw":
        atk, eps = fb.attacks.L2CarliniWagnerAttack(binary_search_steps=CW["binary_search_steps"], steps=CW["steps"],
                                                    stepsize=CW["lr"], confidence=0.0,
                                                    initial_const=CW["initial_const"], abort_early=True), args.cw_eps
    else:
        return None
    # the raw (unclipped) examples: a CW example counts only within eps, as in robustkit (no rescaling)
    x_adv, sec = batched(lambda xb, yb, b: atk(fmodel, xb, yb, epsilons=eps)[0], x, y, args.batch)
    if name == "cw":
        return robust_acc(model, x, x_adv, y, "L2", args.cw_eps), sec
    return robust_acc(model, x, x_adv, y, "Linf", LINF_EPS), sec


PEERS = (
    ("torchattacks", run_torchattacks),
    ("ART", run_art),
    ("foolbox", run_foolbox),
)
ATTACK_TITLES = {"fgsm": "FGSM (Linf 0.3)", "pgd": "PGD-40 (Linf 0.3)", "cw": "CW-L2 (L2 {cw_eps})",
                 "autoattack": "AutoAttack standard (Linf 0.3)"}


def versions() -> str:
    from importlib.metadata import version

    out = []
    for dist in ("robustkit", "torch", "torchattacks", "adversarial-robustness-toolbox", "foolbox"):
        try:
            out.append(f"{dist} {version(dist)}")
        except Exception:
            out.append(f"{dist} (not installed)")
    return ", ".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=500, help="first N MNIST test images")
    ap.add_argument("--batch", type=int, default=250, help="batch size, the same for every library")
    ap.add_argument("--cw-eps", type=float, default=2.0, help="L2 eps within which a CW example counts")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (the same for every library)")
    ap.add_argument("--attacks", default="fgsm,pgd,cw,autoattack")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    ds = load_dataset("mnist", root=SHARED / "data" / "mnist", n_examples=args.n)
    model = load_model({"name": "lenet5-adv", "arch": "lenet5",
                        "checkpoint": str(SHARED / "weights/advertorch/mnist_lenet5_advtrained.pt")}).eval()
    x, y = ds.x, ds.y
    with torch.no_grad():
        clean = 100.0 * (model(x).argmax(1) == y).float().mean().item()
    print(f"MNIST test images 0..{args.n - 1}, advertorch PGD-trained LeNet5 (clean accuracy {clean:.2f}%), "
          f"batch {args.batch}, CPU, {torch.get_num_threads()} torch thread(s)")
    print(versions())
    print()
    print("| attack | library | robust acc % | seconds | time vs robustkit |")
    print("|---|---|---:|---:|---:|")
    for name in args.attacks.split(","):
        title = ATTACK_TITLES[name].format(cw_eps=args.cw_eps)
        ours = run_robustkit(model, x, y, name, args)
        print(f"| {title} | robustkit | {ours[0]:.2f} | {ours[1]:.1f} | 1.00x |", flush=True)
        for label, fn in PEERS:  # each row is printed as soon as it is measured
            try:
                out = fn(model, x, y, name, args)
            except Exception as exc:  # a peer's failure is reported, not fatal to the comparison
                print(f"| {title} | {label} | error: {type(exc).__name__}: {str(exc).splitlines()[0][:80]} | - | - |",
                      flush=True)
                continue
            if out is None:
                print(f"| {title} | {label} | - | - | - |", flush=True)
            else:
                print(f"| {title} | {label} | {out[0]:.2f} | {out[1]:.1f} | {out[1] / ours[1]:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
