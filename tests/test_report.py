"""Plots, report.html, compare and export on two real runs: the MNIST example sweep (tests/configs/mnist-linf.yaml)
and the same sweep with one more attack (CW-margin PGD), both on the first 100 test images.

Every number the report, compare and export show is checked against the runs' per_sample.csv, recomputed here
independently (pandas and scipy, not robustkit's helpers). Cost: two 100-image sweeps (2 LeNet5s x 3 eps) with
their plots and report pages; the browser test is in test_report_browser.py.
"""
from __future__ import annotations

import importlib.util
import io
import json
import os
import re
import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from scipy.stats import binomtest

from robustkit.cli import main
from robustkit.report.summaries import cascade_counts, per_class_accuracy
from robustkit.threat import perturbation_norm

N = 100
CONFIG = Path(__file__).parent / "configs" / "mnist-linf.yaml"
EXTRA_ATTACK = {"name": "cw-linf", "steps": 20}
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def _config(shared_dir: Path, folder: Path, extra_attack: bool) -> Path:
    data = yaml.safe_load(CONFIG.read_text())
    data["dataset"]["root"] = str(shared_dir / "data" / "mnist")
    for m in data["models"]:
        m["checkpoint"] = str(shared_dir / "weights" / "advertorch" / Path(m["checkpoint"]).name)
    if extra_attack:
        data["attacks"].append(EXTRA_ATTACK)
    path = folder / ("more.yaml" if extra_attack else "example.yaml")
    path.write_text(yaml.safe_dump(data))
    return path


def _eval(cfg: Path, out: Path) -> Path:
    assert main(["eval", "--config", str(cfg), "--out", str(out), "--n-examples", str(N), "--quiet"]) == 0
    return out


def _per_sample(out: Path) -> pd.DataFrame:
    return pd.read_csv(out / "per_sample.csv", keep_default_na=False,
                       na_values={"broken_at_eps": [""], "adv_pred": [""], "adv_norm": [""]})


