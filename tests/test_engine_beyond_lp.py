"""Sweeps that mix Lp attacks with corruptions, a patch and a universal perturbation (CLI end to end)."""
import sqlite3
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from robustkit.cli import main
from robustkit.corruptions import corrupt_images
from robustkit.engine.beyond_lp import ExtraJob
from robustkit.engine.beyond_lp_tables import section_per_sample, section_tables
from robustkit.engine.config import load_config, resolve_config
from robustkit.engine.store import ResultStore
from robustkit.engine.threat_specs import ThreatSpec
from robustkit.stats import clopper_pearson_percent
from robustkit.errors import ConfigError
from robustkit.subgroups import ink_terciles, subgroup_metrics


def _cifar_config(shared: Path, tmp_path: Path, **changes) -> Path:
    cfg = {
        "seed": 0, "device": "cpu", "batch_size": 6, "checks": "off", "output": str(tmp_path / "out"),
        "dataset": {"name": "npz", "root": str(shared / "data/cifar10/cifar10_test_first100_exact.npz"),
                    "n_examples": 12},
        "models": ["cifar10-resnet20", "cifar10-resnet2b-pgd"],
        "threat_model": [
            {"norm": "Linf", "eps": ["1/255"]},
            {"name": "corruption", "corruptions": ["gaussian_noise", "contrast"], "severities": [3],
             "baseline": "cifar10-resnet20"},
            {"name": "patch", "area": [0.05], "location": "random", "attacks": [{"name": "patch", "steps": 5}]},
            {"name": "universal", "eps": ["8/255"], "train_examples": 6,
             "attacks": [{"name": "uap", "epochs": 1, "batch_size": 6, "inner_iters": 1}]},
        ],
        "attacks": ["fgsm"],
    }
    cfg.update(changes)
    path = tmp_path / "mix.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_mixed_sweep_writes_a_section_per_threat_model_and_resumes(shared_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("ROBUSTKIT_WEIGHTS_DIR", str(shared_dir / "weights"))
    config = _cifar_config(shared_dir, tmp_path)
    assert main(["eval", "--config", str(config), "--quiet"]) == 0
    out = tmp_path / "out"
    corr = pd.read_csv(out / "corruption.csv")
    assert len(corr) == 4 and set(corr["corruption"]) == {"gaussian_noise", "contrast"}
    # one cell recomputed by hand: resnet20 on gaussian noise, severity 3
    sweep = resolve_config(load_config(config))
    ds, model = sweep.dataset, sweep.models[0].model
    xc = corrupt_images(ds.x, "gaussian_noise", 3, seed=0, indices=range(12))
    with torch.no_grad():
        expected = float((model(xc).argmax(1) == ds.y).float().mean()) * 100
    row = corr[(corr.model == "cifar10-resnet20") & (corr.corruption == "gaussian_noise")].iloc[0]
    assert row.corruption_acc == pytest.approx(expected, abs=0.01)
    assert row.corruption_acc_ci_low <= row.corruption_acc <= row.corruption_acc_ci_high
    summary = pd.read_csv(out / "corruption_summary.csv").set_index("model")
    assert summary.loc["cifar10-resnet20", "mce"] == 100.0 and summary.loc["cifar10-resnet20", "relative_mce"] == 100.0
    assert summary.loc["cifar10-resnet2b-pgd", "baseline"] == "cifar10-resnet20"
    assert summary.loc["cifar10-resnet2b-pgd", "mce_ci_low"] <= summary.loc["cifar10-resnet2b-pgd", "mce"]
    patch = pd.read_csv(out / "patch.csv")
    assert set(patch["side"]) == {7} and (patch["robust_acc"] <= patch["clean_acc"]).all()
    uni = pd.read_csv(out / "universal.csv", dtype={"train_split": str, "eval_split": str})
    assert set(uni["train_split"]) == {"0..5"} and set(uni["eval_split"]) == {"6..11"}
    assert (uni["n_examples"] == 6).all() and {"fooling_rate", "fooling_rate_ci_low"} <= set(uni.columns)
    report = (out / "report.md").read_text()
    assert (out / "corruption.png").stat().st_size > 1000
    for title in ("## Leaderboard", "## Threat model: corruption", "## Threat model: patch",
                  "## Threat model: universal"):
        assert title in report
    before = {name: pd.read_csv(out / name).drop(columns="seconds") for name in ("corruption.csv", "patch.csv",
                                                                                  "universal.csv")}
    capsys.readouterr()
    assert main(["eval", "--config", str(config), "--quiet"]) == 0
    captured = capsys.readouterr()
    printed = " ".join((captured.out + captured.err).split())
    assert "(0 batches computed, 18 reused)" in printed
    for name, frame in before.items():
        pd.testing.assert_frame_equal(pd.read_csv(out / name).drop(columns="seconds"), frame)


