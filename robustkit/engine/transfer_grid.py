"""The transfer-grid finishing stage: PubDef's (surrogate x attack) grid as a CSV and a heatmap.

A ``transfer-grid`` attack in the suite (:class:`robustkit.attacks.transfer.TransferGridAttack`) gives each
leaderboard row the worst case over the grid, per sample. The grid itself -- the target's accuracy on the
examples of each pair alone -- needs every pair on every sample, which the cascade does not keep (it stores
per-sample verdicts, not per-pair ones, and attacks at a larger eps only what survived the smaller one). So
after the sweep this stage runs each transfer-grid attack once more per (model, eps) on all samples, with a
generator seeded from the sweep seed and the cell's identity, and writes

* ``transfer_grid.csv``: ``model, eps, surrogate, attack, n_examples, robust_count, robust_acc`` per pair,
  plus one ``worst case`` row per (model, eps) (the per-sample worst case over the grid: the row's number in
  the leaderboard, recomputed here; with random starts the two may differ by the attacks' randomness);
* ``transfer_grid.png``: one heatmap per (model, eps) (surrogates x attacks, robust accuracy in %), when
  matplotlib imports (it is a dependency; a broken install only loses the figure, never the CSV).

Results are cached per cell identity under ``transfer_grid/`` in the output folder, so a resumed sweep does
not recompute them.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from matplotlib.figure import Figure

import robustkit
from robustkit.attacks import eval_mode
from robustkit.attacks.transfer import TransferGridAttack
from robustkit.figures import save_png
from robustkit.outputs import output_dir, write_text
from robustkit.threat import ThreatModel

from robustkit import identity
from .sweep import Sweep

GRID_CSV = "transfer_grid.csv"
GRID_PNG = "transfer_grid.png"
WORST = "worst case"
COLUMNS = ["model", "eps", "surrogate", "attack", "n_examples", "robust_count", "robust_acc"]


def grid_attacks(sweep: Sweep) -> list[TransferGridAttack]:
    """The suite's transfer-grid attacks (the stage does nothing without one)."""
    return [a for a in sweep.attacks if isinstance(a, TransferGridAttack)]


def _cell(model: torch.nn.Module, attack: TransferGridAttack, x: torch.Tensor, y: torch.Tensor, eps: float,
          norm: str, seed: int, batch_size: int) -> list[dict[str, Any]]:
    """Per-pair and worst-case robust counts of one (model, attack, eps) on all samples."""
    n = int(x.shape[0])
    generator = torch.Generator(device=x.device).manual_seed(seed)
    fooled: dict[tuple[str, str], int] = {}
    robust = 0
    with eval_mode(model):
        for start in range(0, n, batch_size):
            xb, yb = x[start:start + batch_size], y[start:start + batch_size]
            res = attack(model, xb, yb, ThreatModel(norm, eps), generator=generator)
            robust += int((~res.success).sum())
            clean = int(res.info["clean_fooled"])
            for pair in res.info["pairs"]:
                key = (pair["surrogate"], pair["attack"])
                fooled[key] = fooled.get(key, 0) + clean + int(pair["target_fooled"])
    rows = [{"surrogate": s, "attack": a, "n_examples": n, "robust_count": n - f} for (s, a), f in fooled.items()]
    rows.append({"surrogate": WORST, "attack": WORST, "n_examples": n, "robust_count": robust})
    return rows


def _cached_cell(path: Path, n: int) -> list[dict[str, Any]] | None:
    """A cached grid cell, verified on read (docs/security.md): unreadable or inconsistent content -- not a
    list of rows with the surrogate/attack names and 0 <= robust_count <= n_examples == n, or no worst-case
    row -- is ignored, so the cell is recomputed instead of trusted."""
    try:
        with open(path, encoding="utf-8") as f:
            cell = json.loads(f.read(16 << 20))
        ok = (isinstance(cell, list) and any(isinstance(r, dict) and r.get("surrogate") == WORST for r in cell)
              and all(isinstance(r, dict) and isinstance(r.get("surrogate"), str) and isinstance(r.get("attack"), str)
                      and r.get("n_examples") == n and isinstance(r.get("robust_count"), int)
                      and not isinstance(r.get("robust_count"), bool) and 0 <= r["robust_count"] <= n
                      for r in cell))
    except (OSError, ValueError):
        return None
    return cell if ok else None


