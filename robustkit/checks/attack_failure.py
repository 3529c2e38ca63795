"""Indicators of attack failure (Pintor, Demetrio, Sotgiu, Melis, Demontis & Biggio, NeurIPS 2022).

Each indicator asks whether the *attack* did its job, not whether the model is robust:

* ``zero-grad`` (cheap): the input gradient of the cross-entropy is exactly zero on many correctly
  classified samples (AutoAttack's zero-gradient check and Pintor's "unavailable gradients"): gradient attacks
  cannot move, so their failure says nothing.
* ``nan-grad`` (cheap): the gradient is NaN/inf, or the model is not differentiable at all.
* ``unconstrained-failure`` (full): the suite's iterative attack, from the clean point with an unbounded
  budget (Linf eps = 1), must reach ~0% accuracy; if it does not, the attack is broken for this model.
* ``silent-success`` (full): some iterate fooled the model but the returned point does not (attacks that
  report ``ever_succeeded`` in their info, as native PGD does).
* ``incomplete-optimization`` (full): the attack's loss was still rising over its last steps.
* ``transfer-failure`` (full): a transfer attack fools its surrogates but its examples do not transfer.
"""
from __future__ import annotations

import math

import pandas as pd
import torch
import torch.nn.functional as F

from robustkit.attacks import Attack, AttackResult, build_attack
from robustkit.attacks.bpda import NonDifferentiableModelError
from robustkit.errors import RobustkitError
from robustkit.threat import ThreatModel

from .base import FULL_SUBSET, CheckContext, CheckResult

GRAD_SAMPLES = 64
ZERO_GRAD_FRACTION = 0.10        # flag when >= 10% of the probed samples have an all-zero gradient
UNCONSTRAINED_MAX_ACC = 0.01     # an unbounded attack must leave <= 1% accuracy
INCOMPLETE_RISE = 0.05           # relative rise of the mean loss over the last 5 evaluations
TRANSFER_MIN_SURROGATE = 5       # surrogate successes needed before judging transfer
TRANSFER_MIN_RATE = 0.5          # fraction of surrogate successes that must fool the target


# ------------------------------------------------------------------------------------------ shared runs
def iterative_attack(ctx: CheckContext) -> Attack | None:
    """The suite's strongest iterative white-box attack: the last white-box attack that has ``steps``."""
    found = [a for a in ctx.attacks if a.kind == "white-box" and "steps" in a.params]
    return found[-1] if found else None


def rebuild(attack: Attack, **changes: object) -> Attack:
    """The same attack with some parameters changed (only those it has)."""
    params = {k: v for k, v in attack.params.items() if v is not None or k in changes}
    params.update({k: v for k, v in changes.items() if k in attack.params})
    return build_attack({"name": attack.name, **params})


def run_alone(ctx: CheckContext, attack: Attack, eps: float, purpose: str) -> AttackResult:
    """``attack`` alone (not in a cascade) on the clean-correct check subset at ``eps``; cached per purpose."""
    key = ("run", purpose, eps)
    if key not in ctx.cache:
        x, y = ctx.clean_correct_subset(FULL_SUBSET)
        ctx.cache[key] = attack(ctx.model, x, y, ThreatModel(ctx.norm, eps),
                                generator=ctx.generator(f"{purpose}@{eps!r}"))
    return ctx.cache[key]


def attacked_rows(ctx: CheckContext, eps: float) -> pd.DataFrame:
    """Stored rows at ``eps`` of the check subset (first clean-correct samples) that the suite attacked there."""
    idx = set(ctx.subset_indices(FULL_SUBSET).tolist())
    rows = ctx.per_sample[(ctx.per_sample["eps"] == eps) & ctx.per_sample["index"].isin(idx)]
    return rows[rows["attacked"] == 1]


def run_on(ctx: CheckContext, attack: Attack, eps: float, purpose: str, indices: list[int]) -> AttackResult | None:
    """``attack`` alone on the dataset samples ``indices`` at ``eps`` (None if there are none); cached."""
    key = ("run-on", purpose, eps)
    if key not in ctx.cache:
        if not indices:
            ctx.cache[key] = None
        else:
            idx = torch.as_tensor(indices, dtype=torch.long)
            x, y = ctx.x[idx].to(ctx.device), ctx.y[idx].to(ctx.device)
            ctx.cache[key] = attack(ctx.model, x, y, ThreatModel(ctx.norm, eps),
                                    generator=ctx.generator(f"{purpose}@{eps!r}"))
    return ctx.cache[key]


