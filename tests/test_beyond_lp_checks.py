"""The checks of the corruption / patch / universal sections: which apply, the level check, the row flags."""
import numpy as np

from robustkit.checks import CheckResult, row_flags
from robustkit.checks.levels import check_level_monotone
from robustkit.engine.beyond_lp import ExtraJob
from robustkit.engine.beyond_lp_checks import section_row_flags


def _verdicts(right: int, n: int = 100) -> np.ndarray:
    return np.arange(n) < right


def test_level_check_fires_only_on_a_significant_rise():
    # 40% at severity 1, then 70% at severity 3: the 30 extra images are all discordant one way (p ~ 2e-9)
    fired = check_level_monotone("severity-nonmonotone", [(1, _verdicts(40)), (3, _verdicts(70))], comparisons=30,
                                 details={"threat_model": "corruption"}, where="corruption fog severity")
    assert [r.fired for r in fired] == [True] and fired[0].eps == 3 and "p = " in fired[0].message
    # a rise of 3 images is sampling noise (p = 0.25): no flag
    noise = check_level_monotone("severity-nonmonotone", [(1, _verdicts(40)), (3, _verdicts(43))], comparisons=1,
                                 details={}, where="w")
    assert [r.fired for r in noise] == [False]
    # 6 of 6 discordant images: p = 0.031 < 0.05 alone, but not after Bonferroni over 45 comparisons
    assert check_level_monotone("x", [(1, _verdicts(40)), (2, _verdicts(46))], comparisons=1, details={},
                                where="w")[0].fired
    assert not check_level_monotone("x", [(1, _verdicts(40)), (2, _verdicts(46))], comparisons=45, details={},
                                    where="w")[0].fired
    # falling accuracy never fires; one level is not applicable
    assert not check_level_monotone("x", [(1, _verdicts(90)), (5, _verdicts(10))], comparisons=1, details={},
                                    where="w")[0].fired
    assert not check_level_monotone("x", [(1, _verdicts(9))], comparisons=0, details={}, where="w")[0].applicable


def _job(kind: str, level, spec_index: int = 0) -> ExtraJob:
    return ExtraJob(f"{kind}-{level}", {"spec_key": "random" if kind == "patch" else "Linf"}, "m", spec_index, kind,
                    level, 0)


def test_section_rows_get_the_model_checks_that_apply_and_their_own_level_check():
    results = [
        CheckResult("probabilities", True, "softmax"),
        CheckResult("randomized", True, "random"),
        CheckResult("blackbox-beats-whitebox", True, "Lp only", eps=0.01),
        CheckResult("severity-nonmonotone", True, "rise", eps=5.0,
                    details={"threat_model": "corruption", "section": 0, "group": "fog"}),
        CheckResult("area-nonmonotone", True, "rise", eps=0.1,
                    details={"threat_model": "patch", "section": 1, "group": ""}),
        CheckResult("zero-grad", False, "fine"),
    ]
    assert section_row_flags(results, _job("corruption", ("fog", 5))) == "randomized;severity-nonmonotone"
    assert section_row_flags(results, _job("corruption", ("fog", 3))) == "randomized"
    assert section_row_flags(results, _job("corruption", ("snow", 5))) == "randomized"
    assert section_row_flags(results, _job("patch", 0.1, 1)) == "probabilities;randomized;area-nonmonotone"
    assert section_row_flags(results, _job("patch", 0.05, 1)) == "probabilities;randomized"
    assert section_row_flags(results, _job("universal", 8 / 255, 2)) == "probabilities;randomized"


def test_lp_rows_ignore_the_section_checks():
    results = [CheckResult("area-nonmonotone", True, "rise", eps=0.1, details={"threat_model": "patch"}),
               CheckResult("randomized", True, "random")]
    assert row_flags(results, 0.1) == "randomized"
