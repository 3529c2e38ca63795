"""Monotone levels beyond Lp balls: accuracy must not rise when a corruption's severity, a patch's area or a
universal perturbation's eps grows (docs/checks.md, "Checks per threat model").

Unlike Lp eps (nested balls: monotone by construction, so any rise is an inconsistency), these levels are
evaluated independently: each severity is a different corrupted image, each area a different patch place,
each eps a different fitted perturbation. Sampling noise can then make a stronger level a few images
"easier", so the check fires only on a rise that the paired per-image verdicts make significant: an exact
McNemar test, two-sided, at 5% with a Bonferroni correction over the comparisons of the section (so a
section of 45 corruption levels is not expected to raise a false flag by chance). A firing check means the
attack did not optimise (a bigger patch or budget should never help the model) or that the corruption's
parameters are not monotone at this image size.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from robustkit.stats import mcnemar_exact

from .base import CheckResult

ALPHA = 0.05


def check_level_monotone(name: str, levels: Sequence[tuple[float, np.ndarray]], *, comparisons: int,
                         details: dict[str, Any], where: str) -> list[CheckResult]:
    """``levels``: (level, per-image robust verdicts on the same images), weakest level first. One result per
    consecutive pair (at the stronger level); ``comparisons`` is the section's number of pairs (Bonferroni)."""
    if len(levels) < 2:
        return [CheckResult(name, False, f"{where}: a single level", applicable=False,
                            details={**details, "where": where})]
    out = []
    threshold = ALPHA / max(1, comparisons)
    for (weak, before), (strong, after) in zip(levels, levels[1:]):
        test = mcnemar_exact(after, before)
        acc_before, acc_after = float(np.mean(before)), float(np.mean(after))
        fired = acc_after > acc_before and test.p_value < threshold
        text = f"{where}: accuracy {acc_before:.1%} at {weak:g} and {acc_after:.1%} at {strong:g}"
        msg = (f"{text} (exact McNemar p = {test.p_value:.2g} < {threshold:.2g}, {test.only_a} images right only at "
               f"the stronger level vs {test.only_b}): a stronger level should not help the model; check the attack's "
               f"optimisation (or the corruption's parameters at this image size)" if fired
               else f"{text}: no significant rise")
        out.append(CheckResult(name, fired, msg, eps=float(strong),
                               details={**details, "where": where, "level": float(strong), "previous": float(weak),
                                        "p_value": test.p_value, "threshold": threshold}))
    return out
