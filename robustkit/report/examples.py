"""A few adversarial examples per model, for the report's example grid (``OUT/examples/<model>.npz``).

The results store keeps every sample's verdict, not its adversarial image (storing every image of every
attack would multiply the store's size by the dataset's). The grid needs only a few, so after the sweep this
finishing stage **re-runs the breaking attack** on a few broken samples:

* the samples are the first ones (by dataset index) that an attack broke -- not the clean mistakes -- taken
  from the stored per-sample rows: their ``broken_by`` attack and ``broken_at_eps``;
* each one is attacked alone by that attack (AutoAttack as a whole when one of its components broke it), at
  that eps, with generators seeded from the stored seed of the batch the sample was evaluated in, so the
  stage is deterministic; the sample alone is not the batch, so the attack's random draws differ from the
  sweep's and the example is a re-run, not the stored one;
* the example is re-predicted and checked against the budget exactly like the sweep's (an out-of-budget
  example is an error); a re-run that does not fool the model again is skipped, and the next broken
  sample is tried (at most ``3 * k`` attempts).

The npz holds the clean and adversarial images, labels, predictions, eps, the attack and the perturbation
norm, plus a key of the jobs and attacks it was computed for, so a resumed or repeated run reuses it.
"""
from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn

from robustkit.attacks import Attack, eval_mode
from robustkit.engine.cascade import CLEAN
from robustkit.identity import canonical_json, sha256_text
from robustkit.engine.devices import on_device, seed_everything
from robustkit.engine.store import ResultStore
from robustkit.engine.sweep import Sweep
from robustkit.outputs import write_bytes
from robustkit.predict import predict
from robustkit.threat import RTOL, ThreatModel, check_budget

from .run_folder import safe_name

EXAMPLES_DIR = "examples"
EXAMPLES_PER_MODEL = 4


@dataclass(frozen=True)
class Candidate:
    """A broken sample of the stored results: where it broke and which attack broke it."""

    index: int
    eps: float
    broken_by: str
    job_id: str


def candidates(per_sample: pd.DataFrame, model: str) -> list[Candidate]:
    """The model's samples broken by an attack (not clean mistakes), by dataset index, with their breaking eps."""
    rows = per_sample[per_sample["model"] == model] if "model" in per_sample else per_sample  # no Lp entry: none
    if rows.empty:
        return []
    last = rows[rows["eps"] == rows["eps"].max()]
    broken = last[(last["robust"] == 0) & ~last["broken_by"].isin(["", CLEAN])].sort_values("index")
    job_at = {float(e): j for e, j in zip(rows["eps"], rows["job_id"])}
    out = []
    for r in broken.itertuples():
        eps = float(r.broken_at_eps)
        out.append(Candidate(int(r.index), eps, str(r.broken_by), job_at.get(eps, r.job_id)))
    return out


def examples_path(out: Path, model: str) -> Path:
    return Path(out) / EXAMPLES_DIR / f"{safe_name(model)}.npz"


def _stored_batch_seed(store: ResultStore, job_id: str, index: int) -> int:
    batches = store.batches(job_id)
    row = batches[(batches["start"] <= index) & (batches["stop"] > index)]
    if row.empty:
        return int(sha256_text(f"{job_id}:{index}")[:15], 16)
    return int(row["seed"].iloc[0])


def _attack_for(label: str, attacks: Sequence[Attack]) -> Attack | None:
    base = label.split(":", 1)[0]  # "autoattack:square" -> the AutoAttack of the suite
    return next((a for a in attacks if a.label == base), None)


