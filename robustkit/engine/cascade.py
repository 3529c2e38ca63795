"""One batch through the attack suite: the accounting rules that make a robust-accuracy number.

* Clean predictions first; a misclassified sample is broken "at eps 0" and never attacked.
* The attacks run in order, each only on the samples still robust (AutoAttack's cascade), so the final
  verdict is the per-sample worst case over the suite and no compute is spent on broken samples.
* Nested balls: at a larger eps, a sample broken at a smaller eps (its ``prior``) stays broken, keeps the
  breaking attack/eps/norm it had, and is not attacked again.
* The ENGINE re-predicts every adversarial example and checks its perturbation against the budget
  (:func:`robustkit.threat.check_budget`, relative tolerance 1e-6) before it counts, whatever the attack's
  own bookkeeping says: third-party attacks need not use the base class's checks, and an out-of-budget
  example is an error (:class:`robustkit.errors.BudgetViolationError`), never a success.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import pandas as pd
import torch
from torch import nn

from robustkit.attacks import Attack
from robustkit.errors import BudgetViolationError
from robustkit.passes import PassCounter, add_passes
from robustkit.predict import predict, verdict_is_randomized
from robustkit.threat import RTOL, ThreatModel, check_budget

CLEAN = "clean"  # ``broken_by`` of a sample the model gets wrong without any attack


@dataclass
class SampleState:
    """Per-sample results for a contiguous range of examples (all CPU; lists hold None where not broken)."""

    label: torch.Tensor                # int64 (n,)
    clean_pred: torch.Tensor           # int64 (n,)
    clean_correct: torch.Tensor        # bool (n,)
    robust_after: torch.Tensor         # bool (n, n_attacks): still robust after attack j (cumulative)
    robust: torch.Tensor               # bool (n,): robust after the whole suite
    attacked: torch.Tensor             # bool (n,): the cascade attacked it at this eps
    broken_by: list[str | None]
    broken_at_eps: list[float | None]
    adv_pred: list[int | None]
    adv_norm: list[float | None]
    # [forward, backward] sample-passes spent on this batch, per attack label ("clean": the clean predictions)
    passes: dict[str, list[int]] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.label.shape[0])

    @property
    def n_attacked(self) -> int:
        return int(self.attacked.sum())

    def rows(self, start: int) -> list[tuple[Any, ...]]:
        """Rows for :meth:`robustkit.engine.store.ResultStore.commit_batch` (indices offset by ``start``)."""
        out = []
        for i in range(len(self)):
            bits = "".join("1" if b else "0" for b in self.robust_after[i].tolist())
            out.append((start + i, int(self.label[i]), int(self.clean_pred[i]), int(self.clean_correct[i]), bits,
                        int(self.robust[i]), self.broken_by[i], self.broken_at_eps[i], self.adv_pred[i],
                        self.adv_norm[i], int(self.attacked[i])))
        return out

    @classmethod
    def from_frame(cls, frame: pd.DataFrame) -> "SampleState":
        """Rebuild the state of stored rows (columns of :data:`robustkit.engine.store.SAMPLE_COLUMNS`)."""
        def optional(col: str, kind: type) -> list[Any]:
            return [None if pd.isna(v) else kind(v) for v in frame[col].tolist()]

        bits = frame["robust_after"].tolist()
        k = len(bits[0]) if bits else 0
        robust_after = torch.tensor([[c == "1" for c in b] for b in bits], dtype=torch.bool).reshape(len(bits), k)
        return cls(
            label=torch.tensor(frame["label"].tolist(), dtype=torch.long),
            clean_pred=torch.tensor(frame["clean_pred"].tolist(), dtype=torch.long),
            clean_correct=torch.tensor(frame["clean_correct"].tolist(), dtype=torch.bool),
            robust_after=robust_after,
            robust=torch.tensor(frame["robust"].tolist(), dtype=torch.bool),
            attacked=torch.tensor(frame["attacked"].tolist(), dtype=torch.bool),
            broken_by=optional("broken_by", str),
            broken_at_eps=optional("broken_at_eps", float),
            adv_pred=optional("adv_pred", int),
            adv_norm=optional("adv_norm", float),
        )

    @staticmethod
    def concat(parts: Sequence["SampleState"]) -> "SampleState":
        """Join the states of consecutive chunks (used when a batch was split after running out of memory)."""
        if len(parts) == 1:
            return parts[0]
        cat = lambda name: torch.cat([getattr(p, name) for p in parts])  # noqa: E731
        join = lambda name: [v for p in parts for v in getattr(p, name)]  # noqa: E731
        passes: dict[str, list[int]] = {}
        for p in parts:
            for label, (fwd, bwd) in p.passes.items():
                add_passes(passes, label, fwd, bwd)
        return SampleState(cat("label"), cat("clean_pred"), cat("clean_correct"), cat("robust_after"), cat("robust"),
                           cat("attacked"), join("broken_by"), join("broken_at_eps"), join("adv_pred"),
                           join("adv_norm"), passes)


def _clean_state(model: nn.Module, x: torch.Tensor, y: torch.Tensor, n_attacks: int) -> SampleState:
    clean_pred = predict(model, x).cpu()
    label = y.cpu()
    correct = clean_pred == label
    wrong = (~correct).tolist()
    return SampleState(
        label=label, clean_pred=clean_pred, clean_correct=correct,
        robust_after=torch.zeros(len(wrong), n_attacks, dtype=torch.bool),
        robust=correct.clone(), attacked=correct.clone(),
        broken_by=[CLEAN if w else None for w in wrong],
        broken_at_eps=[0.0 if w else None for w in wrong],
        adv_pred=[int(p) if w else None for p, w in zip(clean_pred.tolist(), wrong)],
        adv_norm=[0.0 if w else None for w in wrong],
    )


def _inherited_state(prior: SampleState, n_attacks: int) -> SampleState:
    """Start a larger eps from the previous eps's verdicts: only its robust samples are attacked."""
    return SampleState(
        label=prior.label.clone(), clean_pred=prior.clean_pred.clone(), clean_correct=prior.clean_correct.clone(),
        robust_after=torch.zeros(len(prior), n_attacks, dtype=torch.bool),
        robust=prior.robust.clone(), attacked=prior.robust.clone(),
        broken_by=list(prior.broken_by), broken_at_eps=list(prior.broken_at_eps),
        adv_pred=list(prior.adv_pred), adv_norm=list(prior.adv_norm),
    )


