"""Tables of the non-Lp sections, their report sections, and the subgroup columns of every table.

Each section gets its own columns where Lp's eps makes no sense (docs/engine.md, "Beyond Lp"):

* ``corruption.csv``: model, corruption, severity, n_examples, clean_acc, corruption_acc (+ intervals);
  ``corruption_summary.csv``: per model the mean corruption accuracy, mCE and relative mCE against the
  section's baseline model (paired bootstrap intervals, :func:`robustkit.corruptions.mce`);
* ``patch.csv``: model, location, area, side, train/eval split, clean and robust accuracy, acc_<label>;
* ``universal.csv``: model, norm, eps, train/eval split, clean and robust accuracy and the fooling rate
  (Moosavi-Dezfooli et al. 2017: held-out images whose predicted class changes under the perturbation, over
  all held-out images, clean mistakes included; :func:`robustkit.engine.beyond_lp.perturbed_mistakes`).

Every rate has its 95% Clopper-Pearson interval. When the dataset has subgroup labels, every row also
gets worst-group accuracy and MacroStd for clean and robust accuracy (:mod:`robustkit.subgroups`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from robustkit.corruptions import mce, mean_accuracy
from robustkit.figures import save_png
from robustkit.outputs import write_text
from robustkit.patch import patch_side
from robustkit.stats import clopper_pearson_percent
from robustkit.subgroups import subgroup_metrics

from .beyond_lp import ExtraJob
from .leaderboard import format_eps, md_cell
from .report import THREAT_SECTIONS_MD
from .store import ResultStore
from .sweep import Sweep

SECTION_FILES = {"corruption": "corruption.csv", "patch": "patch.csv", "universal": "universal.csv"}
SUMMARY_CSV = "corruption_summary.csv"
CORRUPTION_PNG = "corruption.png"
SECTIONS_MD = THREAT_SECTIONS_MD


def _pct(count: int, n: int) -> float:
    return round(100.0 * count / n, 2) if n else float("nan")


def _with_ci(row: dict[str, Any], name: str, count: int, n: int) -> None:
    row[name] = _pct(count, n)
    row[f"{name}_ci_low"], row[f"{name}_ci_high"] = clopper_pearson_percent(count, n)


def subgroup_columns(samples: pd.DataFrame, groups: Any) -> dict[str, Any]:
    """Worst-group accuracy and MacroStd of clean and robust verdicts (empty without subgroup labels)."""
    if groups is None or samples.empty:
        return {}
    idx = samples["idx"].to_numpy(dtype=int) if "idx" in samples else samples["index"].to_numpy(dtype=int)
    g = np.asarray(groups)[idx]
    labels = samples["label"].to_numpy(dtype=int)
    out: dict[str, Any] = {}
    for prefix, column in (("clean", "clean_correct"), ("robust", "robust")):
        m = subgroup_metrics(samples[column].to_numpy(dtype=float), labels, g)
        out[f"{prefix}_worst_group_acc"] = m.worst_group_acc
        out[f"{prefix}_worst_group_ci_low"], out[f"{prefix}_worst_group_ci_high"] = m.worst_group_ci
        out[f"{prefix}_worst_group"] = m.worst_group
        out[f"{prefix}_macro_std"] = m.macro_std
        out[f"{prefix}_macro_std_ci_low"], out[f"{prefix}_macro_std_ci_high"] = m.macro_std_ci
    return out


def add_subgroup_columns(board: pd.DataFrame, per_sample: pd.DataFrame, sweep: Sweep) -> pd.DataFrame:
    """The Lp leaderboard with subgroup columns per (model, eps) row, when the dataset has subgroup labels."""
    groups = getattr(sweep.dataset, "groups", None)
    if groups is None or board.empty or per_sample.empty:
        return board
    extra = []
    for _, row in board.iterrows():
        sel = per_sample[(per_sample["model"] == row["model"]) & (per_sample["eps"] == row["eps"])]
        extra.append(subgroup_columns(sel, groups.numpy()) if row.get("evaluation", "empirical") == "empirical"
                     and not sel.empty else {})
    cols = pd.DataFrame(extra, index=board.index)
    at = list(board.columns).index("seconds") if "seconds" in board.columns else len(board.columns)
    return pd.concat([board.iloc[:, :at], cols, board.iloc[:, at:]], axis=1)


def _split(job: ExtraJob, n: int) -> tuple[str, str]:
    return (f"0..{job.start - 1}" if job.start else "", f"{job.start}..{n - 1}")


def section_tables(store: ResultStore, sweep: Sweep, jobs: list[ExtraJob],
                   flags: dict[str, str] | None = None) -> dict[str, pd.DataFrame]:
    """One table per non-Lp kind present in the sweep; ``flags`` maps a job id to its row's checks flags."""
    rows: dict[str, list[dict[str, Any]]] = {}
    groups = getattr(sweep.dataset, "groups", None)
    for job in jobs:
        spec = sweep.extra_threats[job.spec_index]
        s = store.samples(job.job_id)
        n = len(s)
        row: dict[str, Any] = {"model": job.model, "dataset": sweep.dataset.name}
        if job.kind == "corruption":
            row.update({"corruption": job.level[0], "severity": int(job.level[1]), "n_examples": n})
            _with_ci(row, "clean_acc", int(s["clean_correct"].sum()), n)
            _with_ci(row, "corruption_acc", int(s["robust"].sum()), n)
        else:
            row["train_split"], row["eval_split"] = _split(job, len(sweep.dataset))
            if job.kind == "patch":
                h, w = sweep.dataset.x.shape[-2:]
                row.update({"location": spec.location, "area": float(job.level),
                            "side": int(round((float(job.level) * h * w) ** 0.5))})
            else:
                row.update({"norm": spec.norm, "eps": float(job.level)})
            row["n_examples"] = n
            _with_ci(row, "clean_acc", int(s["clean_correct"].sum()), n)
            _with_ci(row, "robust_acc", int(s["robust"].sum()), n)
            bits = s["robust_after"].tolist()
            for j, label in enumerate(spec.labels):
                row[f"acc_{label}"] = _pct(sum(b[j] == "1" for b in bits), n)
            if job.kind == "universal":  # every held-out image whose predicted class changes, over all of them
                fooled = int((s["adv_pred"].astype("Int64").fillna(s["clean_pred"]) != s["clean_pred"]).sum())
                _with_ci(row, "fooling_rate", fooled, n)
            row["attacks"] = ";".join(f"{a.label}={a.config().get('implementation', 'unknown')}"
                                      for a in spec.attacks)
        row.update(subgroup_columns(s, None if groups is None else groups.numpy()))
        row["seconds"] = round(store.job_seconds(job.job_id), 2)
        row["flags"] = (flags or {}).get(job.job_id, "")
        rows.setdefault(job.kind, []).append(row)
    tables = {}
    for kind, items in rows.items():
        table = pd.DataFrame(items)
        if kind != "corruption":
            group = ["dataset", "location", "area"] if kind == "patch" else ["dataset", "norm", "eps"]
            table.insert(0, "rank", table.groupby(group)["robust_acc"].rank(method="min", ascending=False).astype(int))
            table = table.sort_values(group + ["rank", "model"], kind="mergesort").reset_index(drop=True)
        tables[kind] = table
    return tables