def adversarial_examples(model: nn.Module, x: torch.Tensor, y: torch.Tensor, attacks: Sequence[Attack], norm: str,
                         picks: Sequence[Candidate], seeds: Sequence[int], device: torch.device,
                         k: int = EXAMPLES_PER_MODEL) -> dict[str, np.ndarray]:
    """Re-run the breaking attack on each candidate alone until ``k`` of them fool the model again.

    ``x``/``y`` are the whole dataset (CPU); ``seeds`` the stored batch seed of each candidate.
    """
    kept: dict[str, list[Any]] = {key: [] for key in ("index", "label", "clean_pred", "adv_pred", "eps", "attack",
                                                      "norm_value", "clean", "adv")}
    for cand, seed in zip(picks[: 3 * k], seeds):
        if len(kept["index"]) >= k:
            break
        attack = _attack_for(cand.broken_by, attacks)
        if attack is None:
            continue
        generator = seed_everything(seed, device)
        xs, ys = x[cand.index: cand.index + 1].to(device), y[cand.index: cand.index + 1].to(device)
        result = attack(model, xs, ys, ThreatModel(norm, cand.eps), generator=generator)
        x_adv = getattr(result, "x_adv", result).detach().to(device=device, dtype=torch.float32)
        norms = check_budget(xs, x_adv, cand.eps, norm, rtol=RTOL, who=f"attack {attack.label!r} (example grid)")
        adv_pred = int(predict(model, x_adv)[0])
        if adv_pred == int(ys[0]):
            continue  # this re-run did not break it again: show only examples that do
        kept["index"].append(cand.index)
        kept["label"].append(int(ys[0]))
        kept["clean_pred"].append(int(predict(model, xs)[0]))
        kept["adv_pred"].append(adv_pred)
        kept["eps"].append(cand.eps)
        kept["attack"].append(cand.broken_by)
        kept["norm_value"].append(float(norms[0]))
        kept["clean"].append(xs[0].cpu().numpy())
        kept["adv"].append(x_adv[0].cpu().numpy())
    shape = tuple(x.shape[1:])
    return {
        "index": np.asarray(kept["index"], dtype=np.int64), "label": np.asarray(kept["label"], dtype=np.int64),
        "clean_pred": np.asarray(kept["clean_pred"], dtype=np.int64),
        "adv_pred": np.asarray(kept["adv_pred"], dtype=np.int64), "eps": np.asarray(kept["eps"], dtype=np.float64),
        "attack": np.asarray(kept["attack"], dtype=str), "norm_value": np.asarray(kept["norm_value"]),
        "clean": np.asarray(kept["clean"], dtype=np.float32).reshape(-1, *shape),
        "adv": np.asarray(kept["adv"], dtype=np.float32).reshape(-1, *shape),
    }


def _key(picks: Sequence[Candidate], attacks: Sequence[Attack], k: int) -> str:
    return sha256_text(canonical_json({"k": k, "picks": [(c.index, c.eps, c.broken_by, c.job_id) for c in picks],
                                       "attacks": [a.config() for a in attacks]}))


def load_examples(out: Path, model: str) -> dict[str, np.ndarray] | None:
    """The stored examples of ``model`` (None when the run stored none)."""
    path = examples_path(out, model)
    if not path.is_file():
        return None
    with np.load(path, allow_pickle=False) as data:
        return {name: data[name] for name in data.files}


def write_examples(sweep: Sweep, out: Path | str, per_sample: pd.DataFrame, device: torch.device,
                   k: int = EXAMPLES_PER_MODEL) -> list[Path]:
    """The finishing stage: ``examples/<model>.npz`` for every model of ``sweep`` (reused when up to date)."""
    out = Path(out)
    written = []
    with ResultStore.open(out) as store:
        for entry in sweep.models:
            picks = candidates(per_sample, entry.name)[: 3 * k]
            path = examples_path(out, entry.name)
            key = _key(picks, sweep.attacks, k)
            if path.is_file():
                stored = load_examples(out, entry.name) or {}
                if str(stored.get("key", "")) == key:
                    written.append(path)
                    continue
            seeds = [_stored_batch_seed(store, c.job_id, c.index) for c in picks]
            with on_device(entry.model, device), eval_mode(entry.model):
                arrays = adversarial_examples(entry.model, sweep.dataset.x, sweep.dataset.y, sweep.attacks,
                                              sweep.norm, picks, seeds, device, k)
            arrays["key"] = np.asarray(key)
            arrays["meta"] = np.asarray(json.dumps({"model": entry.name, "norm": sweep.norm,
                                                    "dataset": sweep.dataset.name}))
            buffer = io.BytesIO()
            np.savez_compressed(buffer, **arrays)
            path.parent.mkdir(parents=True, exist_ok=True)
            written.append(write_bytes(path, buffer.getvalue()))
    return written
