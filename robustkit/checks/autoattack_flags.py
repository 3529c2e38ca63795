"""AutoAttack's sanity flags (Croce & Hein 2020, ``autoattack/checks.py``), re-implemented on robustkit's data.

* ``randomized``: repeated forward passes on the same input disagree. The engine already evaluates such a
  model with EOT gradients and majority-vote verdicts, but the number is then a property of a random
  process and needs EOT-aware attacks to be trusted.
* ``probabilities``: the outputs are probabilities (rows in [0, 1] summing to 1), not logits: a softmax
  inside the model flattens the cross-entropy and breaks the margin/DLR losses.
* ``dynamic``: a test-time-adaptive defense (declares ``dynamic = True``, changes its parameters/buffers when
  run, or answers the same input differently after seeing other inputs): static attacks are not enough.
* ``blackbox-beats-whitebox``: a score-based, decision-based or transfer attack broke samples that every
  white-box attack before it in the suite failed on -- the classic symptom of masked gradients.
"""
from __future__ import annotations

import torch

from robustkit.identity import hash_tensors
from robustkit.predict import declared_randomized

from .base import CheckContext, CheckResult

PROBE = 16            # samples probed for randomness / dynamics
PASSES = 3
PROB_ATOL = 1e-4      # |row sum - 1| tolerated for "probabilities"
BLACKBOX_KINDS = ("score-based", "decision-based", "transfer")
BLACKBOX_COMPONENTS = ("square",)  # AutoAttack's score-based component (after APGD/FAB in every version)
# the score-based parts of each ensemble attack, as they appear after "<label>:" in broken_by
ENSEMBLE_BLACKBOX = {"autoattack": BLACKBOX_COMPONENTS, "autoattack-fast": ("square", "escalated:square")}


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    return bool(torch.allclose(a, b, rtol=1e-5, atol=1e-6, equal_nan=True))


def _logits(ctx: CheckContext, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return ctx.model(x).float()


def _repeated_passes(ctx: CheckContext) -> list[torch.Tensor]:
    if "passes" not in ctx.cache:
        x, _ = ctx.head(PROBE)
        ctx.cache["passes"] = [_logits(ctx, x) for _ in range(PASSES)]
    return ctx.cache["passes"]


def check_randomized(ctx: CheckContext) -> list[CheckResult]:
    passes = _repeated_passes(ctx)
    differ = [i for i in range(1, len(passes)) if not _same(passes[0], passes[i])]
    declared = bool(declared_randomized(ctx.model))
    fired = bool(differ) or declared
    msg = ("the model's outputs differ over repeated forward passes on the same inputs"
           + (" (it declares randomized = True)" if declared else "")
           + ": robust accuracy used EOT gradients and majority votes; check that the attacks averaged enough passes"
           ) if fired else "repeated forward passes agree"
    return [CheckResult("randomized", fired, msg, details={"passes": PASSES, "samples": int(passes[0].shape[0]),
                                                           "declared": declared})]


def check_probabilities(ctx: CheckContext) -> list[CheckResult]:
    out = _repeated_passes(ctx)[0]
    in_range = bool(((out >= 0) & (out <= 1)).all())
    sums = out.sum(dim=1)
    sum_to_one = bool(((sums - 1).abs() <= PROB_ATOL).all())
    fired = in_range and sum_to_one
    msg = ("the model outputs probabilities (rows in [0, 1] that sum to 1), not logits: remove the final softmax, "
           "losses on probabilities give weak gradients") if fired else "outputs are not probability vectors"
    return [CheckResult("probabilities", fired, msg,
                        details={"min": float(out.min()), "max": float(out.max()),
                                 "max_abs_sum_minus_1": float((sums - 1).abs().max())})]


def _declares_dynamic(ctx: CheckContext) -> bool:
    return any(bool(getattr(m, "dynamic", False)) for m in ctx.model.modules())


def _state_hash(ctx: CheckContext) -> str:
    return hash_tensors([(f"p:{n}", p) for n, p in ctx.model.named_parameters()]
                        + [(f"b:{n}", b) for n, b in ctx.model.named_buffers()])


def check_dynamic(ctx: CheckContext) -> list[CheckResult]:
    before = _state_hash(ctx)
    x, _ = ctx.head(2 * PROBE)
    a, b = x[:PROBE], x[PROBE:]
    first = _logits(ctx, a)
    again = _logits(ctx, a)
    if len(b):
        _logits(ctx, b)
    later = _logits(ctx, a)
    state_changed = _state_hash(ctx) != before
    # only meaningful for a model whose back-to-back passes agree (else it is randomness, not history)
    history = _same(first, again) and not _same(first, later)
    declared = _declares_dynamic(ctx)
    fired = declared or state_changed or history
    reasons = [r for r, on in (("it declares dynamic = True", declared),
                               ("its parameters/buffers change when it runs", state_changed),
                               ("the same input is answered differently after other inputs", history)) if on]
    msg = (f"test-time adaptive (dynamic) defense: {'; '.join(reasons)}; evaluate it with adaptive attacks that "
           f"account for its state") if fired else "no parameter/buffer or output changes across calls"
    return [CheckResult("dynamic", fired, msg, details={"declared": declared, "state_changed": state_changed,
                                                        "history_dependent": history})]


def check_blackbox_beats_whitebox(ctx: CheckContext) -> list[CheckResult]:
    """From the stored per-sample results: a black-box attack broke a sample after the white-box ones failed."""
    kinds = [a.kind for a in ctx.attacks]
    late_blackbox = [a.label for j, a in enumerate(ctx.attacks)
                     if a.kind in BLACKBOX_KINDS and "white-box" in kinds[:j]]
    # An ensemble attack (AutoAttack) runs its score-based component (Square) after its gradient ones; the
    # engine stores the breaking component as "<label>:<component>".
    late_blackbox += [f"{a.label}:{c}" for a in ctx.attacks for c in ENSEMBLE_BLACKBOX.get(a.name, ())]
    if not late_blackbox:
        return [CheckResult("blackbox-beats-whitebox", False, "no score-based/transfer attack after a white-box "
                            "attack in the suite", applicable=False)]
    results = []
    for eps in ctx.eps:
        rows = ctx.per_sample[(ctx.per_sample["eps"] == eps) & (ctx.per_sample["broken_at_eps"] == eps)]
        hits = rows[rows["broken_by"].isin(late_blackbox)]
        n = int(len(hits))
        msg = (f"{n} sample(s) survived every white-box attack but fell to {', '.join(sorted(set(hits['broken_by'])))}: "
               f"the white-box attacks are failing (masked gradients?); use BPDA/EOT or a margin loss"
               if n else "no sample was broken only by a black-box attack")
        results.append(CheckResult("blackbox-beats-whitebox", n > 0, msg, eps=eps,
                                   details={"samples": n, "black_box_attacks": late_blackbox}))
    return results
