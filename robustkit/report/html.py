"""``report.html``: one self-contained page per run, rebuilt from the output folder alone.

Self-contained means it opens from a file or an e-mail attachment, offline: the CSS and JavaScript are
inline, every image is a base64 ``data:`` URI, nothing is fetched from a server or CDN. The page is rendered
from ``template.html`` (package data) with Jinja2, autoescaping every value taken from the run (model names
and config values are user text). The leaderboard rows are rendered as HTML (readable without JavaScript);
the inline script only sorts (click a column header) and filters (dataset, norm, eps, evaluation, model).
"""
from __future__ import annotations

import base64
import datetime as _dt
import json
import math
from importlib import resources
from pathlib import Path
from typing import Any

import jinja2
import pandas as pd

from robustkit.engine.leaderboard import format_eps
from robustkit.outputs import write_text
from robustkit.provenance import REPORTED_ENVIRONMENT

from .plots import PLOTS_DIR, write_plots
from .run_folder import RunFolder, safe_name

REPORT_HTML = "report.html"
TEMPLATE = "template.html"
PERCENT_COLUMNS = ("clean_acc", "robust_acc")


def data_uri(path: Path) -> str:
    """A PNG file as a ``data:image/png;base64,...`` URI (the page carries its images)."""
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode("ascii")


def _number(value: Any) -> float | None:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(v) else v


def _flag_explanations(run: RunFolder) -> dict[tuple[str, str], list[dict[str, Any]]]:
    """(model, flag) -> the fired check rows (message and eps): the explanations of each flag."""
    out: dict[tuple[str, str], list[dict[str, Any]]] = {}
    if run.checks.empty:
        return out
    fired = run.checks[(run.checks["fired"] == 1) & (run.checks["applicable"] == 1)]
    for r in fired.itertuples():
        eps = _number(r.eps)
        out.setdefault((r.model, r.name), []).append(
            {"eps": eps, "eps_text": "all eps" if eps is None else f"eps {format_eps(eps)}", "message": r.message})
    return out


def _columns(run: RunFolder) -> list[dict[str, Any]]:
    """The leaderboard columns shown, in order: key, header text, numeric or not."""
    board = run.leaderboard
    keys = ["rank", "model", "defense", "evaluation", "dataset", "norm", "eps", "n_examples", "clean_acc",
            "robust_acc", *[f"acc_{a}" for a in run.attack_labels], "p_vs_next", "tied_with_next", "flags", "seconds"]
    if not board["defense"].astype(str).str.len().any():
        keys.remove("defense")  # as in leaderboard.md: columns that say nothing in this run are left out
    if board["evaluation"].eq("empirical").all():
        keys.remove("evaluation")
    labels = {"n_examples": "n", "clean_acc": "clean %", "robust_acc": "robust % (95% CI)", "p_vs_next": "p vs next",
              "tied_with_next": "tied", "seconds": "seconds"}
    text_keys = {"model", "defense", "evaluation", "dataset", "norm", "flags"}
    return [{"key": k, "label": labels.get(k, k.replace("acc_", "after ") if k.startswith("acc_") else k),
             "numeric": k not in text_keys} for k in keys if k in board.columns]


def _cell(key: str, row: pd.Series, explanations: dict[tuple[str, str], list[dict[str, Any]]]) -> dict[str, Any]:
    value = row.get(key)
    num = _number(value)
    cell: dict[str, Any] = {"key": key}
    if key == "eps":
        cell.update(text=format_eps(float(value)), sort=float(value))
    elif key == "robust_acc" and num is not None:
        lo, hi = _number(row.get("robust_acc_ci_low")), _number(row.get("robust_acc_ci_high"))
        cell.update(text=f"{num:.2f}", sort=num, ci=None if lo is None or hi is None else
                    {"lo": lo, "hi": hi, "text": f"[{lo:.2f}, {hi:.2f}]"})
    elif key == "tied_with_next":
        cell.update(text="" if num is None else ("yes" if num else "no"), sort=-1 if num is None else num)
    elif key == "p_vs_next":
        cell.update(text="" if num is None else f"{num:.4f}", sort=2 if num is None else num)
    elif key == "flags":
        names = [f for f in str(value or "").split(";") if f]
        eps = float(row["eps"])
        cell.update(text=";".join(names), sort=";".join(names), flags=[
            {"name": f, "explanation": " ".join(e["message"] for e in explanations.get((row["model"], f), [])
                                                if e["eps"] is None or e["eps"] == eps)} for f in names])
    elif isinstance(value, str) or key in ("model", "defense", "evaluation", "dataset", "norm"):
        text = "" if value is None or (isinstance(value, float) and math.isnan(value)) else str(value)
        cell.update(text=text, sort=text.lower())
    else:
        cell.update(text="" if num is None else (f"{num:.2f}" if key not in ("rank", "n_examples") else f"{num:g}"),
                    sort=-1e18 if num is None else num)
    return cell