def section_per_sample(store: ResultStore, sweep: Sweep, jobs: list[ExtraJob]) -> pd.DataFrame:
    """One per_sample.csv row per (model, section level, evaluated example), in the Lp rows' columns plus
    :data:`SECTION_COLUMNS` (docs/engine.md, "per_sample.csv"). ``robust`` is the verdict under the threat
    model (corruption: the corrupted image is classified correctly, whether or not the clean one was);
    ``prediction`` the class predicted under it (the clean prediction where nothing was applied or changed);
    ``fooled`` (universal only) whether the perturbation changed the predicted class."""
    frames = []
    for job in jobs:
        spec = sweep.extra_threats[job.spec_index]
        side = patch_side(float(job.level), *sweep.dataset.x.shape[-2:]) if job.kind == "patch" else pd.NA
        s = store.samples(job.job_id)
        prediction = s["adv_pred"].astype("Int64").fillna(s["clean_pred"].astype("Int64")).astype("int64")
        frame = pd.DataFrame({
            "model": job.model, "dataset": sweep.dataset.name, "threat_model": job.kind,
            "norm": spec.norm if job.kind == "universal" else "",
            "eps": float(job.level) if job.kind == "universal" else float("nan"),
            "index": s["idx"].astype("int64"), "label": s["label"].astype("int64"),
            "clean_pred": s["clean_pred"].astype("int64"), "clean_correct": s["clean_correct"].astype("int64"),
            "robust": s["robust"].astype("int64"), "attacked": s["attacked"].astype("int64"),
            "broken_by": s["broken_by"].fillna(""), "broken_at_eps": s["broken_at_eps"].astype("float64"),
            "adv_pred": s["adv_pred"].astype("Int64"), "adv_norm": s["adv_norm"].astype("float64"),
            "job_id": job.job_id,
            "corruption": job.level[0] if job.kind == "corruption" else "",
            "severity": int(job.level[1]) if job.kind == "corruption" else pd.NA,
            "location": spec.location if job.kind == "patch" else "",
            "area": float(job.level) if job.kind == "patch" else float("nan"),
            "patch_side": side,
            "train_split": _split(job, len(sweep.dataset))[0],
            "split": "held-out" if job.start else "all",
            "prediction": prediction.where(s["robust"] == 0, s["label"].astype("int64")),
        })
        frame["severity"] = frame["severity"].astype("Int64")
        frame["patch_side"] = frame["patch_side"].astype("Int64")
        frame["fooled"] = ((frame["prediction"] != frame["clean_pred"]).astype("Int64") if job.kind == "universal"
                           else pd.array([pd.NA] * len(frame), dtype="Int64"))
        frames.append(frame)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def corruption_summary(store: ResultStore, sweep: Sweep, jobs: list[ExtraJob]) -> pd.DataFrame:
    """Per model: clean accuracy, mean corruption accuracy, mCE and relative mCE against the baseline."""
    by_model: dict[str, dict[tuple[str, int], np.ndarray]] = {}
    clean: dict[str, np.ndarray] = {}
    for job in (j for j in jobs if j.kind == "corruption"):
        s = store.samples(job.job_id)
        by_model.setdefault(job.model, {})[tuple(job.level)] = s["robust"].to_numpy(dtype=bool)
        clean[job.model] = s["clean_correct"].to_numpy(dtype=bool)
    if not by_model:
        return pd.DataFrame()
    baseline = next((spec.baseline for spec in sweep.extra_threats if spec.kind == "corruption"), None)
    rows = []
    for model, outcomes in by_model.items():
        n = len(clean[model])
        row: dict[str, Any] = {"model": model, "dataset": sweep.dataset.name, "n_examples": n,
                               "corruptions": len({c for c, _ in outcomes}), "severities": len({s for _, s in outcomes})}
        _with_ci(row, "clean_acc", int(clean[model].sum()), n)
        row["mean_corruption_acc"], row["mean_corruption_acc_ci_low"], row["mean_corruption_acc_ci_high"] = \
            mean_accuracy(outcomes)
        row["baseline"] = baseline or ""
        for name, relative in (("mce", False), ("relative_mce", True)):
            if baseline is None:
                row[name] = row[f"{name}_ci_low"] = row[f"{name}_ci_high"] = float("nan")
                continue
            row[name], row[f"{name}_ci_low"], row[f"{name}_ci_high"] = mce(
                outcomes, by_model[baseline], clean[model], clean[baseline], relative=relative)
        rows.append(row)
    table = pd.DataFrame(rows)
    table.insert(0, "rank", table["mean_corruption_acc"].rank(method="min", ascending=False).astype(int))
    return table.sort_values(["rank", "model"], kind="mergesort").reset_index(drop=True)


