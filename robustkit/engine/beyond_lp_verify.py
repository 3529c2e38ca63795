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

   * patch sections: every breaking patched example is kept (``<out>/patch/``, float32, as the engine
     checked it); each must exist for exactly the samples the attacks broke, pass the budget check again
     (only pixels inside its patch mask changed -- or, for searched places, inside a square of the patch's
     side -- values in [0, 1]) and re-predict to the stored ``adv_pred``.
"""
from __future__ import annotations

import io
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn

from robustkit.errors import BudgetViolationError
from robustkit.predict import predict
from robustkit.threat import RTOL, ThreatModel, check_budget

from .cascade import CLEAN
from .store import ResultStore
from .store_integrity import CASCADE, CORRUPTION

# (batch index, start, stop, the batch's stored rows) -> why the batch fails a re-prediction, or None
Recheck = Callable[[int, int, int, pd.DataFrame], "str | None"]
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


def save_patch_examples(indices: Sequence[int], x_adv: Sequence[torch.Tensor]) -> bytes:
    """The bytes of ``<out>/patch/<job>-<start>-<stop>.npz``: a patch batch's breaking examples (dataset
    indices and float32 inputs, exactly as the engine checked and re-predicted them)."""
    buf = io.BytesIO()
    x = torch.cat([t.detach().cpu().float() for t in x_adv]) if x_adv else torch.zeros(0)
    np.savez(buf, index=np.asarray(indices, dtype=np.int64), x_adv=x.numpy())
    return buf.getvalue()


def check_kept_patches(path: Path, model: nn.Module, x: torch.Tensor, start: int, stored: pd.DataFrame,
                       threat: ThreatModel, device: torch.device) -> str | None:
    """Why a patch batch's kept breaking examples do not back its stored rows (None when they do): one kept
    example per sample an attack broke, each within the budget (only pixels inside the sample's patch mask,
    or a square of the patch's side for searched places, changed; values in [0, 1]) and re-predicted as
    stored (``adv_pred``, which is not the label)."""
    broken = stored[~stored["broken_by"].fillna(CLEAN).isin((CLEAN,))]
    if not path.is_file():
        return "its patched examples are not kept (made by an older robustkit, or deleted)"
    try:
        with np.load(path, allow_pickle=False) as data:
            index, x_adv = data["index"].astype(np.int64), torch.from_numpy(data["x_adv"]).float()
    except Exception:  # noqa: BLE001 - a damaged file is recomputed, never trusted
        return "its kept patched examples are unreadable"
    if sorted(index.tolist()) != sorted(broken["idx"].astype(int).tolist()) or len(index) != x_adv.shape[0]:
        return "its kept patched examples are not those of the samples the attacks broke"
    if not len(index):
        return None
    local = torch.as_tensor(index - start, dtype=torch.long)
    sub = threat.subset(local.to(threat.mask.device) if threat.mask is not None else local)
    try:
        check_budget(x[local].to(device), x_adv.to(device), sub.eps, threat.norm, mask=sub.mask,
                     patch_side=threat.patch_side, who="a kept patched example")
    except BudgetViolationError as exc:
        return str(exc)
    pred = predict(model, x_adv.to(device)).cpu().numpy()
    rows = broken.set_index("idx").loc[index]
    wrong = int(((pred != rows["adv_pred"].to_numpy()) | (pred == rows["label"].to_numpy())).sum())
    return f"{wrong} kept patched example(s) re-predict differently from the stored rows" if wrong else None


def verify_extra_job(store: ResultStore, job_id: str, kind: str, *, first: int, n_examples: int, batch_size: int,
                     labels: Sequence[int], n_attacks: int, recheck: Recheck | None) -> list[str]:
    """Verify one non-Lp job's stored batches (rows, then re-prediction when ``recheck`` is given); the
    failing ones are dropped from the store. Returns one description per dropped batch."""
    dropped = store.verify_job(job_id, n_examples=n_examples, batch_size=batch_size, labels=labels,
                               n_attacks=1 if kind == "corruption" else n_attacks, offset=first,
                               rules=CORRUPTION if kind == "corruption" else CASCADE, budget=kind != "corruption")
    if recheck is None:
        return dropped
    bad: dict[int, str] = {}
    for b, batch in store.finished_batches(job_id).items():
        why = recheck(b, batch.start, batch.stop, store.samples(job_id, batch.start, batch.stop))
        if why:
            bad[b] = why
    store.drop_batches(job_id, list(bad))
    return dropped + [f"batch {b} ({why})" for b, why in sorted(bad.items())]
