"""Checks from the evaluation checklist of Carlini, Athalye, Papernot, Brendel, Rauber, Tsipras, Goodfellow,
Madry & Kurakin, "On Evaluating Adversarial Robustness" (2019).

* ``eps-nonmonotone`` (cheap): robust accuracy must not increase with eps. The engine's nested-ball
  accounting makes this hold by construction, so a firing check means the stored results are inconsistent.
* ``fgsm-beats-pgd`` (full): the iterative attack alone must be at least as strong as FGSM alone at the same
  eps; when single-step wins, the iterative attack is misconfigured or the loss surface is masked.
* ``more-steps-help`` (full): re-running the iterative attack with twice the steps and twice the restarts
  must barely change the result; when it drops accuracy by more than 2 points the reported number has not
  converged.
"""
from __future__ import annotations

from robustkit.attacks import Attack, build_attack

from .attack_failure import attacked_rows, iterative_attack, rebuild, run_on, surviving
from .base import CheckContext, CheckResult

TOLERANCE_POINTS = 2.0   # percentage points on the check subset


def check_eps_monotone(ctx: CheckContext) -> list[CheckResult]:
    if len(ctx.eps) < 2:
        return [CheckResult("eps-nonmonotone", False, "a single eps", applicable=False)]
    acc = [float(ctx.per_sample.loc[ctx.per_sample["eps"] == e, "robust"].mean()) for e in ctx.eps]
    out = []
    for prev_eps, prev, eps, cur in zip(ctx.eps, acc, ctx.eps[1:], acc[1:]):
        fired = cur > prev
        msg = (f"robust accuracy rises from {prev:.2%} at eps {prev_eps:g} to {cur:.2%} at eps {eps:g}: the stored "
               f"results are inconsistent (mixed runs?); re-run with --fresh" if fired else "non-increasing in eps")
        out.append(CheckResult("eps-nonmonotone", fired, msg, eps=eps, details={"previous": prev, "current": cur}))
    return out


def single_step_attack(ctx: CheckContext, iterative: Attack) -> Attack:
    """The suite's FGSM, else a default FGSM with the iterative attack's loss."""
    for a in ctx.attacks:
        if a.name == "fgsm":
            return a
    loss = iterative.params.get("loss")
    return build_attack({"name": "fgsm", **({"loss": loss} if isinstance(loss, str) else {})})


def check_iterative_vs_single_step(ctx: CheckContext) -> list[CheckResult]:
    """On the attacked samples of the check subset: FGSM alone (re-run, one step) vs the iterative attack alone.

    The iterative attack alone is known from the stored cascade where it can be: a sample robust after the
    suite survived it, a sample it broke is broken; only samples broken by *other* attacks are re-attacked.
    """
    iterative = iterative_attack(ctx)
    if iterative is None:
        return [CheckResult("fgsm-beats-pgd", False, "no iterative attack in the suite", applicable=False)]
    single = single_step_attack(ctx, iterative)
    if ctx.norm not in single.norms:
        return [CheckResult("fgsm-beats-pgd", False, f"fgsm does not support {ctx.norm}", applicable=False)]
    out = []
    for eps in ctx.eps:
        rows = attacked_rows(ctx, eps)
        n = len(rows)
        if n == 0:
            out.append(CheckResult("fgsm-beats-pgd", False, "no sample attacked at this eps", eps=eps,
                                   applicable=False))
            continue
        single_res = run_on(ctx, single, eps, "single-step", rows["index"].astype(int).tolist())
        assert single_res is not None
        single_robust = int((~single_res.success.cpu().bool()).sum())
        breaker = rows["broken_by"].fillna("").astype(str).str.split(":").str[0]  # "<label>:<component>" -> label
        others = rows[(rows["robust"] == 0) & (breaker != iterative.label)]
        rerun = run_on(ctx, iterative, eps, "iterative-on-others", others["index"].astype(int).tolist())
        it_robust = int((rows["robust"] == 1).sum())
        if rerun is not None:
            it_robust += int((~rerun.success.cpu().bool()).sum())
        acc_it, acc_single = 100.0 * it_robust / n, 100.0 * single_robust / n
        fired = acc_it > acc_single + TOLERANCE_POINTS
        msg = (f"{iterative.label} alone leaves {acc_it:.1f}% but {single.label} alone {acc_single:.1f}% of {n} samples: "
               f"the iterative attack is weaker than one step (step size, loss or masked gradients)"
               if fired else f"{iterative.label} {acc_it:.1f}% <= {single.label} {acc_single:.1f}% (+{TOLERANCE_POINTS:g})")
        out.append(CheckResult("fgsm-beats-pgd", fired, msg, eps=eps,
                               details={"iterative": acc_it, "single_step": acc_single, "samples": n}))
    return out


def check_more_steps(ctx: CheckContext) -> list[CheckResult]:
    """The iterative attack with 2x steps and 2x restarts on the samples that survived the suite."""
    iterative = iterative_attack(ctx)
    if iterative is None:
        return [CheckResult("more-steps-help", False, "no iterative attack in the suite", applicable=False)]
    steps = int(iterative.params["steps"])
    changes: dict[str, object] = {"steps": 2 * steps}
    restarts = iterative.params.get("restarts")
    if isinstance(restarts, int) and iterative.params.get("random_start", True):
        changes["restarts"] = 2 * restarts
    stronger = rebuild(iterative, **changes)
    what = ", ".join(f"{k}={v}" for k, v in changes.items())
    out = []
    for eps in ctx.eps:
        n = len(attacked_rows(ctx, eps))
        res = run_on(ctx, stronger, eps, "iterative-2x", surviving(ctx, eps))
        if n == 0 or res is None:
            out.append(CheckResult("more-steps-help", False, "no sample survived the suite", eps=eps,
                                   applicable=False))
            continue
        broken = int(res.success.sum())
        drop = 100.0 * broken / n
        fired = drop > TOLERANCE_POINTS
        msg = (f"{iterative.label} with {what} breaks {broken} more of {n} samples (-{drop:.1f} points): the reported "
               f"number has not converged; use more steps/restarts" if fired
               else f"{what}: {broken} more of {n} samples broken (-{drop:.1f} points)")
        out.append(CheckResult("more-steps-help", fired, msg, eps=eps,
                               details={"broken": broken, "samples": n, "drop_points": drop, "changes": changes}))
    return out
