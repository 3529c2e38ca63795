"""Robust accuracy over a whole eps range from one minimum-norm attack run, confirmed by the bounded sweep.

A minimum-norm attack (``fmn``, ``cw``) returns each sample's smallest adversarial perturbation it found
(``AttackResult.info["min_norm"]``), so one run gives robust accuracy at *every* eps
(:mod:`robustkit.curves`). A bounded attack suite, on the other hand, is only evaluated at the sweep's eps.
This module runs the minimum-norm attack once per model after the sweep and writes ``curve.csv``:

* the curve at a grid of eps (``points`` evenly spaced values from 0 to the largest minimal norm found, or
  the eps given), and
* at every eps of the sweep, the bounded suite's robust accuracy next to the curve's. Both are upper bounds
  on the true robust accuracy, so the smaller one is reported in ``robust_acc``. ``agrees`` is true where the
  bounded suite confirms the curve: its robust accuracy is not below the curve's (compared as exact counts).
  Where it is below, the bounded suite broke samples the minimum-norm attack did not break within that eps:
  the minimum-norm attack was weak there, and the curve between the confirmed points is likely too
  optimistic too (use more ``steps``, or trust only the confirmed points). The converse (the bounded suite
  above the curve) is not a disagreement: the curve is then the stronger attack at that eps.

Config: ``curve: {attack: fmn, points: 20}`` or ``curve: {attack: {name: fmn, steps: 200}, eps: [0.1, 0.2]}``;
Python: ``robustkit.evaluate(..., curve={"attack": "fmn", "eps": "auto"})``. A plot ``curve.png`` is written
when matplotlib is importable (it is not a dependency of robustkit; without it the plot is skipped).

The minimum-norm run is seeded per batch from the sweep seed, the model name and the batch index (so the same
sweep gives the same curve), and it is not stored in the results store: a resumed sweep recomputes it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import pandas as pd
import torch
from matplotlib.figure import Figure

from robustkit.attacks import Attack, build_attack, eval_mode
from robustkit.curves import full_robust_accuracy_curve, robust_accuracy_curve
from robustkit.identity import batch_seed
from robustkit.errors import ConfigError, RobustkitError, check_keys, short_repr
from robustkit.figures import save_png
from robustkit.outputs import output_dir, write_text
from robustkit.predict import predict
from robustkit.threat import ThreatModel, parse_eps, validate_eps

from .devices import auto_batch_size, on_device
from .sweep import Sweep

CURVE_KEYS = ("attack", "eps", "points")
DEFAULT_ATTACK = "fmn"
DEFAULT_POINTS = 20
CURVE_CSV = "curve.csv"
CURVE_PNG = "curve.png"
CURVE_COLUMNS = ["model", "dataset", "norm", "eps", "in_sweep", "robust_acc_min_norm", "robust_acc_bounded",
                 "agrees", "robust_acc", "n_examples", "attack"]


@dataclass(frozen=True)
class CurveSpec:
    """What to run for the curve: a minimum-norm attack and the eps to read the curve at (None: automatic)."""

    attack: Any = DEFAULT_ATTACK             # a name or a config mapping, as in the attack suite
    eps: tuple[float, ...] | None = None     # None: ``points`` values from 0 to the largest minimal norm
    points: int = DEFAULT_POINTS

    def to_json(self) -> dict[str, Any]:
        return {"attack": self.attack, "eps": "auto" if self.eps is None else list(self.eps), "points": self.points}

    def build(self) -> Attack:
        return build_attack(dict(self.attack) if isinstance(self.attack, Mapping) else self.attack)


def parse_curve(value: Any, norm: str | None = None, where: str = "curve") -> CurveSpec | None:
    """Validate the ``curve`` setting (config key or ``evaluate(curve=...)``); None/False means no curve.

    Accepts an attack name (``"fmn"``), ``True`` (the default ``fmn``) or a mapping with ``attack``, ``eps``
    (``"auto"`` or a list) and ``points``. With ``norm`` given, also checks that the attack supports it.
    """
    if value is None or value is False:
        return None
    if value is True:
        value = {}
    if isinstance(value, str):
        value = {"attack": value}
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where}: expected a mapping {{attack, eps, points}} or an attack name, "
                          f"got {type(value).__name__}")
    check_keys(value, CURVE_KEYS, f"{where}: ")
    points = value.get("points", DEFAULT_POINTS)
    if isinstance(points, bool) or not isinstance(points, int) or points < 2:
        raise ConfigError(f"{where}.points: expected an integer >= 2, got {short_repr(points)}")
    raw_eps = value.get("eps", "auto")
    eps: tuple[float, ...] | None
    if isinstance(raw_eps, str) and raw_eps.strip().lower() == "auto":
        eps = None
    else:
        items = raw_eps if isinstance(raw_eps, (list, tuple)) else [raw_eps]
        if not items:
            raise ConfigError(f"{where}.eps: expected 'auto' or a non-empty list of eps, got {short_repr(raw_eps)}")
        values = [parse_eps(e, f"{where}.eps") for e in items]
        for v in values:
            if math.isnan(v) or v < 0:
                raise ConfigError(f"{where}.eps: expected values >= 0, got {v}")
            if norm is not None and v > 0:
                validate_eps(v, norm, f"{where}.eps")
        eps = tuple(sorted(set(values)))
    attack_spec = value.get("attack", DEFAULT_ATTACK)
    try:
        attack = build_attack(dict(attack_spec) if isinstance(attack_spec, Mapping) else attack_spec)
    except RobustkitError as exc:  # unknown names are RobustkitErrors; here they are config errors
        raise ConfigError(f"{where}.attack: {exc}") from None
    if attack.kind != "minimum-norm":
        raise ConfigError(f"{where}.attack: expected a minimum-norm attack (cw, fmn), got {short_repr(attack.name)} "
                          f"(kind {attack.kind}): a bounded attack has no minimal norms to draw a curve from")
    if norm is not None and norm not in attack.norms:
        raise ConfigError(f"{where}.attack: {short_repr(attack.name)} supports norms {', '.join(attack.norms)}, not {norm}")
    return CurveSpec(attack=dict(attack_spec) if isinstance(attack_spec, Mapping) else attack_spec,
                     eps=eps, points=int(points))


def min_norms(model: torch.nn.Module, attack: Attack, x: torch.Tensor, y: torch.Tensor, norm: str, *,
              seed: int, key: str, batch_size: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Clean correctness and the minimal adversarial norms (inf: none found) of every sample, batch by batch.

    The attack's eps only decides which examples it returns; the minimal norms do not depend on it. Each
    batch gets its own seeded generator (from ``seed``, ``key`` and the batch index), like the sweep's batches.
    """
    threat = ThreatModel(norm, 1.0)
    correct, norms = [], []
    with eval_mode(model):
        for b, start in enumerate(range(0, x.shape[0], batch_size)):
            xb = x[start:start + batch_size].to(device)
            yb = y[start:start + batch_size].to(device)
            s = batch_seed(seed, f"curve:{key}", b)
            torch.manual_seed(s)
            generator = torch.Generator(device=device).manual_seed(s)
            result = attack(model, xb, yb, threat, generator=generator)
            if "min_norm" not in result.info:
                raise ConfigError(f"curve.attack: {short_repr(attack.name)} returned no per-sample minimal norms")
            correct.append((predict(model, xb) == yb).cpu())
            norms.append(result.info["min_norm"].detach().cpu().to(torch.float64))
    return torch.cat(correct), torch.cat(norms)


