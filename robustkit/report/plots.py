"""The run's figures, as PNG (for the HTML report and the screen) and SVG (for papers), under ``OUT/plots/``.

Drawn on bare :class:`matplotlib.figure.Figure` objects, never through pyplot: nothing selects a GUI backend
or keeps figures alive globally, and PNGs are rendered by Agg, so no display is needed (server, CI). Every figure is computed
from the output folder (:class:`robustkit.report.run_folder.RunFolder`), never from the sweep in memory.

Legibility with many models: the run-level figures hold at most :data:`MODELS_PER_FIGURE` models each and
are split into numbered files beyond that (``robust_accuracy_vs_eps.png``, ``robust_accuracy_vs_eps-2.png``,
...); each model also gets its own figures under ``plots/models/<model>/`` for its section of the report.
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Sequence

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.colors import to_hex
from matplotlib.figure import Figure
from matplotlib.layout_engine import ConstrainedLayoutEngine

from robustkit.engine.leaderboard import format_eps
from robustkit.outputs import write_with

from .example_grid import example_grid
from .examples import load_examples
from .run_folder import RunFolder, safe_name
from .summaries import CLEAN_MISTAKES, ROBUST, SMALLER_EPS, cascade_counts, per_class_accuracy

PLOTS_DIR = "plots"
MODELS_DIR = "models"
MODELS_PER_FIGURE = 8
FORMATS = ("png", "svg")
DPI = 100
_FIXED_COLORS = {CLEAN_MISTAKES: "#9e9e9e", SMALLER_EPS: "#cfcfcf", ROBUST: "#2e7d32"}


def model_colors(models: Sequence[str]) -> dict[str, str]:
    """One stable colour per model (tab10, then tab20), the same in every figure of the run."""
    palette = [to_hex(c) for c in matplotlib.colormaps["tab10"].colors + matplotlib.colormaps["tab20"].colors]
    return {m: palette[i % len(palette)] for i, m in enumerate(models)}


def save(fig: Figure, stem: Path, formats: Sequence[str] = FORMATS) -> list[Path]:
    """``stem.png`` and ``stem.svg``, each written atomically (:mod:`robustkit.outputs`).

    The layout is computed once and then frozen, so the two formats do not each lay the figure out again;
    SVG text stays text (``svg.fonttype: none``): smaller, faster, and editable in a paper's figure.
    """
    stem.parent.mkdir(parents=True, exist_ok=True)
    engine = fig.get_layout_engine()
    if engine is not None:
        engine.execute(fig)
        fig.set_layout_engine("none")
    paths = []
    with matplotlib.rc_context({"svg.fonttype": "none"}):
        for fmt in formats:
            meta = {"Date": None} if fmt == "svg" else None  # no timestamp: the same run gives the same SVG
            paths.append(write_with(stem.with_name(f"{stem.name}.{fmt}"), lambda tmp, fmt=fmt, meta=meta:
                                    fig.savefig(tmp, dpi=DPI, format=fmt, metadata=meta)))
    return paths


def chunks(models: Sequence[str], size: int | None = None) -> list[list[str]]:
    """The models in groups of ``size`` (default :data:`MODELS_PER_FIGURE`), one group per figure."""
    size = size or MODELS_PER_FIGURE
    return [list(models[i:i + size]) for i in range(0, len(models), size)] or [[]]


def _band(ax: Axes, xs: Sequence[float], ys: Sequence[float], lo: Sequence[float], hi: Sequence[float],
          color: str, label: str, marker: str = "o") -> None:
    ax.fill_between(xs, lo, hi, color=color, alpha=0.18, linewidth=0)
    ax.plot(xs, ys, marker=marker, color=color, label=label, linewidth=1.8, markersize=4)


def _accuracy_axes(ax: Axes, xlabel: str) -> None:
    ax.set_xlabel(xlabel)
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(-2, 102)
    ax.set_xlim(left=0)
    ax.grid(alpha=0.3)


def empirical_curve(run: RunFolder, model: str) -> pd.DataFrame:
    """eps, accuracy and its 95% interval: the clean accuracy at eps 0, then the bounded suite at each eps."""
    rows = run.empirical[run.empirical["model"] == model].sort_values("eps")
    if rows.empty:
        return pd.DataFrame(columns=["eps", "acc", "lo", "hi"])
    first = rows.iloc[0]
    head = pd.DataFrame([{"eps": 0.0, "acc": first["clean_acc"], "lo": first["clean_acc_ci_low"],
                          "hi": first["clean_acc_ci_high"]}])
    body = pd.DataFrame({"eps": rows["eps"], "acc": rows["robust_acc"], "lo": rows["robust_acc_ci_low"],
                         "hi": rows["robust_acc_ci_high"]})
    return pd.concat([head, body], ignore_index=True)


def draw_accuracy(ax: Axes, run: RunFolder, models: Sequence[str], legend: str = "right") -> None:
    """Robust accuracy against eps with 95% Clopper-Pearson bands, and the minimum-norm curve where one ran."""
    colors = model_colors(run.models)
    for model in models:
        curve = empirical_curve(run, model)
        _band(ax, curve["eps"], curve["acc"], curve["lo"], curve["hi"], colors[model], f"{model}")
        if run.curve is not None:
            mn = run.curve[run.curve["model"] == model].sort_values("eps")
            if len(mn):
                ax.step(mn["eps"], mn["robust_acc_min_norm"], where="post", linestyle="--", color=colors[model],
                        linewidth=1.2, label=f"{model} (min-norm {mn['attack'].iloc[0].split('=')[0]})")
    _accuracy_axes(ax, f"eps ({run.norm})")
    ax.set_title(f"Robust accuracy vs eps ({run.dataset}, {run.norm}; bands: 95% Clopper-Pearson)", fontsize=9)
    if legend == "right":  # outside the axes, inside the figure (the constrained layout makes room for it)
        ax.figure.legend(*ax.get_legend_handles_labels(), fontsize=8, loc="outside right center", frameon=False)
    else:
        ax.legend(fontsize=8, loc="lower left", frameon=False)


def draw_certified(ax: Axes, run: RunFolder, model: str) -> None:
    """Certified accuracy of a certifiable model against the L2 radius, with 95% Clopper-Pearson bands."""
    cert = run.certified[run.certified["model"] == model].sort_values("eps")
    _band(ax, cert["eps"], cert["robust_acc"], cert["robust_acc_ci_low"], cert["robust_acc_ci_high"],
          model_colors(run.models)[model], "certified", marker="s")
    _accuracy_axes(ax, "L2 radius")
    ax.set_title(f"{model}: certified accuracy", fontsize=9)


def draw_cascade(ax: Axes, run: RunFolder, models: Sequence[str]) -> None:
    """Stacked bars per (model, eps): clean mistakes, broken at a smaller eps, broken by each attack, robust."""
    counts = cascade_counts(run.per_sample[run.per_sample["model"].isin(models)], run.attack_labels)
    categories = [c for c in counts.columns if c not in ("model", "eps", "n")]
    attack_colors = iter(matplotlib.colormaps["Set2"].colors + matplotlib.colormaps["Dark2"].colors)
    colors = {c: _FIXED_COLORS.get(c) or to_hex(next(attack_colors)) for c in categories}
    y = np.arange(len(counts))[::-1]
    left = np.zeros(len(counts))
    for cat in categories:
        values = counts[cat].to_numpy(dtype=float)
        ax.barh(y, values, left=left, color=colors[cat], label=cat if cat in _FIXED_COLORS else f"broken by {cat}",
                edgecolor="white", linewidth=0.5)
        for yi, lo, v, n in zip(y, left, values, counts["n"]):
            if v >= 0.06 * n:
                ax.text(lo + v / 2, yi, f"{int(v)}", ha="center", va="center", fontsize=7)
        left += values
    ax.set_yticks(y)
    ax.set_yticklabels([f"{m}  {format_eps(e)}" for m, e in zip(counts["model"], counts["eps"])], fontsize=8)
    ax.set_xlabel("samples")
    ax.set_xlim(0, float(counts["n"].max()) if len(counts) else 1)
    ax.set_title(f"Which attack broke each sample (model, eps in {run.norm})", fontsize=9)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.5 / max(1, len(counts)) - 0.12),
              ncol=min(4, len(categories)), frameon=False)


def draw_per_class(fig: Figure, ax: Axes, run: RunFolder, models: Sequence[str]) -> None:
    """Heatmap of robust accuracy per true class, one row per (model, eps)."""
    table = per_class_accuracy(run.per_sample[run.per_sample["model"].isin(models)])
    values = table.to_numpy(dtype=float)
    image = ax.imshow(values, vmin=0, vmax=100, cmap="viridis", aspect="auto")
    for (i, j), v in np.ndenumerate(values):
        if v == v:
            ax.text(j, i, f"{v:.0f}", ha="center", va="center", fontsize=7, color="white" if v < 60 else "black")
    ax.set_xticks(range(values.shape[1]))
    ax.set_xticklabels([str(c) for c in table.columns], fontsize=8)
    ax.set_yticks(range(values.shape[0]))
    ax.set_yticklabels([f"{m}  {format_eps(e)}" for m, e in table.index], fontsize=8)
    ax.set_xlabel("true class")
    ax.set_title(f"Robust accuracy (%) per class ({run.norm})", fontsize=9)
    fig.colorbar(image, ax=ax, fraction=0.03, pad=0.02)


def _rows(run: RunFolder, models: Sequence[str]) -> int:
    return max(1, int(run.per_sample[run.per_sample["model"].isin(models)].groupby(["model", "eps"]).ngroups))


def accuracy_vs_eps(run: RunFolder, models: Sequence[str]) -> Figure:
    fig = Figure(figsize=(7.4, 4.2), layout=ConstrainedLayoutEngine(w_pad=0.12))  # room for the outside legend
    draw_accuracy(fig.subplots(), run, models)
    return fig


def cascade(run: RunFolder, models: Sequence[str]) -> Figure:
    fig = Figure(figsize=(8.5, 1.6 + 0.42 * _rows(run, models)), layout="constrained")
    draw_cascade(fig.subplots(), run, models)
    return fig


def per_class(run: RunFolder, models: Sequence[str]) -> Figure:
    n_classes = run.per_sample["label"].nunique()
    fig = Figure(figsize=(max(5.0, 1.8 + 0.55 * n_classes), 1.1 + 0.34 * _rows(run, models)), layout="constrained")
    draw_per_class(fig, fig.subplots(), run, models)
    return fig


def certified_vs_radius(run: RunFolder, models: Sequence[str]) -> Figure:
    """Per certifiable model: certified accuracy against the L2 radius (left) beside its empirical curve (right)."""
    fig = Figure(figsize=(10, 3.2 * len(models)), layout="constrained")
    for (left, right), model in zip(fig.subplots(len(models), 2, squeeze=False), models):
        draw_certified(left, run, model)
        draw_accuracy(right, run, [model], legend="inside")
    return fig


def model_summary(run: RunFolder, model: str) -> Figure:
    """One model's figures in one: accuracy vs eps (and certified accuracy beside it), cascade, per class."""
    certifiable = bool((run.certified["model"] == model).any())
    n_rows = _rows(run, [model])
    mosaic = [["acc", "cert"] if certifiable else ["acc", "acc"], ["cascade", "cascade"], ["class", "class"]]
    fig = Figure(figsize=(9, 4.2 + 2 * (1.6 + 0.42 * n_rows)), layout="constrained")
    axes = fig.subplot_mosaic(mosaic, height_ratios=[4.2, 1.6 + 0.42 * n_rows, 1.1 + 0.34 * n_rows])
    draw_accuracy(axes["acc"], run, [model], legend="inside")
    if certifiable:
        draw_certified(axes["cert"], run, model)
    draw_cascade(axes["cascade"], run, [model])
    draw_per_class(fig, axes["class"], run, [model])
    return fig