def _component_names(result: object, n: int) -> list[str | None] | None:
    """Which part of an ensemble attack broke each sample (AutoAttack's ``info["broken_by"]``), if it says.

    Stored as ``<label>:<component>`` in ``broken_by`` so that the checks can see, for instance, that
    AutoAttack's score-based Square broke a sample its gradient components could not (a masking sign).
    """
    parts = (getattr(result, "info", None) or {}).get("broken_by")
    if not isinstance(parts, list) or len(parts) != n:
        return None
    return [p if isinstance(p, str) and p != CLEAN else None for p in parts]


def run_cascade(model: nn.Module, x: torch.Tensor, y: torch.Tensor, attacks: Sequence[Attack], threat: ThreatModel,
                *, prior: SampleState | None = None, generator: torch.Generator | None = None,
                keep: Callable[[list[int], torch.Tensor], None] | None = None) -> SampleState:
    """Evaluate one batch (already on the model's device, model in eval mode) at one eps.

    ``prior`` is the same examples' state at the previous eps of the nested list (None at the smallest).
    ``state.passes`` records the model passes of the clean predictions and of each attack (its engine
    re-prediction included), counted by :class:`robustkit.passes.PassCounter`. The one-time randomness probe
    of a model that declares nothing is made before counting, so the counts of a batch do not depend on
    whether it was the first one computed (a resumed run counts what a fresh one counts).
    ``keep(indices, x_adv)``, when given, receives every breaking example (batch positions, checked and
    re-predicted inputs): the patch section keeps them so that a resume can verify them again.
    """
    if prior is not None and len(prior) != x.shape[0]:
        raise ValueError(f"prior has {len(prior)} samples for a batch of {x.shape[0]}")
    verdict_is_randomized(model, x)
    with PassCounter(model) as counter:
        state = _clean_state(model, x, y, len(attacks)) if prior is None else _inherited_state(prior, len(attacks))
    if counter.total:
        add_passes(state.passes, CLEAN, *counter.snapshot())
    eps = float(threat.eps) if not isinstance(threat.eps, torch.Tensor) else threat.eps
    alive = state.robust.clone()
    for j, attack in enumerate(attacks):
        idx = alive.nonzero().squeeze(1)
        with PassCounter(model) as counter:
            if idx.numel():
                dev_idx = idx.to(x.device)
                xs, ys = x[dev_idx], y[dev_idx]
                sub_threat = threat.subset(dev_idx)
                result = attack(model, xs, ys, sub_threat, generator=generator)
                x_adv = getattr(result, "x_adv", result)
                if not isinstance(x_adv, torch.Tensor):
                    raise BudgetViolationError(f"attack {attack.label!r} returned {type(x_adv).__name__}, "
                                               f"not adversarial inputs")
                x_adv = x_adv.detach().to(device=xs.device, dtype=torch.float32)
                norms = check_budget(xs, x_adv, sub_threat.eps, threat.norm, rtol=RTOL,
                                     who=f"attack {attack.label!r} (engine check)", mask=sub_threat.mask,
                                     patch_side=threat.patch_side)
                pred = predict(model, x_adv)
                broke = (pred != ys).cpu()
                broke_idx = idx[broke].tolist()
                parts = _component_names(result, len(idx))
                part_of = ([parts[k] for k in broke.nonzero().squeeze(1).tolist()] if parts
                           else [None] * len(broke_idx))
                for i, p, nrm, part in zip(broke_idx, pred.cpu()[broke].tolist(), norms.cpu()[broke].tolist(),
                                           part_of):
                    state.broken_by[i] = f"{attack.label}:{part}" if part else attack.label
                    state.broken_at_eps[i] = float(eps) if not isinstance(eps, torch.Tensor) else float(eps[i])
                    state.adv_pred[i] = int(p)
                    state.adv_norm[i] = float(nrm)
                alive[idx[broke]] = False
                if keep is not None and broke_idx:
                    keep(broke_idx, x_adv[broke.to(x_adv.device)])
        add_passes(state.passes, attack.label, *counter.snapshot())
        state.robust_after[:, j] = alive
    state.robust = alive
    return state