def run_transfer_grid(sweep: Sweep, out: Path, device: torch.device, batch_size: int) -> pd.DataFrame | None:
    """Compute (or read from the cache) every grid cell of the sweep and write the CSV and the heatmap.

    Returns the grid table, or None when the suite has no transfer-grid attack.
    """
    attacks = grid_attacks(sweep)
    if not attacks:
        return None
    cache = Path(out) / "transfer_grid"
    output_dir(cache)
    rows: list[dict[str, Any]] = []
    x_all, y_all = sweep.dataset.x, sweep.dataset.y
    for entry in sweep.models:
        fingerprint = identity.model_fingerprint(entry.model)
        for attack in attacks:
            for eps in sweep.eps:
                ident = {"kind": "transfer-grid", "model": fingerprint, "attack": attack.config(), "eps": eps,
                         "norm": sweep.norm, "dataset": sweep.dataset.content_hash, "seed": sweep.seed,
                         "robustkit_version": robustkit.__version__}
                key = identity.job_id(ident)
                path = cache / f"{key}.json"
                cell = _cached_cell(path, len(sweep.dataset))
                if cell is None:
                    original = next((p.device for p in entry.model.parameters()), torch.device("cpu"))
                    entry.model.to(device)
                    try:
                        cell = _cell(entry.model, attack, x_all.to(device), y_all.to(device), eps, sweep.norm,
                                     identity.batch_seed(sweep.seed, key, 0), batch_size)
                    finally:
                        entry.model.to(original)
                    write_text(path, json.dumps(cell))
                label = entry.name if len(attacks) == 1 else f"{entry.name} [{attack.label}]"
                for row in cell:
                    rows.append({"model": label, "eps": eps, **row,
                                 "robust_acc": round(100.0 * row["robust_count"] / max(1, row["n_examples"]), 2)})
    table = pd.DataFrame(rows, columns=COLUMNS)
    write_text(Path(out) / GRID_CSV, table.to_csv(index=False))
    figure = write_heatmap(table, Path(out) / GRID_PNG)
    append_to_report(Path(out), table, figure)
    return table


def append_to_report(out: Path, table: pd.DataFrame, figure: Path | None) -> None:
    """Add the grid (table and heatmap) to the run's ``report.md``."""
    report = out / "report.md"
    if not report.is_file():
        return
    lines = ["", "## Transfer grid (PubDef threat model)", "",
             f"Target accuracy on the examples of each surrogate x attack pair alone ({GRID_CSV}); the "
             f"leaderboard row is the worst case over the grid, per sample.", ""]
    lines.append("| model | eps | surrogate | attack | robust acc |")
    lines.append("|---|---|---|---|---|")
    for row in table.itertuples(index=False):
        lines.append(f"| {row.model} | {row.eps:.4g} | {row.surrogate} | {row.attack} | {row.robust_acc:.2f}% "
                     f"({row.robust_count}/{row.n_examples}) |")
    if figure is not None:
        lines += ["", f"![transfer grid]({figure.name})"]
    write_text(report, report.read_text(encoding="utf-8").rstrip("\n") + "\n" + "\n".join(lines) + "\n")


def write_heatmap(table: pd.DataFrame, path: Path) -> Path | None:
    """One heatmap per (model, eps): surrogates (rows) x attacks (columns), robust accuracy in %."""
    cells = table[table["surrogate"] != WORST]
    groups = list(cells.groupby(["model", "eps"], sort=False))
    if not groups:
        return None
    fig = Figure(figsize=(4.2 * len(groups), 3.6))
    axes = fig.subplots(1, len(groups), squeeze=False)
    for ax, ((model, eps), frame) in zip(axes[0], groups):
        grid = frame.pivot(index="surrogate", columns="attack", values="robust_acc")
        grid = grid.reindex(index=list(dict.fromkeys(frame["surrogate"])), columns=list(dict.fromkeys(frame["attack"])))
        ax.imshow(grid.to_numpy(), vmin=0, vmax=100, cmap="viridis")
        ax.set_xticks(range(grid.shape[1]), grid.columns, rotation=30, ha="right")
        ax.set_yticks(range(grid.shape[0]), grid.index)
        for i in range(grid.shape[0]):
            for j in range(grid.shape[1]):
                ax.text(j, i, f"{grid.iat[i, j]:.0f}", ha="center", va="center",
                        color="black" if grid.iat[i, j] > 60 else "white")  # readable on viridis' yellow
        worst = table[(table["model"] == model) & (table["eps"] == eps) & (table["surrogate"] == WORST)]
        ax.set_title(f"{model}, eps {eps:.4g}\nworst case {float(worst['robust_acc'].iloc[0]):.1f}%", fontsize=9)
    return save_png(fig, path)
