"""``robustkit export RUN_DIR --format robustbench``: one RobustBench-style ``model_info`` JSON per model.

RobustBench keeps one JSON per model under ``model_info/<dataset>/<threat model>/<name>.json`` with the
fields ``link, name, authors, additional_data, number_forward_passes, dataset, venue, architecture, eps,
clean_acc, reported, autoattack_acc, footnote, unreliable`` (accuracies as strings with two decimals, eps as
written, e.g. "8/255"). We write the same layout and fields, filled from the run, and add what RobustBench
leaves implicit:

* ``eps``: RobustBench has one eps per threat model; a run may have several, so the file is for one eps (the
  run's largest unless ``--eps`` says otherwise) and ``robustkit.per_eps`` lists every eps of the run;
* ``autoattack_acc``: the cumulative robust accuracy through the suite's AutoAttack (the ``acc_<label>``
  column of its label). When AutoAttack runs after other attacks, that is the worst case over those attacks
  and AutoAttack -- at most AutoAttack's own number -- and the footnote says so. Without AutoAttack in the
  suite it is null and ``robust_acc`` (the worst case over the suite) is given instead;
* ``unreliable``: true when a check flagged the row (the footnote names the flags; docs/checks.md);
* fields the run cannot know (paper link, authors, venue, additional data) are empty strings / null for the
  author to fill in; ``reported`` is empty;
* ``threat_model``, ``n_examples``, ``attacks`` and ``provenance`` (run id, versions, device, seed, data and
  checkpoint hashes, the full attack configs).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from robustkit.engine.leaderboard import format_eps
from robustkit.errors import RobustkitError
from robustkit.outputs import output_dir, write_text

from .run_folder import RunFolder, safe_name

FORMATS = ("robustbench",)
EXPORT_DIR = "robustbench"


def _pct(value: Any) -> str | None:
    return None if value is None or pd.isna(value) else f"{float(value):.2f}"


def _autoattack_label(run: RunFolder) -> tuple[str | None, dict[str, Any]]:
    """The label and config of the suite's AutoAttack, if it has one."""
    for cfg in run.provenance.get("attacks", []) or []:
        if str(cfg.get("name", "")).lower() in ("autoattack", "aa"):
            return str(cfg.get("label") or cfg["name"]), cfg
    return None, {}


def _pick_eps(run: RunFolder, eps: float | None) -> float:
    available = sorted(run.empirical["eps"].astype(float).unique())
    if not available:
        raise RobustkitError(f"{run.path}: no empirical leaderboard rows to export")
    if eps is None:
        return available[-1]
    for e in available:
        if abs(e - eps) <= 1e-9 * max(1.0, abs(eps)):
            return e
    raise RobustkitError(f"--eps {format_eps(eps)}: not an eps of this run; its eps are "
                         f"{', '.join(format_eps(e) for e in available)}")


def model_info(run: RunFolder, model: str, eps: float) -> dict[str, Any]:
    """The model_info mapping of ``model`` at ``eps``."""
    rows = run.empirical[run.empirical["model"] == model].sort_values("eps")
    row = rows[rows["eps"] == eps].iloc[0]
    label, aa_cfg = _autoattack_label(run)
    notes = []
    aa_acc = None
    if label is not None:
        aa_acc = _pct(row.get(f"acc_{label}"))
        if run.attack_labels and run.attack_labels[0] != label:
            notes.append(f"autoattack_acc is the worst case over {', '.join(run.attack_labels[:run.attack_labels.index(label) + 1])} "
                         f"(a cascade; at most AutoAttack's own number)")
        if aa_cfg.get("version") not in (None, "standard") or aa_cfg.get("attacks_to_run"):
            notes.append(f"AutoAttack version {aa_cfg.get('version')}, attacks {aa_cfg.get('attacks_to_run')}")
    else:
        notes.append(f"AutoAttack was not run; robust_acc is the worst case over {', '.join(run.attack_labels)}")
    flags = [f for f in str(row.get("flags") or "").split(";") if f]
    if flags:
        notes.append(f"robustkit checks flagged: {', '.join(flags)} (docs/checks.md)")
    source = run.model_source(model)
    card = source.get("card") if isinstance(source.get("card"), dict) else {}
    prov = run.provenance
    return {
        "link": "", "name": model, "authors": "", "additional_data": None, "number_forward_passes": 1,
        "dataset": run.dataset, "venue": "", "architecture": card.get("arch") or run.model_provenance(model).get("class", ""),
        "eps": format_eps(float(eps)), "clean_acc": _pct(row["clean_acc"]), "reported": "",
        "autoattack_acc": aa_acc, "footnote": "; ".join(notes), "unreliable": bool(flags),
        "threat_model": run.norm, "n_examples": int(row["n_examples"]),
        "robust_acc": _pct(row["robust_acc"]),
        "robust_acc_ci95": [_pct(row["robust_acc_ci_low"]), _pct(row["robust_acc_ci_high"])],
        "defense": str(row.get("defense") or ""),
        "attacks": str(row.get("attacks", "")),
        "robustkit": {
            "per_eps": [{"eps": format_eps(float(r.eps)), "clean_acc": _pct(r.clean_acc), "robust_acc": _pct(r.robust_acc),
                         "autoattack_acc": _pct(getattr(r, f"acc_{label}", None)) if label else None,
                         "flags": str(r.flags or "")} for r in rows.itertuples()],
            "run_id": run.run_id, "environment": prov.get("environment", {}), "seed": prov.get("seed"),
            "dataset_sha256": run.dataset_hash, "model": run.model_provenance(model),
            "attack_configs": prov.get("attacks", []),
        },
    }


def export_robustbench(run: RunFolder, out: Path | str | None = None, eps: float | None = None) -> list[Path]:
    """Write ``<out>/<dataset>/<norm>/<model>.json`` for every model (default out: ``RUN_DIR/robustbench``)."""
    chosen = _pick_eps(run, eps)
    folder = Path(out) if out is not None else run.path / EXPORT_DIR
    folder = output_dir(folder / run.dataset / run.norm, "export folder")
    written = []
    for model in run.models:
        if not ((run.empirical["model"] == model) & (run.empirical["eps"] == chosen)).any():
            continue
        written.append(write_text(folder / f"{safe_name(model)}.json",
                                  json.dumps(model_info(run, model, chosen), indent=2) + "\n"))
    return written
