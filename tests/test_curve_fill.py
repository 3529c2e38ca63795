"""The evaluator's minimum-norm curve (robustkit.engine.curve_fill): validation, the curve/bounded comparison,
and a real run on the clean MNIST LeNet5 (first 40 test images) through ``robustkit.evaluate`` and a YAML config.
"""
from __future__ import annotations

import math

import pandas as pd
import pytest
import torch
import yaml

import robustkit
from robustkit.curves import robust_accuracy_curve
from robustkit.engine.config import load_config, resolve_config
from robustkit.engine.curve_fill import CURVE_COLUMNS, CurveSpec, curve_table, parse_curve
from robustkit.errors import ConfigError

N = 40
EPS = [0.05, 0.1]
PGD = {"name": "pgd", "steps": 20, "step_size": 0.01, "random_start": True}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ---------------------------------------------------------------------------------------------- parsing
def test_parse_curve_forms_and_defaults():
    assert parse_curve(None) is None and parse_curve(False) is None
    assert parse_curve(True) == CurveSpec("fmn", None, 20)
    assert parse_curve("fmn", "L2") == CurveSpec("fmn", None, 20)
    spec = parse_curve({"attack": {"name": "fmn", "steps": 30}, "eps": [0.2, "8/255", 0.2]}, "Linf")
    assert spec.eps == (8 / 255, 0.2) and spec.attack == {"name": "fmn", "steps": 30}
    assert parse_curve(spec.to_json(), "Linf") == spec  # what is stored with the run parses back
    assert parse_curve({"points": 5, "eps": "auto"}).points == 5


@pytest.mark.parametrize("value, norm, match", [
    ({"attack": "pgd"}, "Linf", r"curve\.attack: expected a minimum-norm attack \(cw, fmn\), got 'pgd'"),
    ({"attack": "fmm"}, "Linf", r"curve\.attack: .*fmn"),
    ({"attack": "cw"}, "Linf", r"curve\.attack: 'cw' supports norms L2, not Linf"),
    ({"pionts": 3}, "Linf", r"curve: unknown key 'pionts' \(did you mean \"points\"\?\)"),
    ({"points": 1}, "Linf", r"curve\.points: expected an integer >= 2"),
    ({"eps": [0.1, -0.2]}, "L2", r"curve\.eps: expected values >= 0"),
    ({"eps": [2.0]}, "Linf", r"curve\.eps: Linf eps must be <= 1"),
    ({"eps": []}, "Linf", r"curve\.eps: expected 'auto' or a non-empty list"),
    (["fmn"], "Linf", r"curve: expected a mapping"),
])
def test_bad_curve_settings_are_one_line_config_errors(value, norm, match):
    with pytest.raises(ConfigError, match=match) as info:
        parse_curve(value, norm)
    assert "\n" not in str(info.value)


# ------------------------------------------------------------------------------------- curve vs bounded
def test_curve_table_compares_exact_counts_and_reports_the_lower_value():
    correct = torch.tensor([True, True, True, True, False])
    norms = torch.tensor([0.05, 0.15, 0.3, math.inf, 0.0], dtype=torch.float64)
    # curve robust counts: eps 0.1 -> 3 (0.15, 0.3, inf), eps 0.2 -> 2
    table = curve_table("m", "d", "Linf", correct, norms, [0.0, 0.25], {0.1: 3, 0.2: 1}, "fmn=robustkit")
    assert list(table.columns) == CURVE_COLUMNS
    rows = table.set_index("eps")
    assert list(rows.index) == [0.0, 0.1, 0.2, 0.25]
    assert rows.loc[0.0, "robust_acc_min_norm"] == 80.0 and rows.loc[0.25, "robust_acc_min_norm"] == 40.0
    assert bool(rows.loc[0.1, "agrees"]) and rows.loc[0.1, "robust_acc"] == 60.0   # equal counts: confirmed
    # at 0.2 the bounded suite leaves 1 robust, the curve 2: the min-norm attack was weak there
    assert not bool(rows.loc[0.2, "agrees"]) and rows.loc[0.2, "robust_acc"] == 20.0
    assert pd.isna(rows.loc[0.0, "agrees"]) and math.isnan(rows.loc[0.0, "robust_acc_bounded"])
    # a bounded suite weaker than the curve (3 robust vs 2) does not contradict it; the curve's value is reported
    strong = curve_table("m", "d", "Linf", correct, norms, [], {0.2: 3}, "fmn=robustkit").set_index("eps")
    assert bool(strong.loc[0.2, "agrees"]) and strong.loc[0.2, "robust_acc"] == 40.0


# ------------------------------------------------------------------------------- real model, real data
@pytest.fixture(scope="module")
def mnist_small(mnist_test):
    return mnist_test.x[:N], mnist_test.y[:N]


