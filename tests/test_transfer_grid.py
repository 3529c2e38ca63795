"""transfer-grid (PubDef's threat model) on real MNIST: every surrogate x attack pair, the grid CSV and heatmap,
the worst case as the row's robust accuracy, and no transfer-failure flag for the threat model itself."""
from __future__ import annotations

import pandas as pd
import pytest
import torch

import robustkit
from robustkit.attacks import build_attack
from robustkit.errors import RobustkitError
from robustkit.threat import ThreatModel


@pytest.fixture(scope="module")
def surrogate_card(shared_dir):
    return {"name": "lenet5-clean", "arch": "lenet5",
            "checkpoint": str(shared_dir / "weights/advertorch/mnist_lenet5_clntrained.pt")}


def test_grid_runs_every_pair_on_every_sample(mnist_test, lenet5_adv, lenet5_clean):
    x, y = mnist_test.x[:16], mnist_test.y[:16]
    inner = [{"name": "fgsm"}, {"name": "pgd", "steps": 5, "random_start": False}]
    grid = build_attack({"name": "transfer-grid", "surrogates": [lenet5_clean], "attacks": inner})
    worst = build_attack({"name": "transfer", "surrogates": [lenet5_clean], "attacks": inner})
    res = grid(lenet5_clean, x, y, ThreatModel("Linf", 0.3))
    attacked = [p["attacked"] for p in res.info["pairs"]]
    assert attacked == [16 - res.info["clean_fooled"]] * 2   # the second pair is not skipped where the first won
    res_w = worst(lenet5_clean, x, y, ThreatModel("Linf", 0.3))
    assert torch.equal(res.success, res_w.success)            # same worst case per sample as 'transfer'


def test_transfer_grid_csv_heatmap_and_worst_case_row(mnist_test, lenet5_adv, surrogate_card, tmp_path):
    x, y = mnist_test.x[:16], mnist_test.y[:16]
    attack = {"name": "transfer-grid", "surrogates": [surrogate_card],
              "attacks": [{"name": "fgsm"}, {"name": "pgd", "steps": 5, "random_start": False}]}
    result = robustkit.evaluate({"lenet5-pgd": lenet5_adv}, dataset=(x, y), attacks=[attack], eps=[0.3], out=tmp_path,
                                checks="full")
    grid = pd.read_csv(tmp_path / "transfer_grid.csv")
    assert list(grid["surrogate"]) == ["lenet5-clean", "lenet5-clean", "worst case"]
    assert list(grid["attack"]) == ["fgsm", "pgd", "worst case"]
    worst = float(grid["robust_acc"].iloc[-1])
    assert worst <= grid["robust_acc"].iloc[:2].min()
    row = result.leaderboard.iloc[0]
    assert row["robust_acc"] == pytest.approx(worst)          # deterministic inner attacks: the same worst case
    assert (tmp_path / "transfer_grid.png").stat().st_size > 1000
    assert "Transfer grid" in (tmp_path / "report.md").read_text()
    assert "transfer-failure" not in str(row["flags"])        # the threat model itself is not a failed proxy


def test_external_surrogate_names_fail_in_one_line():
    with pytest.raises(RobustkitError, match="torchvision"):
        build_attack({"name": "transfer-grid", "surrogates": ["torchvision:resnet18"]}).surrogate_models(
            torch.device("cpu"))