@pytest.fixture(scope="module")
def runs(shared_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("report-runs")
    a = _eval(_config(shared_dir, tmp, False), tmp / "example")
    b = _eval(_config(shared_dir, tmp, True), tmp / "more")
    return {"a": a, "b": b, "tmp": tmp}


def test_every_run_writes_plots_and_a_self_contained_report(runs):
    out = runs["a"]
    html = (out / "report.html").read_text()
    for name in ("robust_accuracy_vs_eps", "cascade", "per_class"):
        for fmt in ("png", "svg"):
            assert (out / "plots" / f"{name}.{fmt}").stat().st_size > 1000, (name, fmt)
    for model in ("lenet5-clean", "lenet5-adv"):
        assert (out / "plots" / "models" / model / "summary.png").is_file()
        assert (out / "plots" / "models" / model / "examples.png").is_file()
        assert f'id="model-{model}"' in html
    assert not (out / "plots" / "certified_accuracy.png").exists()  # no certifiable model in this sweep
    # self-contained: every image inline, nothing fetched from anywhere
    assert re.findall(r'<img src="([^"]{0,22})', html) and all(
        s.startswith("data:image/png;base64,") for s in re.findall(r'<img src="([^"]{0,22})', html))
    assert not re.search(r'(src|href)="(https?:)?//', html)
    assert "<link" not in html and "<script src" not in html
    assert html.count("<tr class=\"empirical\"") == 6
    board = pd.read_csv(out / "leaderboard.csv")
    for r in board.itertuples():  # every robust accuracy and its interval is in the table as the CSV has it
        assert f"{r.robust_acc:.2f}</span><span class=\"ci\" title=\"95% CI [{r.robust_acc_ci_low:.2f}, " \
               f"{r.robust_acc_ci_high:.2f}]\"" in html


def test_plot_counts_match_the_per_sample_csv(runs):
    ps = _per_sample(runs["b"])
    counts = cascade_counts(ps, ["fgsm", "pgd", "cw-linf"])
    board = pd.read_csv(runs["b"] / "leaderboard.csv")
    assert len(counts) == 6
    for values in counts.to_dict("records"):
        rows = ps[(ps["model"] == values["model"]) & (ps["eps"] == values["eps"])]
        row = board[(board["model"] == values["model"]) & (board["eps"] == values["eps"])].iloc[0]
        assert sum(v for k, v in values.items() if k not in ("model", "eps", "n")) == N
        assert values["robust"] == rows["robust"].sum() == round(row["robust_acc"] * N / 100)
        assert values["clean mistakes"] == (rows["clean_correct"] == 0).sum()
        earlier = (rows["clean_correct"] == 1) & (rows["broken_at_eps"] < values["eps"])
        assert values["broken at a smaller eps"] == earlier.sum()
        # what each attack broke at this eps: clean-correct, broken here, robust after the attacks before it
        fresh = rows[(rows["clean_correct"] == 1) & (rows["broken_at_eps"] == values["eps"])]
        assert values["fgsm"] == (fresh["robust_after_fgsm"] == 0).sum()
        assert values["pgd"] == ((fresh["robust_after_fgsm"] == 1) & (fresh["robust_after_pgd"] == 0)).sum()
        assert values["cw-linf"] == ((fresh["robust_after_pgd"] == 1) & (fresh["robust_after_cw-linf"] == 0)).sum()
    per_class = per_class_accuracy(ps)
    for (model, eps), row in per_class.iterrows():
        rows = ps[(ps["model"] == model) & (ps["eps"] == eps)]
        for label, value in row.items():
            assert value == round(100 * rows[rows["label"] == label]["robust"].mean(), 2)


def test_adversarial_examples_are_real_and_within_budget(runs, lenet5_clean, lenet5_adv, mnist_test):
    ps = _per_sample(runs["a"])
    for name, model in (("lenet5-clean", lenet5_clean), ("lenet5-adv", lenet5_adv)):
        with np.load(runs["a"] / "examples" / f"{name}.npz") as data:
            ex = {k: data[k] for k in data.files}
        assert 1 <= len(ex["index"]) <= 4
        for i, index in enumerate(ex["index"]):
            last = ps[(ps["model"] == name) & (ps["index"] == index)].sort_values("eps").iloc[-1]
            assert last["robust"] == 0 and last["broken_by"] not in ("", "clean")
            assert ex["attack"][i] == last["broken_by"] and ex["eps"][i] == last["broken_at_eps"]
            clean, adv = torch.from_numpy(ex["clean"][i:i + 1]), torch.from_numpy(ex["adv"][i:i + 1])
            assert torch.equal(clean, mnist_test.x[index:index + 1]) and ex["label"][i] == int(mnist_test.y[index])
            with torch.no_grad():
                pred = int(model(adv).argmax(1))
            assert pred == ex["adv_pred"][i] != ex["label"][i]
            assert float(perturbation_norm(clean, adv, "Linf")[0]) <= ex["eps"][i] * (1 + 1e-6)
            assert 0 <= adv.min() and adv.max() <= 1


def test_report_html_rebuilds_identically_from_the_store(runs, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(runs["a"], copy)
    original = (copy / "report.html").read_text()
    shutil.rmtree(copy / "plots")
    (copy / "report.html").unlink()
    assert main(["report", str(copy), "--html"]) == 0
    assert (copy / "report.html").read_text() == original
    assert (copy / "plots" / "cascade.svg").is_file()


def test_compare_pairs_the_runs_with_exact_mcnemar_tests(runs, capsys):
    capsys.readouterr()
    assert main(["compare", str(runs["a"]), str(runs["b"]), "--format", "csv"]) == 0
    table = pd.read_csv(io.StringIO(capsys.readouterr().out))
    assert len(table) == 6
    pa, pb = _per_sample(runs["a"]), _per_sample(runs["b"])
    for r in table.itertuples():
        a = pa[(pa["model"] == r.model) & (pa["eps"] == r.eps)].set_index("index")["robust"].sort_index()
        b = pb[(pb["model"] == r.model) & (pb["eps"] == r.eps)].set_index("index")["robust"].sort_index()
        only_a, only_b = int(((a == 1) & (b == 0)).sum()), int(((a == 0) & (b == 1)).sum())
        assert (r.only_a, r.only_b) == (only_a, only_b)
        assert (r.robust_a, r.robust_b) == (round(100 * a.mean(), 2), round(100 * b.mean(), 2))
        p = 1.0 if only_a + only_b == 0 else binomtest(only_a, only_a + only_b, 0.5).pvalue
        assert r.p_value == pytest.approx(round(p, 4))
        assert r.significant == (p < 0.05)
        assert "attacks fgsm=robustkit;pgd=robustkit -> fgsm=robustkit;pgd=robustkit;cw-linf=robustkit" in r.changed
    capsys.readouterr()
    assert main(["compare", str(runs["a"]), str(runs["b"])]) == 0
    text = capsys.readouterr().out
    assert "| model | eps | run a | run b |" in text and "(baseline" in text


def test_compare_refuses_other_data_or_threat_model(runs, tmp_path, capsys):
    other = tmp_path / "other-data"
    shutil.copytree(runs["b"], other)
    with sqlite3.connect(other / "results.sqlite") as conn:
        prov = json.loads(conn.execute("SELECT provenance FROM runs").fetchone()[0])
        prov["dataset"]["content_hash"] = "0" * 64
        conn.execute("UPDATE runs SET provenance = ?", (json.dumps(prov),))
    capsys.readouterr()
    assert main(["compare", str(runs["a"]), str(other)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "different data" in err and "Traceback" not in err
    l2 = tmp_path / "other-norm"
    shutil.copytree(runs["b"], l2)
    board = pd.read_csv(l2 / "leaderboard.csv")
    board["norm"] = "L2"
    board.to_csv(l2 / "leaderboard.csv", index=False)
    assert main(["compare", str(runs["a"]), str(l2)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "threat model L2" in err


def test_export_robustbench_model_info(runs, tmp_path, capsys):
    capsys.readouterr()
    assert main(["export", str(runs["b"]), "--format", "robustbench", "--out", str(tmp_path)]) == 0
    paths = capsys.readouterr().out.split()
    assert sorted(Path(p).name for p in paths) == ["lenet5-adv.json", "lenet5-clean.json"]
    ps = _per_sample(runs["b"])
    for path in paths:
        info = json.loads(Path(path).read_text())
        assert Path(path).parent == tmp_path / "mnist" / "Linf"
        for key in ("link", "name", "authors", "additional_data", "number_forward_passes", "dataset", "venue",
                    "architecture", "eps", "clean_acc", "reported", "autoattack_acc", "footnote", "unreliable"):
            assert key in info
        rows = ps[(ps["model"] == info["name"]) & (ps["eps"] == 0.3)]
        assert info["eps"] == "0.3" and info["dataset"] == "mnist" and info["architecture"] == "lenet5"
        assert info["clean_acc"] == f"{100 * rows['clean_correct'].mean():.2f}"
        assert info["robust_acc"] == f"{100 * rows['robust'].mean():.2f}"
        assert info["autoattack_acc"] is None and "AutoAttack was not run" in info["footnote"]
        assert info["n_examples"] == N and info["threat_model"] == "Linf"
        assert [e["eps"] for e in info["robustkit"]["per_eps"]] == ["0.1", "0.2", "0.3"]
        for e in info["robustkit"]["per_eps"]:
            at = ps[(ps["model"] == info["name"]) & (ps["eps"] == float(e["eps"]))]
            assert e["robust_acc"] == f"{100 * at['robust'].mean():.2f}"
        assert info["robustkit"]["run_id"] == pd.read_csv(runs["b"] / "leaderboard.csv")["run_id"].iloc[0]
        assert len(info["robustkit"]["attack_configs"]) == 3
    assert main(["export", str(runs["b"]), "--eps", "0.25"]) == 2  # not an eps of the run: one line


def test_dry_run_plans_without_computing(runs, tmp_path, capsys):
    cfg = runs["tmp"] / "example.yaml"
    db = runs["a"] / "results.sqlite"
    before = db.stat().st_mtime_ns
    capsys.readouterr()
    assert main(["eval", "--config", str(cfg), "--out", str(runs["a"]), "--n-examples", str(N), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "6 jobs" in out and "total: 6 batches, 6 reused, 0 to compute" in out and "Nothing was computed" in out
    assert db.stat().st_mtime_ns == before
    fresh = tmp_path / "not-yet"
    assert main(["eval", "--config", str(cfg), "--out", str(fresh), "--n-examples", str(N), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "6 to compute" in out and not fresh.exists()


def _chromium() -> str:
    """Debian's chromium (``.ci/run`` installs it); skip where it is absent, fail under CI."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None or importlib.util.find_spec("playwright") is None:
        if os.environ.get("ROBUSTKIT_REQUIRE_BROWSER") == "1":
            pytest.fail("ROBUSTKIT_REQUIRE_BROWSER=1 but chromium or playwright is missing")
        pytest.skip("headless chromium (Debian package chromium) or playwright not installed")
    return found


def test_report_in_headless_chromium(runs, tmp_path):
    """The real page in a real browser: the table shows every model, a header click sorts, filters filter, the
    console stays clean, nothing is fetched from the network, and a screenshot is saved."""
    from playwright.sync_api import sync_playwright

    executable = _chromium()
    board = pd.read_csv(runs["b"] / "leaderboard.csv")
    errors: list[str] = []
    fetched: list[str] = []
    shot = tmp_path / "report.png"
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=executable, args=CHROMIUM_FLAGS)  # profile: a fresh temporary one
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.route("**/*", lambda route: (fetched.append(route.request.url), route.continue_())
                       if not route.request.url.startswith(("file:", "data:")) else route.continue_())
            page.goto((runs["b"] / "report.html").resolve().as_uri())
            rows = "#leaderboard-table tbody tr"
            column = "(rows, key) => rows.filter(r => !r.hidden).map(r => r.querySelector(`td[data-key='${key}']`)" \
                     ".getAttribute('data-sort'))"
            names = page.eval_on_selector_all(rows, "rows => rows.map(r => r.cells[1].textContent.trim())")
            assert sorted(names) == sorted(board["model"]) and set(names) == {"lenet5-clean", "lenet5-adv"}
            header = page.locator("#leaderboard-table th", has_text="robust %")
            header.click()
            values = [float(v) for v in page.eval_on_selector_all(rows, column, "robust_acc")]
            assert values == sorted(board["robust_acc"], reverse=True)
            assert header.get_attribute("aria-sort") == "descending"
            header.click()
            assert [float(v) for v in page.eval_on_selector_all(rows, column, "robust_acc")] == sorted(values)
            page.locator("#leaderboard-table th", has_text="model").first.click()
            assert page.eval_on_selector_all(rows, column, "model") == sorted(board["model"])
            page.select_option("#filter-eps", "0.3")
            assert page.eval_on_selector_all(rows, column, "eps") == ["0.3", "0.3"]
            assert page.locator("#row-count").inner_text() == f"2 of {len(board)} rows"
            page.select_option("#filter-eps", "")
            page.screenshot(path=str(shot))
        finally:
            browser.close()
    assert errors == [] and fetched == []
    assert shot.stat().st_size > 20_000
    print(f"screenshot: {shot}")


def test_many_models_are_split_over_numbered_figures(runs, tmp_path, monkeypatch):
    """With more models than fit in one legible figure, the run-level figures continue in numbered files."""
    from robustkit.report import plots
    from robustkit.report.run_folder import load_run

    copy = tmp_path / "copy"
    shutil.copytree(runs["a"], copy)
    monkeypatch.setattr(plots, "MODELS_PER_FIGURE", 1)
    pngs = plots.write_plots(load_run(copy))
    names = sorted(p.name for p in pngs[""])
    assert names == ["cascade-2.png", "cascade.png", "per_class-2.png", "per_class.png",
                     "robust_accuracy_vs_eps-2.png", "robust_accuracy_vs_eps.png"]
    assert all((copy / "plots" / n.replace(".png", ".svg")).is_file() for n in names)
    assert [p.name for p in pngs["lenet5-adv"]] == ["summary.png", "examples.png"]