@pytest.mark.parametrize("change, message", [
    ({"threat_model": [{"norm": "Linf", "eps": 0.01}, {"name": "patch", "area": 1.5, "attacks": ["patch"]}]},
     r"threat_model\[1\].area: expected patch fractions of the image area in \(0, 1\]"),
    ({"threat_model": [{"norm": "Linf", "eps": 0.01}, {"name": "patch", "area": 0.5, "attacks": ["pgd"]}]},
     r"threat_model\[1\].attacks\[0\]: attack 'pgd' does not support patch threat models"),
    ({"threat_model": [{"norm": "Linf", "eps": 0.01}, {"name": "universal", "eps": 0.03, "attacks": ["uap"]}]},
     r"threat_model\[1\].train_examples: required with a universal attack"),
    ({"threat_model": [{"norm": "Linf", "eps": 0.01}, {"name": "corruption", "corruptions": ["fgo"]}]},
     r"threat_model\[1\].corruptions: unknown corruption 'fgo'"),
    ({"threat_model": []}, r"threat_model: has no threat model"),
    ({"threat_model": [{"name": "corruption"}]}, r"attacks: only for an Lp entry of threat_model"),
])
def test_bad_sections_fail_before_loading(tmp_path, change, message):
    cfg = {"dataset": "digits", "models": ["x"], "attacks": ["fgsm"], **change}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    with pytest.raises(ConfigError, match=message):
        load_config(tmp_path / "c.yaml")