def _rows(run: RunFolder, columns: list[dict[str, Any]]) -> list[dict[str, Any]]:
    explanations = _flag_explanations(run)
    rows = []
    for _, row in run.leaderboard.iterrows():
        rows.append({"model": row["model"], "anchor": safe_name(str(row["model"])), "dataset": str(row["dataset"]),
                     "norm": str(row["norm"]), "eps": format_eps(float(row["eps"])),
                     "evaluation": str(row["evaluation"]),
                     "cells": [_cell(c["key"], row, explanations) for c in columns]})
    return rows


def _card(run: RunFolder, model: str) -> list[tuple[str, str]]:
    """The model card as the run recorded it (the resolved card of the sweep config), as key/value pairs."""
    source = run.model_source(model)
    card = source.get("card") if isinstance(source.get("card"), dict) else source
    pairs = []
    for key, value in card.items():
        if value in (None, {}, [], ""):
            continue
        pairs.append((key, value if isinstance(value, str) else json.dumps(value, sort_keys=True)))
    if isinstance(source.get("spec"), dict) and "defense" in source["spec"]:
        pairs.append(("defense", json.dumps(source["spec"]["defense"], sort_keys=True)))
    return pairs


def _model_checks(run: RunFolder, model: str) -> dict[str, Any]:
    part = run.checks[run.checks["model"] == model] if not run.checks.empty else run.checks
    if part.empty:
        return {"passed": [], "not_applicable": []}
    fired = set(part[(part["fired"] == 1) & (part["applicable"] == 1)]["name"])
    passed = sorted(set(part[(part["fired"] == 0) & (part["applicable"] == 1)]["name"]) - fired)
    na = sorted({(r.name, r.message) for r in part[part["applicable"] == 0].itertuples()})
    return {"passed": passed, "not_applicable": na}


def _timestamp(value: Any) -> str:
    num = _number(value)
    if num is None:
        return ""
    return _dt.datetime.fromtimestamp(num, tz=_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def _run_facts(run: RunFolder) -> list[tuple[str, str]]:
    prov, record = run.provenance, run.record
    env = prov.get("environment", {})
    data = prov.get("dataset", {})
    facts = [("run id", run.run_id), ("status", f"{record.get('status')} (attempts {record.get('attempts')})"),
             ("finished", _timestamp(record.get("finished_at"))),
             ("dataset", f"{data.get('name', run.dataset)}, n = {data.get('n_examples')}"),
             ("dataset sha256", str(data.get("content_hash", ""))),
             ("threat model", f"{prov.get('threat_model', {}).get('norm', run.norm)}, eps "
                              f"{', '.join(format_eps(float(e)) for e in prov.get('threat_model', {}).get('eps', []))}"),
             ("seed", str(prov.get("seed", ""))), ("checks", str(prov.get("checks", "")))]
    facts += [(k, str(env[k])) for k in REPORTED_ENVIRONMENT if k in env]
    return [(k, v) for k, v in facts if v]


def render_html(run: RunFolder, plots: dict[str, list[Path]]) -> str:
    """The page as a string (``plots``: the PNGs of :func:`robustkit.report.plots.write_plots`, by section)."""
    columns = _columns(run)
    explanations = _flag_explanations(run)

    def figures(paths: list[Path]) -> list[dict[str, str]]:
        return [{"title": p.stem.replace("_", " "), "src": data_uri(p)} for p in paths]

    models = []
    for model in run.models:
        paths = plots.get(model, [])
        prov = run.model_provenance(model)
        models.append({
            "name": model, "anchor": safe_name(model),
            "plots": figures([p for p in paths if p.stem != "examples"]),
            "examples": figures([p for p in paths if p.stem == "examples"]),
            "card": _card(run, model),
            "provenance": [(k, str(prov[k])) for k in ("class", "checkpoint_sha256", "tensors_sha256") if prov.get(k)],
            "flags": [{"name": name, **e} for (m, name), items in explanations.items() if m == model for e in items],
            "checks": _model_checks(run, model),
        })
    board = run.leaderboard
    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)
    template = env.from_string(resources.files("robustkit.report").joinpath(TEMPLATE).read_text(encoding="utf-8"))
    return template.render(
        title=f"robustkit report: {run.dataset}, {run.norm}", run=run, facts=_run_facts(run),
        columns=columns, rows=_rows(run, columns),
        filters={"dataset": sorted(board["dataset"].astype(str).unique()),
                 "norm": sorted(board["norm"].astype(str).unique()),
                 "eps": [format_eps(e) for e in sorted(board["eps"].astype(float).unique())],
                 **({"evaluation": sorted(board["evaluation"].unique())} if board["evaluation"].nunique() > 1
                    else {})},
        attacks=str(board["attacks"].iloc[0]) if len(board) and "attacks" in board.columns else "",
        overview=figures(plots.get("", [])), models=models,
        attack_configs=json.dumps(run.provenance.get("attacks", []), indent=1, sort_keys=True),
        has_checks=not run.checks.empty)


def write_html(run: RunFolder) -> Path:
    """Draw the plots and write ``report.html`` into the run's folder (atomically)."""
    plots = write_plots(run)
    return write_text(run.path / REPORT_HTML, render_html(run, plots))


__all__ = ["PLOTS_DIR", "REPORT_HTML", "data_uri", "render_html", "write_html"]