def surviving(ctx: CheckContext, eps: float) -> list[int]:
    """Indices of the check subset still robust after the whole suite at ``eps`` (where a re-run can matter)."""
    rows = attacked_rows(ctx, eps)
    return rows.loc[rows["robust"] == 1, "index"].astype(int).tolist()


# ------------------------------------------------------------------------------------------- gradients
def _gradients(ctx: CheckContext) -> torch.Tensor | None:
    """Per-sample CE input gradients on up to 64 clean-correct samples; None if the model is not differentiable."""
    if "grads" not in ctx.cache:
        x, y = ctx.clean_correct_subset(GRAD_SAMPLES)
        xr = x.detach().clone().requires_grad_(True)
        grad = None
        with torch.enable_grad():
            try:
                loss = F.cross_entropy(ctx.model(xr).float(), y, reduction="sum")
                if loss.requires_grad:
                    (grad,) = torch.autograd.grad(loss, xr, allow_unused=True)
            except NonDifferentiableModelError:
                grad = None
        ctx.cache["grads"] = None if grad is None else grad.detach().flatten(1)
    return ctx.cache["grads"]


def check_zero_grad(ctx: CheckContext) -> list[CheckResult]:
    grads = _gradients(ctx)
    if grads is None or grads.shape[0] == 0:
        return [CheckResult("zero-grad", False, "no gradient to inspect", applicable=False)]
    zero = (grads == 0).all(dim=1)
    frac = float(zero.float().mean())
    fired = frac >= ZERO_GRAD_FRACTION
    msg = (f"the cross-entropy input gradient is exactly zero on {int(zero.sum())}/{len(zero)} correctly classified "
           f"samples: gradient attacks cannot move there (masked gradients, e.g. saturated softmax or a "
           f"non-differentiable preprocessing); use a margin/logit loss, BPDA, or a gradient-free attack"
           if fired else f"zero gradient on {int(zero.sum())}/{len(zero)} samples")
    return [CheckResult("zero-grad", fired, msg, details={"zero": int(zero.sum()), "probed": len(zero)})]


def check_nan_grad(ctx: CheckContext) -> list[CheckResult]:
    grads = _gradients(ctx)
    if grads is None:
        return [CheckResult("nan-grad", True, "the model's output does not depend on its input through autograd "
                            "(non-differentiable step): gradient attacks cannot run; use BPDA")]
    bad = (~torch.isfinite(grads)).any(dim=1)
    n = int(bad.sum())
    msg = (f"NaN/inf input gradients on {n}/{len(bad)} samples: gradient attacks are meaningless there"
           if n else "all gradients are finite")
    return [CheckResult("nan-grad", n > 0, msg, details={"non_finite": n, "probed": len(bad)})]


# ---------------------------------------------------------------------------------------- re-run checks
def unconstrained_eps(norm: str, x: torch.Tensor) -> float:
    """A budget that contains the whole image cube: 1 (Linf), sqrt(d) (L2), d (L1)."""
    d = int(x[0].numel()) if x.shape[0] else 1
    return {"Linf": 1.0, "L2": math.sqrt(d), "L1": float(d)}[norm]


def check_unconstrained(ctx: CheckContext) -> list[CheckResult]:
    base = iterative_attack(ctx) or build_attack("pgd")
    if ctx.norm not in base.norms:
        return [CheckResult("unconstrained-failure", False, f"{base.label} does not support {ctx.norm}",
                            applicable=False)]
    # From the clean point: a random start inside an unbounded ball is a random image, which "succeeds" by luck.
    # An absolute step size tuned for the sweep's eps (e.g. 40 x 0.01) cannot cross the unbounded ball and
    # would flag a sound attack, so the steps scale with the unbounded eps instead (the attack's own
    # 2.5 * eps / steps rule, or its rel_step_size).
    attack = rebuild(base, random_start=False, restarts=1, step_size=None)
    x, _ = ctx.clean_correct_subset(FULL_SUBSET)
    if x.shape[0] == 0:
        return [CheckResult("unconstrained-failure", False, "no correctly classified sample", applicable=False)]
    eps = unconstrained_eps(ctx.norm, x)
    res = run_alone(ctx, attack, eps, "unconstrained")
    acc = 1.0 - float(res.success.float().mean())
    fired = acc > UNCONSTRAINED_MAX_ACC
    msg = (f"{base.label} with an unbounded budget ({ctx.norm} eps={eps:g}) from the clean point still leaves "
           f"{acc:.0%} accuracy on {x.shape[0]} samples (should be ~0%): the attack is not working on this model"
           if fired else f"unbounded {base.label} reaches {acc:.0%} accuracy")
    return [CheckResult("unconstrained-failure", fired, msg, details={"accuracy": acc, "samples": int(x.shape[0]),
                                                                      "eps": eps, "attack": attack.config()})]