def test_sizes_and_names_fail_before_compute(shared_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("ROBUSTKIT_WEIGHTS_DIR", str(shared_dir / "weights"))
    mnist = {"name": "mnist", "root": str(shared_dir / "data/mnist"), "n_examples": 10}
    lenet = {"name": "lenet", "arch": "lenet5", "checkpoint": str(shared_dir / "weights/advertorch/mnist_lenet5_clntrained.pt")}
    for tm, message in (
            ({"name": "corruption", "corruptions": ["fog"]}, r"images are 28x28, but the corruptions need at least 32x32"),
            ({"name": "patch", "area": 0.5, "location": "fixed", "position": [20, 0], "attacks": ["patch"]},
             r"a 20-pixel patch at \[20, 0\] does not fit in a 28x28 image"),
            ({"name": "universal", "eps": 0.1, "train_examples": 10, "attacks": ["uap"]},
             r"train_examples: 10 leaves no held-out example of the 10")):
        cfg = {"dataset": mnist, "models": [lenet], "attacks": ["fgsm"],
               "threat_model": [{"norm": "Linf", "eps": 0.1}, tm]}
        (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
        with pytest.raises(ConfigError, match=message):
            resolve_config(load_config(tmp_path / "c.yaml"))


def test_subgroup_columns_on_real_mnist(shared_dir, mnist_test, tmp_path):
    """MNIST stroke-thickness terciles as a subgroup file; the leaderboard's columns equal a direct computation."""
    n = 300
    groups = ink_terciles(mnist_test.x[:n].numpy(), mnist_test.y[:n].numpy())
    np.save(tmp_path / "thickness.npy", groups)
    cfg = {"seed": 0, "device": "cpu", "checks": "off", "output": str(tmp_path / "out"),
           "dataset": {"name": "mnist", "root": str(shared_dir / "data/mnist"), "n_examples": n,
                       "subgroups": "thickness.npy"},
           "models": [{"name": "lenet", "arch": "lenet5",
                       "checkpoint": str(shared_dir / "weights/advertorch/mnist_lenet5_clntrained.pt")}],
           "threat_model": {"norm": "Linf", "eps": 0.1}, "attacks": ["fgsm"]}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["eval", "--config", str(tmp_path / "c.yaml"), "--quiet"]) == 0
    board = pd.read_csv(tmp_path / "out" / "leaderboard.csv").iloc[0]
    per = pd.read_csv(tmp_path / "out" / "per_sample.csv")
    robust = subgroup_metrics(per["robust"].to_numpy(), per["label"].to_numpy(), groups[per["index"].to_numpy()])
    clean = subgroup_metrics(per["clean_correct"].to_numpy(), per["label"].to_numpy(), groups)
    assert board.robust_worst_group_acc == robust.worst_group_acc and board.robust_macro_std == robust.macro_std
    assert board.clean_worst_group_acc == clean.worst_group_acc and board.clean_macro_std == clean.macro_std
    assert board.robust_worst_group_acc < board.robust_acc and board.robust_macro_std > 0
    assert board.robust_macro_std_ci_low <= board.robust_macro_std <= board.robust_macro_std_ci_high


def test_fixed_and_searched_universal_patches_through_the_engine(shared_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("ROBUSTKIT_WEIGHTS_DIR", str(shared_dir / "weights"))
    config = _cifar_config(shared_dir, tmp_path, models=["cifar10-resnet2b-pgd"], threat_model=[
        {"norm": "Linf", "eps": ["1/255"]},
        {"name": "patch", "area": [0.1], "location": "fixed", "position": [0, 0],
         "attacks": [{"name": "patch", "steps": 3}]},
        {"name": "patch", "area": [0.1], "location": "searched", "train_examples": 6,
         "attacks": [{"name": "patch", "universal": True, "epochs": 1, "batch_size": 6, "candidates": 2,
                      "label": "upatch"}]},
    ])
    assert main(["eval", "--config", str(config), "--quiet"]) == 0
    patch = pd.read_csv(tmp_path / "out" / "patch.csv", dtype={"train_split": str, "eval_split": str})
    fixed = patch[patch.location == "fixed"].iloc[0]
    searched = patch[patch.location == "searched"].iloc[0]
    assert fixed.n_examples == 12 and fixed.eval_split == "0..11" and fixed.side == 10
    assert searched.n_examples == 6 and searched.train_split == "0..5" and searched.eval_split == "6..11"
    assert searched.acc_upatch == searched.robust_acc <= searched.clean_acc
    assert list((tmp_path / "out" / "universal").glob("*.pt"))  # the fitted patch is kept for a resume


UAP = {"name": "uap", "epochs": 1, "batch_size": 6, "inner_iters": 1}


@pytest.mark.parametrize("section, table", [
    ({"name": "corruption", "corruptions": ["gaussian_noise"], "severities": [1, 5]}, "corruption.csv"),
    ({"name": "patch", "area": [0.05], "location": "random", "attacks": [{"name": "patch", "steps": 3}]}, "patch.csv"),
    ({"name": "universal", "eps": ["8/255"], "train_examples": 6, "attacks": [UAP]}, "universal.csv"),
])
def test_sweep_without_an_lp_entry(shared_dir, tmp_path, monkeypatch, capsys, section, table):
    """Only corruptions, only a patch or only a UAP: no attacks key, no Lp rows; per_sample.csv has the section's;
    the checks that apply to the threat model run (docs/checks.md) and flag nothing on this sound model."""
    monkeypatch.setenv("ROBUSTKIT_WEIGHTS_DIR", str(shared_dir / "weights"))
    config = _cifar_config(shared_dir, tmp_path, models=["cifar10-resnet2b-pgd"], threat_model=[section],
                           checks="cheap")
    cfg = yaml.safe_load(config.read_text())
    del cfg["attacks"]
    config.write_text(yaml.safe_dump(cfg))
    assert main(["eval", "--config", str(config), "--quiet"]) == 0
    out = tmp_path / "out"
    rows = pd.read_csv(out / table)
    per = pd.read_csv(out / "per_sample.csv")
    assert set(per["threat_model"]) == {section["name"]}
    n = 6 if section["name"] == "universal" else 12
    assert len(per) == n * len(rows) and len(pd.read_csv(out / "leaderboard.csv")) == 0
    assert "No Lp threat model in this sweep" in (out / "report.md").read_text()
    verdict = "corruption_acc" if section["name"] == "corruption" else "robust_acc"
    for _, row in rows.iterrows():  # the table is the per-sample verdicts, counted
        level = {"corruption": per["severity"] == row.get("severity"), "patch": per["area"] == row.get("area"),
                 "universal": per["eps"] == row.get("eps")}[section["name"]]
        assert row[verdict] == pytest.approx(100 * per.loc[level, "robust"].mean(), abs=0.01)
        assert row[f"{verdict}_ci_low"] <= row[verdict] <= row[f"{verdict}_ci_high"]
    assert ((per["robust"] == 1) == (per["prediction"] == per["label"])).all()
    checks = pd.read_sql_query("SELECT name, fired, applicable FROM checks", sqlite3.connect(out / "results.sqlite"))
    ran = set(checks.loc[checks["applicable"] == 1, "name"])
    gradient = {"zero-grad", "nan-grad", "probabilities"}
    assert {"randomized", "dynamic", "batch-dependence"} <= ran
    assert (gradient <= ran) == (section["name"] != "corruption") and not (gradient & ran and section["name"] == "corruption")
    assert "eps-nonmonotone" not in set(checks["name"]) and not checks["fired"].any()
    assert rows["flags"].isna().all()
    capsys.readouterr()
    assert main(["eval", "--config", str(config), "--dry-run"]) == 0
    assert f"plus {len(rows)} {section['name']} job(s)" in capsys.readouterr().out


def test_fooling_rate_counts_every_held_out_image(shared_dir, tmp_path, monkeypatch):
    """fooling_rate = held-out images whose prediction changes under the UAP, over all held-out images
    (clean mistakes too), recomputed here from the fitted perturbation kept in the output folder."""
    monkeypatch.setenv("ROBUSTKIT_WEIGHTS_DIR", str(shared_dir / "weights"))
    config = _cifar_config(shared_dir, tmp_path, models=["cifar10-resnet20"], dataset={
        "name": "npz", "root": str(shared_dir / "data/cifar10/cifar10_test_first100_exact.npz"), "n_examples": 40},
        batch_size=10, threat_model=[{"name": "universal", "eps": ["16/255"], "train_examples": 20,
                                      "attacks": [{**UAP, "epochs": 2, "batch_size": 10}]}])
    cfg = yaml.safe_load(config.read_text())
    del cfg["attacks"]
    config.write_text(yaml.safe_dump(cfg))
    assert main(["eval", "--config", str(config), "--quiet"]) == 0
    out = tmp_path / "out"
    row = pd.read_csv(out / "universal.csv").iloc[0]
    sweep = resolve_config(load_config(config))
    model, x, y = sweep.models[0].model.eval(), sweep.dataset.x[20:], sweep.dataset.y[20:]
    (payload,) = [torch.load(p, weights_only=True)["payload"] for p in (out / "universal").glob("*.pt")]
    assert float(payload.abs().max()) <= 16 / 255 + 1e-6
    with torch.no_grad():
        clean, perturbed = model(x).argmax(1), model((x + payload).clamp(0, 1)).argmax(1)
    changed = int((clean != perturbed).sum())
    wrong_changed = int(((clean != y) & (clean != perturbed)).sum())  # what the old definition left out
    assert row.fooling_rate == pytest.approx(100 * changed / 20, abs=0.01)
    # robust accuracy stays as it was: correct both clean and under the perturbation
    assert row.robust_acc == pytest.approx(100 * float(((clean == y) & (perturbed == y)).float().mean()), abs=0.01)
    per = pd.read_csv(out / "per_sample.csv")
    assert per["fooled"].sum() == changed and (per["prediction"] == perturbed.numpy()).all()
    assert wrong_changed > 0 and row.fooling_rate_ci_low <= row.fooling_rate <= row.fooling_rate_ci_high


def test_tampered_section_results_are_verified_and_recomputed(shared_dir, tmp_path, monkeypatch, capsys):
    """Every stored corruption / patch / universal batch is verified when read: rows, budgets, and re-prediction
    from the kept corrupted images, patched examples and universal perturbation; failing batches are
    recomputed, the CSVs equal the untouched run's."""
    monkeypatch.setenv("ROBUSTKIT_WEIGHTS_DIR", str(shared_dir / "weights"))
    config = _cifar_config(shared_dir, tmp_path, models=["cifar10-resnet2b-pgd"], threat_model=[
        {"name": "corruption", "corruptions": ["gaussian_noise"], "severities": [3]},
        {"name": "patch", "area": [0.05], "location": "random", "attacks": [{"name": "patch", "steps": 3}]},
        {"name": "universal", "eps": ["8/255"], "train_examples": 6, "attacks": [UAP]}])
    cfg = yaml.safe_load(config.read_text())
    del cfg["attacks"]
    config.write_text(yaml.safe_dump(cfg))
    assert main(["eval", "--config", str(config), "--quiet"]) == 0
    out = tmp_path / "out"
    names = ("corruption.csv", "patch.csv", "universal.csv", "per_sample.csv")
    before = {name: pd.read_csv(out / name).drop(columns="seconds", errors="ignore") for name in names}
    con = sqlite3.connect(out / "results.sqlite")
    jobs = dict(con.execute("SELECT substr(norm, 1, instr(norm, ':') - 1), job_id FROM jobs").fetchall())
    # corruption: a wrong verdict made right, consistently (only re-prediction can tell)
    idx = con.execute("SELECT idx FROM samples WHERE job_id = ? AND robust = 0", (jobs["corruption"],)).fetchone()[0]
    con.execute("UPDATE samples SET robust = 1, robust_after = '1', adv_pred = NULL, broken_by = NULL, "
                "broken_at_eps = NULL WHERE job_id = ? AND idx = ?", (jobs["corruption"], idx))
    # patch: a broken sample whose stored perturbation exceeds the budget
    con.execute("UPDATE samples SET adv_norm = 3.0 WHERE job_id = ? AND idx = (SELECT MIN(idx) FROM samples "
                "WHERE job_id = ? AND broken_by = 'patch')", (jobs["patch"], jobs["patch"]))
    # universal: a clean mistake given another prediction under the perturbation
    con.execute("UPDATE samples SET adv_pred = (adv_pred + 1) % 10 WHERE job_id = ? AND idx = (SELECT MIN(idx) "
                "FROM samples WHERE job_id = ? AND clean_correct = 0)", (jobs["universal"], jobs["universal"]))
    con.commit()
    con.close()
    cached = next((out / "corrupted").glob("*.npy"))
    images = np.load(cached)
    np.save(cached, 255 - images)
    capsys.readouterr()
    assert main(["eval", "--config", str(config), "--quiet"]) == 0
    err = " ".join(capsys.readouterr().err.split())
    assert "(3 batches computed," in err
    for kind in ("corruption gaussian_noise s3", "patch 0.05", "universal 0.0313725"):
        assert f"recomputing 1 batch(es) of cifar10-resnet2b-pgd {kind}" in err
    assert "is not what seed 0 gives" in err and np.array_equal(np.load(cached), images)
    for name, frame in before.items():
        pd.testing.assert_frame_equal(pd.read_csv(out / name).drop(columns="seconds", errors="ignore"), frame)
    # a kept universal perturbation outside its budget is fitted again, never used; a kept patched example
    # changed outside its patch fails the mask check, and its batch is attacked again
    (payload_path,) = (out / "universal").glob("*.pt")
    saved = torch.load(payload_path, weights_only=True)
    torch.save({**saved, "payload": saved["payload"] + 0.5}, payload_path)
    kept = next(p for p in (out / "patch").glob("*.npz") if len(np.load(p)["index"]))
    with np.load(kept) as data:
        index, x_adv = data["index"], data["x_adv"]
    np.savez(kept, index=index, x_adv=1 - x_adv)
    assert main(["eval", "--config", str(config), "--quiet"]) == 0
    err = " ".join(capsys.readouterr().err.split())
    assert "its kept universal perturbation fails the budget check" in err
    assert "recomputing 1 batch(es) of cifar10-resnet2b-pgd patch 0.05" in err and "a kept patched example" in err
    for name in ("patch.csv", "universal.csv"):
        pd.testing.assert_frame_equal(pd.read_csv(out / name).drop(columns="seconds"), before[name])


def test_fooling_rate_on_a_hand_computed_table(tmp_path):
    """4 held-out images: two clean-correct ones broken (class changed), one clean mistake whose class the UAP
    changes, one whose class it keeps: fooling rate 3/4 = 75% (the old "of clean-correct" rate said 2/2)."""
    spec = ThreatSpec("universal", [0.03], norm="Linf", train_examples=2)
    job = ExtraJob("j", {}, "m", 0, "universal", 0.03, 2)
    dataset = type("D", (), {"name": "d", "groups": None, "__len__": lambda self: 6})()
    sweep = SimpleNamespace(extra_threats=[spec], dataset=dataset)
    rows = [(2, 0, 0, 1, "0", 0, "uap", 0.03, 9, 0.03, 1), (3, 1, 1, 1, "0", 0, "uap", 0.03, 4, 0.03, 1),
            (4, 2, 5, 0, "0", 0, "clean", 0.0, 6, 0.0, 0), (5, 3, 7, 0, "0", 0, "clean", 0.0, 7, 0.0, 0)]
    with ResultStore.open(tmp_path) as store:
        store.ensure_job("j", {}, model="m", dataset="d", norm="universal:Linf", eps=0.03, prev_job_id=None,
                         n_examples=4, batch_size=4, attack_labels=["universal"])
        store.commit_batch(job_id="j", batch_index=0, start=2, stop=6, seed=0, chunk_size=4, n_attacked=2,
                           seconds=0.0, run_id="r", attempt=1, rows=rows)
        row = section_tables(store, sweep, [job])["universal"].iloc[0]
        per = section_per_sample(store, sweep, [job])
    assert row.fooling_rate == 75.0 and (row.fooling_rate_ci_low, row.fooling_rate_ci_high) == \
        clopper_pearson_percent(3, 4)
    assert row.robust_acc == 0.0 and row.clean_acc == 50.0
    assert per["fooled"].tolist() == [1, 1, 1, 0] and per["prediction"].tolist() == [9, 4, 6, 7]
