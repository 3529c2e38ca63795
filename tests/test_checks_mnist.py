"""The evaluation checks on real MNIST models: masked gradients are flagged, honest models are not.

* defensive distillation at T = 100 (kw-small, trained on the first 5000 test images as in
  tests/test_defenses_distillation.py, with fewer epochs): its cross-entropy gradient underflows to zero;
* bit-depth reduction in front of the clean LeNet5 WITHOUT BPDA: the rounding has a zero gradient;
* the standard (``lenet5_clean``) and PGD-trained (``lenet5_adv``) LeNet5: no flag, cheap or full.

One sweep of the four models (50 held-out images, fgsm + pgd-40 with cross-entropy, Linf 0.3) runs
with ``checks="full"``, then again in the same folder with ``checks="cheap"`` (every batch reused).
"""
from __future__ import annotations

import pandas as pd
import pytest

import robustkit
from robustkit.defenses import DefensiveDistillation, build_defense

ATTACKS = ["fgsm", {"name": "pgd", "steps": 40}]
EPS = [0.3]


@pytest.fixture(scope="module")
def distilled(mnist_test):
    from robustkit.zoo import build_arch

    defense = DefensiveDistillation(build_arch("kw-small"), temperature=100.0)
    return defense.fit(mnist_test.x[:5000], mnist_test.y[:5000], epochs=4, batch_size=64, lr=3e-3, seed=0).eval()


@pytest.fixture(scope="module")
def runs(distilled, lenet5_clean, lenet5_adv, mnist_test, tmp_path_factory):
    bit_depth = build_defense({"name": "bit-depth", "bits": 3, "bpda": False}, lenet5_clean).eval()
    models = {"distilled": distilled, "bit-depth-no-bpda": bit_depth, "lenet5-clean": lenet5_clean,
              "lenet5-adv": lenet5_adv}
    data = (mnist_test.x[5000:5050], mnist_test.y[5000:5050])
    out = tmp_path_factory.mktemp("checks-mnist")
    full = robustkit.evaluate(models, dataset=data, attacks=ATTACKS, eps=EPS, out=out, checks="full", seed=0)
    full_report = (out / "report.md").read_text()
    cheap = robustkit.evaluate(models, dataset=data, attacks=ATTACKS, eps=EPS, out=out, checks="cheap", seed=0)
    return full, cheap, full_report, out


def _flags(board: pd.DataFrame, model: str) -> set[str]:
    cells = board.loc[(board["model"] == model) & (board["evaluation"] == "empirical"), "flags"].fillna("")
    return {f for cell in cells for f in str(cell).split(";") if f}


def test_masked_gradients_are_flagged(runs) -> None:
    full, cheap, _, _ = runs
    print("\n" + full.leaderboard[["model", "eps", "robust_acc", "flags"]].to_string())
    for model in ("distilled", "bit-depth-no-bpda"):
        assert "zero-grad" in _flags(cheap.leaderboard, model)
        assert {"zero-grad", "unconstrained-failure"} <= _flags(full.leaderboard, model)


def test_honest_models_raise_no_flag(runs) -> None:
    full, cheap, _, _ = runs
    for model in ("lenet5-clean", "lenet5-adv"):
        assert _flags(full.leaderboard, model) == set(), model
        assert _flags(cheap.leaderboard, model) == set(), model


def test_checks_never_change_the_numbers(runs) -> None:
    full, cheap, _, _ = runs
    numbers = ["model", "eps", "clean_acc", "robust_acc", "acc_fgsm", "acc_pgd", "robust_acc_ci_low",
               "robust_acc_ci_high", "p_vs_next", "tied_with_next"]
    pd.testing.assert_frame_equal(full.leaderboard[numbers], cheap.leaderboard[numbers])


def test_report_explains_each_flag_and_records_provenance(runs) -> None:
    _, _, full_report, out = runs
    assert "**zero-grad** (all eps)" in full_report and "**unconstrained-failure** (all eps)" in full_report
    assert "autoattack:" in full_report and "torchattacks: " in full_report and "checks: full" in full_report
    from robustkit.cli import main

    assert main(["report", str(out)]) == 0  # the latest run (cheap) printed from the folder
