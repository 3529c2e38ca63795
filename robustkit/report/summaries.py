"""Counts behind the plots, computed from the per-sample table alone (so tests can check them against the CSV).

* :func:`cascade_counts`: at each (model, eps), how many samples each attack broke there, how many were
  clean mistakes, how many were already broken at a smaller eps (the nested-ball rule), and how many are
  still robust -- the four always sum to the number of samples.
* :func:`per_class_accuracy`: robust accuracy per true class at each (model, eps).
"""
from __future__ import annotations

import pandas as pd

from robustkit.engine.cascade import CLEAN

CLEAN_MISTAKES = "clean mistakes"
SMALLER_EPS = "broken at a smaller eps"
ROBUST = "robust"


def attack_order(per_sample: pd.DataFrame, labels: list[str]) -> list[str]:
    """The breaking attacks in cascade order; an ensemble's components (``autoattack:square``) follow their
    attack's label, in the order they occur."""
    seen = [b for b in dict.fromkeys(per_sample["broken_by"].tolist()) if b and b != CLEAN]
    order: list[str] = []
    for label in labels:
        order += [b for b in seen if b == label or b.startswith(label + ":")]
    return order + [b for b in seen if b not in order]


def cascade_counts(per_sample: pd.DataFrame, labels: list[str]) -> pd.DataFrame:
    """One row per (model, eps): ``n`` and the count of each category (columns in stacking order)."""
    attacks = attack_order(per_sample, labels)
    rows = []
    for (model, eps), part in per_sample.groupby(["model", "eps"], sort=False):
        broken_here = part[(part["robust"] == 0) & (part["broken_at_eps"] == eps) & (part["broken_by"] != CLEAN)]
        row = {"model": model, "eps": float(eps), "n": len(part),
               CLEAN_MISTAKES: int((part["broken_by"] == CLEAN).sum()),
               SMALLER_EPS: int(((part["robust"] == 0) & (part["broken_by"] != CLEAN)
                                 & (part["broken_at_eps"] < eps)).sum())}
        for attack in attacks:
            row[attack] = int((broken_here["broken_by"] == attack).sum())
        row[ROBUST] = int(part["robust"].sum())
        rows.append(row)
    return pd.DataFrame(rows, columns=["model", "eps", "n", CLEAN_MISTAKES, SMALLER_EPS, *attacks, ROBUST])


def per_class_accuracy(per_sample: pd.DataFrame) -> pd.DataFrame:
    """Robust accuracy (%) per true class: rows (model, eps), columns the class labels, plus each class's n."""
    grouped = per_sample.groupby(["model", "eps", "label"], sort=False)["robust"]
    table = (100.0 * grouped.mean()).round(2).unstack("label")
    table = table.reindex(columns=sorted(table.columns))
    models = list(dict.fromkeys(per_sample["model"].tolist()))
    order = sorted(table.index, key=lambda me: (models.index(me[0]), me[1]))
    return table.loc[order]
