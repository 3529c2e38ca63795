"""The finishing stage that gives every run its pictures: adversarial examples, ``plots/`` and ``report.html``.

It runs after the leaderboard, the checks and the curve are written (it reads them back from the folder),
so ``robustkit report RUN_DIR --html`` -- the same :func:`robustkit.report.html.write_html` on the same
files -- rebuilds the identical page later without the models.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import torch

from robustkit.engine.sweep import Sweep

from .examples import write_examples
from .html import write_html
from .run_folder import load_run


def write_run_report(sweep: Sweep, out: Path | str, per_sample: pd.DataFrame, device: torch.device) -> Path:
    """Adversarial examples of every model (``examples/``), then the plots and ``report.html``."""
    write_examples(sweep, out, per_sample, device)
    return write_html(load_run(out))