def check_silent_success(ctx: CheckContext) -> list[CheckResult]:
    attack = iterative_attack(ctx)
    if attack is None:
        return [CheckResult("silent-success", False, "no iterative attack in the suite", applicable=False)]
    out = []
    for eps in ctx.eps:
        res = run_on(ctx, attack, eps, "iterative", surviving(ctx, eps))
        if res is None:
            out.append(CheckResult("silent-success", False, "no sample survived the suite", eps=eps,
                                   applicable=False))
            continue
        ever = res.info.get("ever_succeeded")
        if ever is None:
            out.append(CheckResult("silent-success", False, f"{attack.label} does not report its iterates",
                                   eps=eps, applicable=False))
            continue
        silent = ever.bool() & ~res.success.cpu().bool()
        n = int(silent.sum())
        msg = (f"{attack.label} fooled the model at some step on {n} sample(s) but returned a point that does not "
               f"(checked by re-prediction): return the best iterate" if n else "no silent success")
        out.append(CheckResult("silent-success", n > 0, msg, eps=eps, details={"samples": n}))
    return out


def check_incomplete_optimization(ctx: CheckContext) -> list[CheckResult]:
    attack = iterative_attack(ctx)
    if attack is None:
        return [CheckResult("incomplete-optimization", False, "no iterative attack in the suite", applicable=False)]
    out = []
    for eps in ctx.eps:
        res = run_on(ctx, attack, eps, "iterative", surviving(ctx, eps))
        tail = None if res is None else res.info.get("loss_tail")
        if not tail or len(tail) < 2 or not all(math.isfinite(v) for v in tail):
            out.append(CheckResult("incomplete-optimization", False, "no loss trace (every sample broken, or the "
                                   "attack does not report one)", eps=eps, applicable=False))
            continue
        rise = (tail[-1] - tail[0]) / max(abs(tail[0]), 1e-8)
        fired = rise > INCOMPLETE_RISE
        msg = (f"{attack.label}'s mean loss on the unbroken samples still rose by {rise:.0%} over its last "
               f"{len(tail)} evaluations: run more steps" if fired else f"loss flat at the end ({rise:+.1%})")
        out.append(CheckResult("incomplete-optimization", fired, msg, eps=eps,
                               details={"loss_tail": [round(v, 6) for v in tail], "relative_rise": rise}))
    return out


def check_transfer_failure(ctx: CheckContext) -> list[CheckResult]:
    # A transfer-grid attack is a threat model (PubDef: the attacker only has these public models), not a
    # stand-in for white-box attacks, so its failure to transfer is the number being measured, not a flaw.
    transfers = [a for a in ctx.attacks if a.kind == "transfer" and not getattr(a, "full_grid", False)]
    if not transfers:
        return [CheckResult("transfer-failure", False, "no transfer attack in the suite (transfer-grid is a threat "
                            "model of its own and is not judged)", applicable=False)]
    out = []
    for eps in ctx.eps:
        surrogate = fooled = 0
        for attack in transfers:
            try:
                res = run_alone(ctx, attack, eps, f"transfer:{attack.label}")
            except RobustkitError:
                continue
            for pair in res.info.get("pairs", []):
                surrogate += int(pair.get("surrogate_success", 0))
                fooled += int(pair.get("target_fooled", 0))
        if surrogate < TRANSFER_MIN_SURROGATE:
            out.append(CheckResult("transfer-failure", False, "too few surrogate successes to judge transfer",
                                   eps=eps, applicable=False))
            continue
        rate = fooled / surrogate
        fired = rate < TRANSFER_MIN_RATE
        msg = (f"transfer examples fooled the surrogates {surrogate} times but the model only {fooled} times "
               f"({rate:.0%}): the transfer attack's failure is no evidence of robustness; use closer surrogates or "
               f"white-box attacks" if fired else f"{rate:.0%} of surrogate successes transfer")
        out.append(CheckResult("transfer-failure", fired, msg, eps=eps,
                               details={"surrogate_success": surrogate, "target_fooled": fooled}))
    return out
