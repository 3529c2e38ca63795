"""Side-by-side robust accuracy and time: robustkit vs torchattacks (and ART / foolbox when installed).

Same model, same images, same batch, same budget, measured in one run, so the ratios are comparable:

    python benchmarks/compare_peers.py --n 500                  # needs ../shared (MNIST + advertorch LeNet5)
    pip install -c constraints.txt ".[peers]"                   # adds ART and foolbox to the comparison

Attacks: FGSM (Linf 0.3), PGD-40 (Linf 0.3, step 0.01, random start), CW-L2 (counted within L2 eps 2.0),
AutoAttack standard (Linf 0.3). robustkit numbers come from calling each attack plugin directly (re-predicted
and budget-checked by the base class). torchattacks' own ``AutoAttack`` class runs 10 APGD/FAB steps, not the
reference 100: it is shown under that name for the speed/strength comparison only.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from robustkit.attacks import build_attack
from robustkit.data import load_dataset
from robustkit.threat import ThreatModel, perturbation_norm
from robustkit.zoo import load_model

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


def _acc(model, x_adv, y, x=None, norm=None, eps=None) -> float:
    with torch.no_grad():
        ok = model(x_adv).argmax(1) == y
    if norm is not None:  # an example outside the budget does not count as broken
        ok |= perturbation_norm(x, x_adv, norm) > eps * (1 + 1e-6)
    return 100.0 * ok.float().mean().item()


def _timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def run_robustkit(model, x, y, spec, norm, eps):
    attack = build_attack(spec)
    gen = torch.Generator().manual_seed(0)
    res, sec = _timed(lambda: attack(model, x, y, ThreatModel(norm, eps), generator=gen))
    return 100.0 * (~res.success).float().mean().item(), sec


def run_torchattacks(model, x, y, name, eps):
    import torchattacks as ta

    make = {
        "fgsm": lambda: ta.FGSM(model, eps=eps),
        "pgd": lambda: ta.PGD(model, eps=eps, alpha=0.01, steps=40, random_start=True),
        "cw": lambda: ta.CW(model, c=1.0, kappa=0.0, steps=1000, lr=0.01),
        "autoattack": lambda: ta.AutoAttack(model, norm="Linf", eps=eps, version="standard", n_classes=10, seed=0),
    }[name]
    atk = make()
    torch.manual_seed(0)
    x_adv, sec = _timed(lambda: atk(x, y))
    norm = "L2" if name == "cw" else None
    return _acc(model, x_adv, y, x, norm, eps), sec


def run_art(model, x, y, name, eps):
    try:
        from art.attacks.evasion import AutoAttack, CarliniL2Method, FastGradientMethod, ProjectedGradientDescent
        from art.estimators.classification import PyTorchClassifier
    except Exception:
        return None
    clf = PyTorchClassifier(model=model, loss=torch.nn.CrossEntropyLoss(), input_shape=tuple(x.shape[1:]),
                            nb_classes=10, clip_values=(0.0, 1.0), device_type="cpu")
    make = {
        "fgsm": lambda: FastGradientMethod(clf, eps=eps, batch_size=len(x)),
        "pgd": lambda: ProjectedGradientDescent(clf, eps=eps, eps_step=0.01, max_iter=40, num_random_init=1,
                                                batch_size=len(x), verbose=False),
        "cw": lambda: CarliniL2Method(clf, confidence=0.0, max_iter=100, binary_search_steps=9,
                                      batch_size=len(x), verbose=False),
        "autoattack": lambda: AutoAttack(clf, eps=eps, batch_size=len(x)),
    }[name]
    x_adv, sec = _timed(lambda: torch.from_numpy(make().generate(x.numpy())))
    norm = "L2" if name == "cw" else None
    return _acc(model, x_adv, y, x, norm, eps), sec


def run_foolbox(model, x, y, name, eps):
    try:
        import foolbox as fb
    except Exception:
        return None
    fmodel = fb.PyTorchModel(model, bounds=(0, 1))
    make = {
        "fgsm": lambda: fb.attacks.FGSM(),
        "pgd": lambda: fb.attacks.LinfPGD(abs_stepsize=0.01, steps=40, random_start=True),
        "cw": lambda: fb.attacks.L2CarliniWagnerAttack(steps=1000, binary_search_steps=9),
    }.get(name)
    if make is None:
        return None
    (_, x_adv, _), sec = _timed(lambda: make()(fmodel, x, y, epsilons=eps))
    return _acc(model, x_adv, y), sec


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=500, help="first N MNIST test images")
    ap.add_argument("--attacks", default="fgsm,pgd,cw,autoattack")
    args = ap.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    ds = load_dataset("mnist", root=SHARED / "data" / "mnist", n_examples=args.n)
    model = load_model({"name": "lenet5-adv", "arch": "lenet5",
                        "checkpoint": str(SHARED / "weights/advertorch/mnist_lenet5_advtrained.pt")})
    x, y = ds.x, ds.y
    settings = {
        "fgsm": ("Linf", 0.3, "fgsm"),
        "pgd": ("Linf", 0.3, {"name": "pgd", "steps": 40, "step_size": 0.01, "random_start": True}),
        "cw": ("L2", 2.0, {"name": "cw", "steps": 1000, "binary_search_steps": 9}),
        "autoattack": ("Linf", 0.3, {"name": "autoattack", "version": "standard", "seed": 0}),
    }
    print(f"MNIST first {args.n}, advertorch PGD-trained LeNet5, batch = all {args.n} images, CPU threads "
          f"{torch.get_num_threads()}")
    print(f"{'attack':<11}{'library':<34}{'robust acc %':>13}{'seconds':>10}{'time vs robustkit':>19}")
    for name in args.attacks.split(","):
        norm, eps, spec = settings[name]
        ours = run_robustkit(model, x, y, spec, norm, eps)
        rows = [("robustkit", ours)]
        peer_label = {"autoattack": "torchattacks AutoAttack (10 steps)"}.get(name, "torchattacks")
        rows.append((peer_label, run_torchattacks(model, x, y, name, eps)))
        for label, fn in (("ART", run_art), ("foolbox", run_foolbox)):
            out = fn(model, x, y, name, eps)
            rows.append((label, out) if out else (f"{label} (not installed/no such attack)", None))
        for label, out in rows:
            if out is None:
                print(f"{name:<11}{label:<34}{'-':>13}{'-':>10}{'-':>19}")
            else:
                print(f"{name:<11}{label:<34}{out[0]:>13.2f}{out[1]:>10.2f}{out[1] / ours[1]:>18.2f}x")


if __name__ == "__main__":
    main()