def _grid(spec: CurveSpec, norms_by_model: Mapping[str, tuple[torch.Tensor, torch.Tensor]],
          sweep_eps: Sequence[float]) -> list[float]:
    if spec.eps is not None:
        return list(spec.eps)
    finite = [float(n[c & torch.isfinite(n)].max()) for c, n in norms_by_model.values()
              if bool((c & torch.isfinite(n)).any())]
    upper = max([*finite, *sweep_eps, 0.0])
    if upper <= 0:
        return [0.0]
    return [upper * i / (spec.points - 1) for i in range(spec.points)]


def _percent(count: int, n: int) -> float:
    return round(100.0 * count / n, 2) if n else float("nan")


def curve_table(model_name: str, dataset: str, norm: str, correct: torch.Tensor, norms: torch.Tensor,
                grid: Sequence[float], bounded: Mapping[float, int], attack_impl: str) -> pd.DataFrame:
    """Rows of ``curve.csv`` for one model. ``bounded`` maps each sweep eps to the suite's robust count.

    The comparison is made on exact counts (not on rounded percentages): the curve is confirmed at a sweep
    eps when its robust count is at most the bounded suite's count.
    """
    n = int(correct.numel())
    eps_values = sorted(set(float(e) for e in grid) | set(float(e) for e in bounded))
    curve = dict(robust_accuracy_curve(correct, norms, eps_values))
    rows = []
    for eps in eps_values:
        curve_count = int(round(curve[eps] * n)) if n else 0
        in_sweep = eps in bounded
        bounded_count = bounded.get(eps)
        best = curve_count if bounded_count is None else min(curve_count, bounded_count)
        rows.append({
            "model": model_name, "dataset": dataset, "norm": norm, "eps": eps, "in_sweep": in_sweep,
            "robust_acc_min_norm": _percent(curve_count, n),
            "robust_acc_bounded": _percent(bounded_count, n) if in_sweep else float("nan"),
            "agrees": (curve_count <= bounded_count) if in_sweep else pd.NA,
            "robust_acc": _percent(best, n), "n_examples": n, "attack": attack_impl,
        })
    return pd.DataFrame(rows, columns=CURVE_COLUMNS)