def _numbered(stem: Path, i: int) -> Path:
    return stem if i == 0 else stem.with_name(f"{stem.name}-{i + 1}")


def write_plots(run: RunFolder) -> dict[str, list[Path]]:
    """Every figure of the run; returns the PNG paths by section ("" for the run, else the model's name).

    Run-level figures (PNG + SVG): robust accuracy vs eps, cascade, per class, certified accuracy (when a
    model is certifiable), split every :data:`MODELS_PER_FIGURE` models. Per model (under
    ``plots/models/<model>/``): ``summary`` (PNG + SVG) and the adversarial example grid ``examples`` (PNG:
    it is made of images). A run of one model uses the run-level figures as that model's own.
    """
    root = run.path / PLOTS_DIR
    if root.is_dir():  # plots/ belongs to this function: no figure of an earlier version or model stays behind
        shutil.rmtree(root)
    pngs: dict[str, list[Path]] = {"": []}
    certifiable = [m for m in run.models if (run.certified["model"] == m).any()]
    figures = [("robust_accuracy_vs_eps", accuracy_vs_eps, run.models), ("cascade", cascade, run.models),
               ("per_class", per_class, run.models), ("certified_accuracy", certified_vs_radius, certifiable)]
    for name, draw, models in figures:
        if not models:
            continue
        for i, group in enumerate(chunks(models)):
            pngs[""].append(save(draw(run, group), _numbered(root / name, i))[0])
    for model in run.models:
        folder = root / MODELS_DIR / safe_name(model)
        pngs[model] = list(pngs[""]) if len(run.models) == 1 else [save(model_summary(run, model),
                                                                       folder / "summary")[0]]
        examples = load_examples(run.path, model)
        if examples is not None and len(examples["index"]):
            pngs[model].append(save(example_grid(examples, model, run.norm), folder / "examples", ("png",))[0])
    extra = run.path / "transfer_grid.png"  # written by the transfer-grid stage when the suite has one
    if extra.is_file():
        pngs[""].append(extra)
    return pngs
