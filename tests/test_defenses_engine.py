"""Defenses in the engine: ``defense:``, ``model:`` and ``members:`` in a sweep config, the ``defense`` and
``evaluation`` columns, certified rows for smoothing, resume and job identity, and ``robustkit.evaluate``.

Cost (2 CPU cores): one small sweep (16 MNIST images, 4 models, eps 0.3, FGSM + PGD-5) run twice, and a
16-image ``robustkit.evaluate`` of a smoothed LeNet5 with n = 200 certification samples.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import yaml

import robustkit
from robustkit.cli import main
from robustkit.defenses import build_defense
from robustkit.engine.config import load_config, resolve_config
from robustkit.engine.plan import plan_jobs
from robustkit.errors import ConfigError


def _config(shared_dir: Path, tmp: Path, **smoothing: object) -> Path:
    clean = {"name": "lenet5-clean", "arch": "lenet5",
             "checkpoint": str(shared_dir / "weights/advertorch/mnist_lenet5_clntrained.pt")}
    adv = {"name": "lenet5-adv", "arch": "lenet5",
           "checkpoint": str(shared_dir / "weights/advertorch/mnist_lenet5_advtrained.pt")}
    data = {
        "seed": 0, "device": "cpu",
        "dataset": {"name": "mnist", "root": str(shared_dir / "data/mnist"), "n_examples": 16},
        "models": [
            clean,
            {"name": "clean-bitdepth", "model": clean, "defense": {"name": "bit-depth", "bits": 3}},
            {"name": "clean-smoothed", **{k: v for k, v in clean.items() if k != "name"},
             "defense": {"name": "smoothing", "sigma": 0.25, "samples": 2, "n0": 20, "n": 200, "alpha": 0.001,
                         **smoothing}},
            {"name": "ens", "members": [clean, adv], "defense": {"name": "ensemble", "aggregation": "probs"}},
        ],
        "threat_model": {"norm": "Linf", "eps": [0.3]},
        "attacks": ["fgsm", {"name": "pgd", "steps": 5, "eot_iter": 2}],
    }
    path = tmp / "defended.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def defended_run(shared_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("defended")
    cfg = _config(shared_dir, tmp)
    out = tmp / "out"
    assert main(["eval", "--config", str(cfg), "--out", str(out), "--quiet"]) == 0
    return {"cfg": cfg, "out": out, "board": pd.read_csv(out / "leaderboard.csv", keep_default_na=False),
            "tmp": tmp, "shared": shared_dir}


def test_leaderboard_names_defenses_and_evaluation(defended_run):
    board = defended_run["board"]
    cols = list(board.columns)
    assert cols[cols.index("model") + 1: cols.index("model") + 3] == ["defense", "evaluation"]
    emp = board[board["evaluation"] == "empirical"].set_index("model")
    assert set(emp.index) == {"lenet5-clean", "clean-bitdepth", "clean-smoothed", "ens"}
    assert emp.loc["lenet5-clean", "defense"] == ""
    assert emp.loc["clean-bitdepth", "defense"] == "bit-depth(bits=3, bpda=True)"
    assert emp.loc["clean-smoothed", "defense"].startswith("smoothing(sigma=0.25, samples=2, n0=20, n=200")
    assert emp.loc["ens", "defense"] == "ensemble(aggregation=probs, members=2)"
    # the standard LeNet5 is broken at Linf 0.3; BPDA makes bit-depth reduction no help
    assert float(emp.loc["lenet5-clean", "robust_acc"]) <= 10
    assert float(emp.loc["clean-bitdepth", "robust_acc"]) <= 20


def test_smoothing_gets_certified_rows_beside_empirical(defended_run):
    board = defended_run["board"]
    cert = board[board["evaluation"] == "certified"]
    assert set(cert["model"]) == {"clean-smoothed"}
    assert cert["norm"].tolist() == ["L2"] * 5
    assert [float(e) for e in cert["eps"]] == [0.0, 0.25, 0.5, 0.75, 1.0]
    acc = [float(a) for a in cert["robust_acc"]]
    assert acc == sorted(acc, reverse=True) and acc[0] > 50
    # with n = 200 and alpha = 0.001 no radius beyond sigma * Phi^-1(0.001 ** (1 / 200)) = 0.455 is certifiable
    assert acc[2:] == [0.0, 0.0, 0.0]
    assert all(c == "" for c in cert["acc_fgsm"]) and all("n=200" in f for f in cert["attacks"])
    assert cert["flags"].fillna("").eq("").all() and (cert["robust_acc_ci_low"] <= cert["robust_acc"]).all()
    assert len(list((defended_run["out"] / "certified").glob("certified-*.json"))) == 1
    md = (defended_run["out"] / "leaderboard.md").read_text()
    assert "| certified |" in md and "| empirical |" in md


def test_resume_reuses_and_defense_parameters_change_identity(defended_run):
    cfg, out = defended_run["cfg"], defended_run["out"]
    assert main(["eval", "--config", str(cfg), "--out", str(out), "--quiet"]) == 0
    again = pd.read_csv(out / "leaderboard.csv", keep_default_na=False)
    pd.testing.assert_frame_equal(again.drop(columns=["seconds"]), defended_run["board"].drop(columns=["seconds"]))
    jobs = {j.model: j.job_id for j in plan_jobs(resolve_config(load_config(cfg)))}
    other = _config(defended_run["shared"], defended_run["tmp"] / "..", sigma=0.5)
    jobs2 = {j.model: j.job_id for j in plan_jobs(resolve_config(load_config(other)))}
    assert jobs2["clean-smoothed"] != jobs["clean-smoothed"]
    assert jobs2["lenet5-clean"] == jobs["lenet5-clean"] and jobs2["ens"] == jobs["ens"]


def test_config_errors_for_defense_keys(shared_dir, tmp_path):
    base = yaml.safe_load(_config(shared_dir, tmp_path).read_text())
    cases = [
        ({"name": "x", "model": "mnist-lenet5-clean", "defense": {"name": "jpg"}}, "did you mean"),
        ({"name": "x", "members": ["a"]}, "at least 2"),
        ({"name": "x", "members": [base["models"][0], base["models"][0]], "arch": "lenet5"}, "only name, members"),
        ({"name": "x", "defense": "jpeg"}, "needs its base model"),
        ({"name": "x", "model": base["models"][0], "defense": {"name": "smoothing", "sigma": "big"}}, "sigma"),
    ]
    for entry, message in cases:
        data = {**base, "models": [entry]}
        path = tmp_path / "bad.yaml"
        path.write_text(yaml.safe_dump(data))
        with pytest.raises(ConfigError, match=message) as info:
            load_config(path)
        assert str(info.value).startswith("bad.yaml: models[0]") and "\n" not in str(info.value)


def test_evaluate_accepts_a_defended_model_and_certifies(lenet5_clean, mnist_test):
    smoothed = build_defense({"name": "smoothing", "sigma": 0.25, "samples": 2, "n0": 20, "n": 200}, lenet5_clean)
    result = robustkit.evaluate(smoothed, (mnist_test.x[:16], mnist_test.y[:16]), attacks=["fgsm"], eps=0.1,
                                name="smoothed", device="cpu", radii=(0.0, 0.25))
    board = result.leaderboard
    assert board["evaluation"].tolist() == ["empirical", "certified", "certified"]
    assert set(board["defense"]) == {smoothed.describe()}
    assert board["robust_acc"].iloc[1] >= board["robust_acc"].iloc[2]


def test_certified_radii_come_from_the_config(defended_run, tmp_path):
    """``certified_radii`` replaces the default radii of the certified rows; bad values are one-line errors."""
    data = yaml.safe_load(defended_run["cfg"].read_text())
    data["models"] = [m for m in data["models"] if isinstance(m, dict) and m.get("name") == "clean-smoothed"]
    data["certified_radii"] = [0.3, 0]
    cfg = tmp_path / "radii.yaml"
    cfg.write_text(yaml.safe_dump(data, sort_keys=False))
    assert main(["eval", "--config", str(cfg), "--out", str(tmp_path / "out"), "--quiet"]) == 0
    board = pd.read_csv(tmp_path / "out" / "leaderboard.csv", keep_default_na=False)
    cert = board[board["evaluation"] == "certified"]
    assert [float(e) for e in cert["eps"]] == [0.0, 0.3]
    for bad in ([], [-0.1], "0.5", [0.1, 0.1]):
        data["certified_radii"] = bad
        cfg.write_text(yaml.safe_dump(data, sort_keys=False))
        with pytest.raises(ConfigError, match="certified_radii: expected a list of distinct L2 radii"):
            load_config(cfg)