def _plain_md(table: pd.DataFrame) -> str:
    lines = ["| " + " | ".join(table.columns) + " |", "|" + "|".join("---" for _ in table.columns) + "|"]
    for _, row in table.iterrows():
        cells = []
        for col, v in row.items():
            if isinstance(v, float) and v != v:
                cells.append("")
            elif col == "eps":
                cells.append(format_eps(float(v)))
            else:
                cells.append(f"{v:.2f}" if isinstance(v, float) else md_cell(v))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_sections(out: Path, tables: dict[str, pd.DataFrame], summary: pd.DataFrame) -> str:
    """Write each section's CSV and ``threat_models.md`` (one section per threat model); return the markdown."""
    parts = []
    titles = {"corruption": "common corruptions", "patch": "adversarial patch", "universal": "universal perturbation"}
    for kind in ("corruption", "patch", "universal"):
        if kind not in tables:
            continue
        table = tables[kind]
        write_text(Path(out) / SECTION_FILES[kind], table.to_csv(index=False))
        hide = ("dataset", "attacks") + tuple(c for c in table.columns if "_ci_" in c and not c.startswith("robust_acc")
                                              and not c.startswith("corruption_acc"))
        if "flags" in table.columns and not table["flags"].fillna("").astype(str).str.len().any():
            hide += ("flags",)
        parts.append(f"## Threat model: {kind} ({titles[kind]})\n\n" + _plain_md(table[[c for c in table.columns
                                                                                        if c not in hide]]))
        if kind == "corruption":
            figure = corruption_plot(table, Path(out) / CORRUPTION_PNG)
            if figure is not None:
                parts.append(f"![accuracy under corruption]({figure.name})\n")
        if kind == "corruption" and not summary.empty:
            write_text(Path(out) / SUMMARY_CSV, summary.to_csv(index=False))
            parts.append("### Corruption summary (mCE against the baseline)\n\n" + _plain_md(summary.drop(columns=["dataset"])))
    text = "\n".join(parts)
    if text:
        write_text(Path(out) / SECTIONS_MD, text)
    return text


def corruption_plot(table: pd.DataFrame, path: Path) -> Path:
    """Accuracy vs severity, one panel per corruption, one line per model (with 95% intervals)."""
    names = list(dict.fromkeys(table["corruption"]))
    cols = min(5, len(names))
    rows = -(-len(names) // cols)
    fig = Figure(figsize=(2.6 * cols, 2.2 * rows))
    axes = fig.subplots(rows, cols, squeeze=False, sharey=True)
    for ax, name in zip(axes.flat, names):
        for model, frame in table[table["corruption"] == name].groupby("model", sort=False):
            frame = frame.sort_values("severity")
            err = [frame["corruption_acc"] - frame["corruption_acc_ci_low"],
                   frame["corruption_acc_ci_high"] - frame["corruption_acc"]]
            ax.errorbar(frame["severity"], frame["corruption_acc"], yerr=err, marker="o", capsize=2, label=model)
        ax.set_title(name, fontsize=8)
        ax.set_ylim(0, 100)
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    axes[0][0].legend(fontsize=6)
    fig.supxlabel("severity", fontsize=8)
    fig.supylabel("accuracy %", fontsize=8)
    return save_png(fig, path, dpi=110)