def test_evaluate_fills_the_curve_from_one_fmn_run(lenet5_clean, mnist_small, tmp_path):
    x, y = mnist_small
    result = robustkit.evaluate(lenet5_clean, dataset=(x, y), attacks=[PGD], eps=EPS, norm="Linf", name="lenet5",
                                out=tmp_path, curve={"attack": {"name": "fmn", "steps": 100}, "points": 6})
    curve = pd.read_csv(tmp_path / "curve.csv")
    assert list(curve.columns) == CURVE_COLUMNS
    assert result.curve is not None and len(result.curve) == len(curve)
    assert (curve["model"] == "lenet5").all() and (curve["n_examples"] == N).all()
    assert curve["eps"].is_monotonic_increasing
    assert curve["robust_acc_min_norm"].is_monotonic_decreasing
    # 6 grid points from 0 to the largest minimal norm, plus the sweep's eps
    assert curve["eps"].iloc[0] == 0.0 and len(curve) == 6 + len(EPS)
    board = result.leaderboard.set_index("eps")
    assert curve.loc[0, "robust_acc_min_norm"] == board["clean_acc"].iloc[0]
    in_sweep = curve[curve["in_sweep"]].set_index("eps")
    assert list(in_sweep.index) == EPS
    for eps in EPS:
        row = in_sweep.loc[eps]
        assert row["robust_acc_bounded"] == board.loc[eps, "robust_acc"]
        assert bool(row["agrees"]) == (row["robust_acc_min_norm"] <= row["robust_acc_bounded"])
        assert row["robust_acc"] == min(row["robust_acc_bounded"], row["robust_acc_min_norm"])
    # at eps 0.1 the clean LeNet5 is clearly breakable, and the curve says so
    assert in_sweep.loc[0.1, "robust_acc_min_norm"] < board.loc[0.1, "clean_acc"]
    assert curve["attack"].iloc[0].startswith("fmn=")


def test_weak_min_norm_attack_is_flagged(lenet5_clean, mnist_small):
    """One FMN step finds (almost) nothing: the bounded suite then shows the curve is too optimistic."""
    x, y = mnist_small
    result = robustkit.evaluate(lenet5_clean, dataset=(x, y), attacks=[PGD], eps=[0.2], norm="Linf",
                                curve={"attack": {"name": "fmn", "steps": 1}, "eps": [0.2]})
    [row] = result.curve.to_dict("records")
    assert row["robust_acc_bounded"] < row["robust_acc_min_norm"]
    assert row["agrees"] is False or row["agrees"] == False  # noqa: E712 - pandas may hand back numpy bools
    assert row["robust_acc"] == row["robust_acc_bounded"]


def test_yaml_config_curve_key(tmp_path, shared_dir):
    cfg_path = tmp_path / "sweep.yaml"
    base = {
        "dataset": {"name": "mnist", "root": str(shared_dir / "data" / "mnist"), "n_examples": 8},
        "models": [{"name": "lenet5", "arch": "lenet5",
                    "checkpoint": str(shared_dir / "weights" / "advertorch" / "mnist_lenet5_clntrained.pt")}],
        "threat_model": {"norm": "L2", "eps": [1.0]},
        "attacks": ["pgd"],
    }
    cfg_path.write_text(yaml.safe_dump({**base, "curve": {"attack": "pgd"}}))
    with pytest.raises(ConfigError, match=r"^sweep\.yaml: curve\.attack: expected a minimum-norm attack"):
        load_config(cfg_path)
    cfg_path.write_text(yaml.safe_dump({**base, "curve": {"attack": "cw", "eps": [0.5, 1.0]}}))
    sweep = resolve_config(load_config(cfg_path))
    assert sweep.config["curve"] == {"attack": "cw", "eps": [0.5, 1.0], "points": 20}


def test_curve_values_match_the_curves_module(lenet5_clean, mnist_small):
    """The curve column is exactly robustkit.curves.robust_accuracy_curve of the run's minimal norms."""
    from robustkit.engine.curve_fill import min_norms

    x, y = mnist_small[0][:16], mnist_small[1][:16]
    attack = CurveSpec({"name": "fmn", "steps": 20}).build()
    correct, norms = min_norms(lenet5_clean, attack, x, y, "L2", seed=0, key="m", batch_size=8,
                               device=torch.device("cpu"))
    again = min_norms(lenet5_clean, attack, x, y, "L2", seed=0, key="m", batch_size=8, device=torch.device("cpu"))
    assert torch.equal(norms, again[1])  # seeded per batch: the same curve every time
    table = curve_table("m", "d", "L2", correct, norms, [0.5, 1.0, 2.0], {}, "fmn").set_index("eps")
    for eps, acc in robust_accuracy_curve(correct, norms, [0.5, 1.0, 2.0]):
        assert table.loc[eps, "robust_acc_min_norm"] == round(100 * acc, 2)
