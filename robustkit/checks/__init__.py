"""Evaluation checks: flags for failed attacks, gradient masking and untrustworthy setups (docs/checks.md).

``run_checks(ctx, mode)`` runs every registered check of ``mode`` (``cheap`` runs the cheap ones, ``full``
all of them, ``off`` none) on one model and returns their :class:`CheckResult` rows; :func:`row_flags` turns
the fired ones into the leaderboard's ``flags`` cell of one (model, eps) row. A check that raises a
:class:`robustkit.errors.RobustkitError` (e.g. an attack that cannot run on the model) is reported as not
applicable with that message instead of stopping the evaluation, whose numbers are already stored (any
other exception too, marked "check failed" in the report, since it is a bug of the check, not of the model).
"""
from __future__ import annotations

from typing import Collection, Iterable

from robustkit.errors import ConfigError, RobustkitError, did_you_mean, short_repr

from . import attack_failure, autoattack_flags, batch_dependence, checklist, levels
from .base import CHEAP, FULL, MODES, OFF, CheckContext, CheckResult, CheckSpec

CHECKS: tuple[CheckSpec, ...] = (
    CheckSpec(("randomized",), "AutoAttack", CHEAP, autoattack_flags.check_randomized),
    CheckSpec(("probabilities",), "AutoAttack", CHEAP, autoattack_flags.check_probabilities),
    CheckSpec(("dynamic",), "AutoAttack", CHEAP, autoattack_flags.check_dynamic),
    CheckSpec(("zero-grad",), "AutoAttack / Pintor et al.", CHEAP, attack_failure.check_zero_grad),
    CheckSpec(("nan-grad",), "Pintor et al.", CHEAP, attack_failure.check_nan_grad),
    CheckSpec(("blackbox-beats-whitebox",), "AutoAttack", CHEAP, autoattack_flags.check_blackbox_beats_whitebox),
    CheckSpec(("batch-dependence",), "train mode / batch", CHEAP, batch_dependence.check_batch_dependence),
    CheckSpec(("eps-nonmonotone",), "Carlini et al.", CHEAP, checklist.check_eps_monotone),
    CheckSpec(("unconstrained-failure",), "Pintor et al.", FULL, attack_failure.check_unconstrained),
    CheckSpec(("silent-success",), "Pintor et al.", FULL, attack_failure.check_silent_success),
    CheckSpec(("incomplete-optimization",), "Pintor et al.", FULL, attack_failure.check_incomplete_optimization),
    CheckSpec(("transfer-failure",), "Pintor et al.", FULL, attack_failure.check_transfer_failure),
    CheckSpec(("fgsm-beats-pgd",), "Carlini et al.", FULL, checklist.check_iterative_vs_single_step),
    CheckSpec(("more-steps-help",), "Carlini et al.", FULL, checklist.check_more_steps),
)

# the checks of the model itself (not of the Lp attacks' results): they also apply to the other threat models
MODEL_CHECKS = ("randomized", "probabilities", "dynamic", "zero-grad", "nan-grad", "batch-dependence")
# the level checks of the corruption / patch / universal sections (robustkit.checks.levels)
LEVEL_CHECKS = ("severity-nonmonotone", "area-nonmonotone", "uap-eps-nonmonotone")
FLAG_NAMES: tuple[str, ...] = tuple(f for spec in CHECKS for f in spec.flags) + LEVEL_CHECKS

__all__ = ["CHEAP", "CHECKS", "FLAG_NAMES", "FULL", "LEVEL_CHECKS", "MODEL_CHECKS", "MODES", "OFF", "CheckContext",
           "CheckResult", "check_mode", "levels", "row_flags", "run_checks"]


def check_mode(value: object, where: str = "checks") -> str:
    """Validate a ``checks`` setting: ``cheap`` (default), ``full`` or ``off`` (YAML ``false`` means off)."""
    if value is None:
        return CHEAP
    if value is False:
        return OFF
    if not isinstance(value, str) or value.strip().lower() not in MODES:
        raise ConfigError(f"{where}: expected cheap, full or off, got {short_repr(value)}"
                          f"{did_you_mean(str(value), MODES) if isinstance(value, str) else ''}")
    return value.strip().lower()


def run_checks(ctx: CheckContext, mode: str, only: Collection[str] | None = None) -> list[CheckResult]:
    """Every check of ``mode`` (already validated by :func:`check_mode`) on one model, in registry order
    (only those named in ``only`` when given)."""
    if mode not in MODES:
        raise ValueError(f"run_checks: mode must be one of {', '.join(MODES)} (see check_mode), got {mode!r}")
    if mode == OFF:
        return []
    results: list[CheckResult] = []
    for spec in CHECKS:
        if (spec.mode == FULL and mode != FULL) or (only is not None and spec.flags[0] not in only):
            continue
        try:
            results.extend(spec.run(ctx))
        except RobustkitError as exc:
            results.append(CheckResult(spec.flags[0], False, f"could not run: {exc}", applicable=False))
        except Exception as exc:  # noqa: BLE001 - a failing check must not lose hours of stored results
            results.append(CheckResult(spec.flags[0], False, f"check failed ({type(exc).__name__}: {exc}); "
                                       f"please report it", applicable=False))
    return results


def row_flags(results: Iterable[CheckResult], eps: float) -> str:
    """The ``flags`` cell of the Lp row at ``eps``: fired checks about the model or this eps, ';'-joined, in order
    (a check of another threat model's section, ``details["threat_model"]``, flags that section's rows only)."""
    names: list[str] = []
    for r in results:
        if r.details.get("threat_model"):
            continue
        if r.fired and r.applicable and (r.eps is None or r.eps == eps) and r.name not in names:
            names.append(r.name)
    return ";".join(names)
