"""robustkit: adversarial-robustness evaluation with numbers you can trust and publish.

Three lines from import to numbers::

    import robustkit
    result = robustkit.evaluate(model, dataset=(x, y), attacks=["fgsm", "pgd"], eps=[8/255], norm="Linf")
    print(result.leaderboard)
"""
from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

__all__ = ["__version__", "evaluate"]


def evaluate(*args: Any, **kwargs: Any):
    """Evaluate an in-memory model; see :func:`robustkit.engine.api.evaluate`."""
    from .engine.api import evaluate as _evaluate

    return _evaluate(*args, **kwargs)
