"""PNG figures of the engine's finishing stages: no pyplot, no display, written atomically.

matplotlib is a dependency (the report's plots need it), so a figure is never silently skipped. Figures are
built on :class:`matplotlib.figure.Figure` directly, not through pyplot: no global figure registry to close
on every path, no display backend to pick, and nothing shared between the processes of a distributed run.
"""
from __future__ import annotations

from pathlib import Path

from matplotlib.figure import Figure

from robustkit.outputs import write_with


def save_png(fig: Figure, path: Path, dpi: int = 120) -> Path:
    """Lay ``fig`` out and write it to ``path`` as PNG through the one atomic writer."""
    fig.tight_layout()
    return write_with(path, lambda tmp: fig.savefig(tmp, dpi=dpi, format="png"))
