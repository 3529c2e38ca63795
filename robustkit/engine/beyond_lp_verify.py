"""Verifying the stored corruption / patch / universal results before a resumed sweep trusts them.

The same rule as for the Lp jobs (docs/security.md, "The results store is verified when it is read"): a
stored batch that fails is dropped, said on stderr, and recomputed. Two layers:

1. **Rows** (:meth:`robustkit.engine.store.ResultStore.verify_job`): the batch layout from the job's first
   evaluated example (the held-out split of a universal section starts after the training split), one row
   per example, the dataset's labels, ``clean_correct == (clean_pred == label)``; a corruption row's verdict
   bit, prediction and severity; a patch / universal row's cumulative attack bits and, for every sample an
   attack broke, its stored perturbation norm within the budget (the patch's Linf 1 inside the mask, the
   UAP's eps).
2. **Re-prediction**, where what the verdicts came from is kept in the output folder:

   * corruption: the cached corrupted batch (``<out>/corrupted/``) must be what the seed gives (its first
     image is corrupted again and compared byte for byte: *determinism*), and the model's predictions on it
     and on the clean batch must be the stored ones;
   * universal sections (and patch sections whose attacks are all universal): the fitted perturbation
     (``<out>/universal/``) must be readable and within its budget (a UAP's norm <= eps, a patch's pixels in
     [0, 1]; else it is fitted again and every batch of the job recomputed), then it is applied again through the engine's cascade -- budget check (norm, or patch
     mask) and re-prediction included -- and must give the stored verdicts and predictions.

   Per-image patches are not kept (one optimised patch per image), so their batches get the row layer only;
   their budget and mask were checked, and their examples re-predicted, by the engine when they were made.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

import pandas as pd
import torch

from robustkit.threat import RTOL

from .store import ResultStore
from .store_integrity import CASCADE, CORRUPTION

# (batch index, start, stop) -> the batch's rows computed again, as ResultStore.commit_batch takes them
Recompute = Callable[[int, int, int], Sequence[Sequence[Any]]]
COMPARED = ("idx", "clean_pred", "robust_after", "robust", "adv_pred")


def kept_payload(path: Path, attack: str, norm: str, eps: float) -> dict[str, Any] | None:
    """The universal perturbation kept in ``path`` ({"payload", "info"}), or None when it cannot be trusted:
    unreadable, not finite, a UAP outside its ``norm`` ball of radius ``eps`` (engine tolerance), or patch
    pixels outside [0, 1]."""
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
        payload = saved["payload"]
        if not isinstance(payload, torch.Tensor) or not isinstance(saved.get("info"), dict):
            return None
    except Exception:  # noqa: BLE001 - any damaged file is refitted, never trusted
        return None
    if not bool(torch.isfinite(payload).all()):
        return None
    if attack == "uap":
        size = float(payload.abs().max()) if norm == "Linf" else float(payload.flatten().norm(p=2))
        return saved if size <= eps * (1 + RTOL) else None
    return saved if float(payload.min()) >= 0.0 and float(payload.max()) <= 1.0 else None


def _value(v: Any) -> Any:
    return None if v is None or pd.isna(v) else (v if isinstance(v, str) else int(v))


def rows_differ(rows: Sequence[Sequence[Any]], stored: pd.DataFrame) -> str | None:
    """Why the recomputed ``rows`` and the stored ones disagree (None when they agree on every index, clean
    prediction, verdict bit and prediction under the threat; perturbation norms and timings are not compared)."""
    fresh = [tuple(_value(r[k]) for k in (0, 2, 4, 5, 8)) for r in rows]
    old = [tuple(_value(v) for v in t) for t in stored[list(COMPARED)].itertuples(index=False)]
    if len(fresh) != len(old):
        return f"{len(old)} stored rows, {len(fresh)} recomputed"
    diff = sum(a != b for a, b in zip(fresh, old))
    return f"{diff} stored row(s) differ from a re-prediction" if diff else None


def verify_extra_job(store: ResultStore, job_id: str, kind: str, *, first: int, n_examples: int, batch_size: int,
                     labels: Sequence[int], n_attacks: int, recompute: Recompute | None) -> list[str]:
    """Verify one non-Lp job's stored batches (rows, then re-prediction when ``recompute`` is given); the
    failing ones are dropped from the store. Returns one description per dropped batch."""
    dropped = store.verify_job(job_id, n_examples=n_examples, batch_size=batch_size, labels=labels,
                               n_attacks=1 if kind == "corruption" else n_attacks, offset=first,
                               rules=CORRUPTION if kind == "corruption" else CASCADE, budget=kind != "corruption")
    if recompute is None:
        return dropped
    bad: dict[int, str] = {}
    for b, batch in store.finished_batches(job_id).items():
        why = rows_differ(recompute(b, batch.start, batch.stop), store.samples(job_id, batch.start, batch.stop))
        if why:
            bad[b] = why
    store.drop_batches(job_id, list(bad))
    return dropped + [f"batch {b} ({why})" for b, why in sorted(bad.items())]
