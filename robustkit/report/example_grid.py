"""The adversarial example grid of one model: clean image, adversarial image, perturbation amplified.

One column per stored example (:mod:`robustkit.report.examples`). The perturbation panel maps delta = x_adv - x
to 0.5 + delta * a with the amplification ``a = 0.5 / max|delta|`` (written in the panel's title), so grey is
"unchanged" and the largest change reaches black or white whatever eps was.
"""
from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

from robustkit.engine.leaderboard import format_eps


def _as_image(chw: np.ndarray) -> tuple[np.ndarray, str | None]:
    """CHW in [0, 1] -> what imshow wants (HW with a grey colormap, or HWC)."""
    if chw.shape[0] == 1:
        return chw[0], "gray"
    return np.clip(np.transpose(chw[:3], (1, 2, 0)), 0, 1), None


def amplified(delta: np.ndarray) -> tuple[np.ndarray, float]:
    """0.5 + delta * a in [0, 1], and the amplification a (1 when the perturbation is zero)."""
    peak = float(np.abs(delta).max()) if delta.size else 0.0
    gain = 0.5 / peak if peak > 0 else 1.0
    return np.clip(0.5 + delta * gain, 0, 1), gain


def example_grid(examples: dict[str, np.ndarray], model: str, norm: str) -> Figure:
    """The grid figure for one model's stored examples: one column per example, rows clean / adversarial /
    perturbation."""
    n = len(examples["index"])
    fig = Figure(figsize=(1.0 + 2.1 * n, 7.4), layout="constrained")
    axes = fig.subplots(3, n, squeeze=False)
    for col in range(n):
        clean, adv = examples["clean"][col], examples["adv"][col]
        perturbation, gain = amplified(adv - clean)
        eps = format_eps(float(examples["eps"][col]))
        titles = [f"#{int(examples['index'][col])} clean: label {int(examples['label'][col])}\n"
                  f"predicted {int(examples['clean_pred'][col])}",
                  f"{examples['attack'][col]}, {norm} eps {eps}\npredicted {int(examples['adv_pred'][col])}",
                  f"perturbation x{gain:.3g}\n{norm} norm {float(examples['norm_value'][col]):.3g}"]
        for row, (chw, title) in enumerate(zip((clean, adv, perturbation), titles)):
            ax = axes[row][col]
            image, cmap = _as_image(chw)
            ax.imshow(image, cmap=cmap, vmin=0, vmax=1, interpolation="nearest")
            ax.set_title(title, fontsize=8)
            ax.set_xticks([])
            ax.set_yticks([])
    for row, name in enumerate(("clean", "adversarial", "perturbation")):
        axes[row][0].set_ylabel(name, fontsize=9)
    fig.suptitle(f"{model}: adversarial examples (the breaking attack re-run on each sample)", fontsize=9)
    return fig