def _bounded_counts(per_sample: pd.DataFrame, model_name: str, sweep_eps: Sequence[float]) -> dict[float, int]:
    rows = per_sample[per_sample["model"] == model_name]
    out = {}
    for eps in sweep_eps:
        at = rows[(rows["eps"] - float(eps)).abs() <= 1e-12 * max(1.0, float(eps))]
        if len(at):
            out[float(eps)] = int(at["robust"].sum())
    return out


def fill_curve(sweep: Sweep, per_sample: pd.DataFrame, spec: CurveSpec, out: Path | str,
               device: torch.device) -> pd.DataFrame:
    """Run the curve's minimum-norm attack on every model of ``sweep`` and write ``curve.csv`` (+ ``curve.png``).

    ``per_sample`` is the sweep's per-sample table (the bounded suite's verdicts). Returns the curve table.
    """
    attack = spec.build()
    batch_size = sweep.batch_size or auto_batch_size(tuple(sweep.dataset.x.shape[1:]), device)
    norms_by_model: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for entry in sweep.models:
        with on_device(entry.model, device):
            norms_by_model[entry.name] = min_norms(entry.model, attack, sweep.dataset.x, sweep.dataset.y, sweep.norm,
                                                   seed=sweep.seed, key=entry.name, batch_size=batch_size,
                                                   device=device)
    grid = _grid(spec, norms_by_model, sweep.eps)
    impl = f"{attack.name}={attack.config().get('implementation', 'robustkit')}"
    tables = [curve_table(name, sweep.dataset.name, sweep.norm, c, n, grid,
                          _bounded_counts(per_sample, name, sweep.eps), impl)
              for name, (c, n) in norms_by_model.items()]
    table = pd.concat(tables, ignore_index=True)
    out = output_dir(out)
    write_text(out / CURVE_CSV, table.to_csv(index=False))
    plot_curve(table, norms_by_model, out / CURVE_PNG, title=f"{sweep.dataset.name}, {sweep.norm}, {attack.name}")
    return table


def plot_curve(table: pd.DataFrame, norms_by_model: Mapping[str, tuple[torch.Tensor, torch.Tensor]],
               path: Path, title: str = "") -> Path:
    """Step curve per model plus the bounded suite's points."""
    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    upper = float(table["eps"].max()) if len(table) else 1.0
    for name, (correct, norms) in norms_by_model.items():
        steps = full_robust_accuracy_curve(correct, norms)
        xs = [e for e, _ in steps] + [max(upper, steps[-1][0])]
        ys = [100 * a for _, a in steps] + [100 * steps[-1][1]]
        line, = ax.step(xs, ys, where="post", label=f"{name} (min-norm curve)")
        confirmed = table[(table["model"] == name) & table["in_sweep"].astype(bool)]
        for _, row in confirmed.iterrows():
            ok = bool(row["agrees"])
            ax.plot(row["eps"], row["robust_acc_bounded"], marker="o" if ok else "x", linestyle="none",
                    color=line.get_color(), markersize=7, markerfacecolor="none" if ok else line.get_color())
    ax.plot([], [], marker="o", linestyle="none", color="gray", markerfacecolor="none",
            label="bounded suite (confirms the curve)")
    ax.plot([], [], marker="x", linestyle="none", color="gray", label="bounded suite below the curve")
    ax.set_xlabel("eps")
    ax.set_ylabel("robust accuracy (%)")
    ax.set_ylim(-2, 102)
    ax.set_xlim(left=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title)
    return save_png(fig, path)
