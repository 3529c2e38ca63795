"""The built-in attack suite and the quickstart sweep that ``robustkit eval`` runs with no arguments.

The suite is defined here ONCE: the quickstart, ad hoc ``robustkit eval --model ... --dataset ...`` without
``--attack``, and ``robustkit.evaluate(..., attacks=None)`` all use it, so adding an attack to the standard
evaluation is a one-line change here.

The quickstart needs no files: scikit-learn's 8x8 ``digits`` (test split, 500 images) and the small models of
:func:`robustkit.zoo.digits_zoo.ensure_digits_zoo` (trained on first use, then cached).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from robustkit.data import load_dataset
from robustkit.errors import RobustkitError
from robustkit.zoo import load_model
from robustkit.zoo.digits_zoo import ensure_digits_zoo

from .sweep import ModelEntry, Sweep, build_suite

# The built-in suite, weakest first: the cascade then spends the expensive attacks only on survivors.
DEFAULT_ATTACKS: tuple[Any, ...] = ("fgsm", "pgd")
QUICKSTART_ATTACKS = DEFAULT_ATTACKS
QUICKSTART_DATASET = "digits"
# Linf radii for 8x8 digits whose pixels are multiples of 1/16: one grey level is 0.0625, so these go from
# "less than a grey level" to about three of them.
QUICKSTART_EPS: tuple[float, ...] = (0.05, 0.1, 0.2)
QUICKSTART_NORM = "Linf"
QUICKSTART_OUT = Path("runs") / "quickstart"


def quickstart_sweep(*, device: str = "auto", n_examples: int | None = None, batch_size: int | None = None,
                     seed: int = 0, cache_dir: str | Path | None = None) -> Sweep:
    """Every card of the digits zoo x the built-in suite on the digits test split."""
    zoo_dir = Path(ensure_digits_zoo(cache_dir))
    cards = sorted(p for p in zoo_dir.iterdir() if p.suffix.lower() in (".yaml", ".yml"))
    if not cards:
        raise RobustkitError(f"the digits zoo in {zoo_dir} has no model cards")
    entries = []
    for card in cards:
        model = load_model(str(card))
        name = (getattr(model, "robustkit_card", None) or {}).get("name", card.stem)
        entries.append(ModelEntry(name=str(name), model=model, source={"card": str(card)}))
    dataset = load_dataset(QUICKSTART_DATASET, n_examples=n_examples)
    sweep = Sweep(dataset=dataset, models=entries, attacks=build_suite(list(QUICKSTART_ATTACKS)),
                  norm=QUICKSTART_NORM, eps=list(QUICKSTART_EPS), seed=seed, device=device, batch_size=batch_size)
    sweep.config = {"source": "quickstart", "dataset_spec": dataset.spec, "zoo": str(zoo_dir),
                    "models": [e.source for e in entries], "norm": sweep.norm, "eps": sweep.eps,
                    "attacks": [{"label": a.label, **a.config()} for a in sweep.attacks], "seed": seed,
                    "device": device, "batch_size": batch_size, "n_examples": len(dataset)}
    return sweep
