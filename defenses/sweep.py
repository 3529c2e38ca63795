"""Defenses in sweep configs: the defense side of the ``defense:`` and ``members:`` keys of a model entry.

The engine owns config parsing and model loading; this module gives it a few small calls so that wiring
defenses in is a few lines and the rules live in one place:

* :func:`check_model_entry` -- at config-parse time, before anything is loaded: validates ``defense``
  (names and parameter types) and the shape of ``members``;
* :func:`defended_model` -- at resolve time: loads the base model or every member with the engine's own
  loader and wraps them (``members`` without ``defense`` means ``{name: ensemble}``, mean of logits);
* :func:`leaderboard_fields` -- what a leaderboard row should say about the model's defense, and
  :func:`certified_leaderboard_rows` for certifiable defenses (rows marked ``evaluation: certified``,
  beside the attacks' ``empirical`` rows), and :func:`certify_cached`, which the runner calls (the same
  rows, cached per identity in the output folder so that a resumed sweep does not certify again).

Example entries::

    models:
      - name: lenet5-jpeg
        model: mnist-lenet5-clean          # the base model: a zoo name, a card path or a card mapping
        defense: jpeg
      - name: mnist-smoothed
        arch: kw-small
        checkpoint: runs/noise/mnist-kw-small-noise.safetensors
        defense: {name: smoothing, sigma: 0.25}
      - name: mnist-crossmax
        members: [mnist-lenet5-clean, mnist-lenet5-pgd, cards/mine.yaml]
        defense: {name: ensemble, aggregation: crossmax, k: 2}
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import nn

from robustkit import identity
from robustkit.errors import ConfigError, short_repr
from robustkit.outputs import output_dir, write_text

from .base import Defense, build_defense, check_defense_spec
from .certification import DEFAULT_RADII, certified_rows

ENTRY_KEYS = ("defense", "members", "model")


def check_model_entry(entry: Mapping[str, Any], where: str = "model") -> None:
    """Validate the defense keys of a model entry (mapping) without loading anything."""
    if "defense" in entry:
        check_defense_spec(entry["defense"], f"{where}.defense")
    if "model" in entry:
        others = [k for k in entry if k not in ("name", "model", "defense")]
        if others:
            raise ConfigError(f"{where}: an entry with model: (the base model) takes only name, model and defense; "
                              f"move {', '.join(map(repr, others))} into the base model's card")
        if "defense" not in entry:
            raise ConfigError(f"{where}.model: only for a defended model (add defense:); name the model directly")
    if "members" in entry:
        members = entry["members"]
        if not isinstance(members, list) or len(members) < 2:
            raise ConfigError(f"{where}.members: expected a list of at least 2 models (zoo names, card paths or "
                              f"card mappings), got {short_repr(members)}")
        others = [k for k in entry if k not in ("name", *ENTRY_KEYS)]
        if others:
            raise ConfigError(f"{where}: an ensemble entry (members:) takes only name, members and defense; "
                              f"move {', '.join(map(repr, others))} into the member entries")


def defended_model(entry: Mapping[str, Any], load: Callable[[Any], nn.Module]) -> nn.Module:
    """The model an entry describes: ``load`` (the engine's loader) builds each model; the defense wraps them.

    An entry without ``defense`` / ``members`` is just ``load(entry)``. With ``model``, that spec is the base
    model (so the entry's ``name`` can differ from the base model's). With ``members``, each member spec
    is loaded and the defense (default ``{name: ensemble}``) receives the list. The returned defense
    carries ``robustkit_members`` (the member specs) for provenance.
    """
    spec = entry.get("defense")
    if "members" in entry:
        models = [load(m) for m in entry["members"]]
        defended = build_defense(spec if spec is not None else {"name": "ensemble"}, models)
        defended.robustkit_members = list(entry["members"])
        return defended
    if "model" in entry:
        base = load(entry["model"])
    else:
        base = load({k: v for k, v in entry.items() if k not in ENTRY_KEYS})
    return base if spec is None else build_defense(spec, base)


def leaderboard_fields(model: nn.Module) -> dict[str, Any]:
    """``{"defense": "smoothing(sigma=0.25, ...)" or "", "defense_config": {...} or None}`` for a row."""
    if not isinstance(model, Defense):
        return {"defense": "", "defense_config": None}
    parts, current = [], model
    while isinstance(current, Defense):  # chained defenses, outermost first
        parts.append(current.describe())
        current = getattr(current, "model", None)
    return {"defense": " <- ".join(parts), "defense_config": model.config()}


def certified_leaderboard_rows(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *,
                               radii: Sequence[float] = DEFAULT_RADII, generator: torch.Generator | None = None,
                               **certify_options: Any) -> list[dict[str, Any]]:
    """Certified-accuracy rows for a certifiable defense ([] for anything else), one per L2 radius.

    Each row: ``radius, n_examples, certified_count, certified_acc`` (percent), ``abstained``, the sampling
    settings, ``kind: "certified"`` and ``norm: "L2"``. ``certify_options`` (n0, n, alpha, batch_size)
    override the defense's own.
    """
    if not (isinstance(model, Defense) and model.certifiable):
        return []
    result = model.certify(x, generator=generator, **certify_options)
    return [{**row, "norm": "L2"} for row in certified_rows(result, y, radii)]


def certify_cached(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, fingerprint: dict[str, Any],
                   dataset_hash: str, seed: int, version: str, folder: Any,
                   radii: Sequence[float] = DEFAULT_RADII) -> tuple[list[dict[str, Any]], float]:
    """Certified rows of a certifiable model, computed once per identity and cached as JSON under ``folder``.

    The cache key hashes everything that can change the certificates (model fingerprint including the
    defense's n0/n/alpha/sigma, the exact examples, the seed, robustkit's version), like the engine's job
    ids, so a resumed sweep reuses them and a changed setting recomputes them. The noise comes from a
    generator seeded from that key alone: the same sweep certifies the same way every time. The per-example
    predictions and radii are kept in the JSON file for audits. Returns (rows, seconds spent certifying).
    """
    ident = {"kind": "certified", "model": fingerprint, "dataset": {"content_hash": dataset_hash,
             "n_examples": int(x.shape[0])}, "radii": [float(r) for r in radii], "seed": int(seed),
             "robustkit_version": version}
    key = identity.job_id(ident)
    path = Path(folder) / f"certified-{key}.json"
    stored = _read_certificates(path, ident, len(radii))
    if stored is not None:
        return stored
    device = next((t.device for t in model.parameters()), torch.device("cpu"))
    generator = torch.Generator(device=device).manual_seed(identity.batch_seed(seed, key, 0))
    t0 = time.perf_counter()
    result = model.certify(x.to(device), generator=generator)
    seconds = time.perf_counter() - t0
    rows = [{**row, "norm": "L2"} for row in certified_rows(result, y.cpu(), radii)]
    output_dir(path.parent)
    write_text(path, json.dumps({"identity": ident, "rows": rows, "seconds": seconds,
                                 "prediction": result.prediction.tolist(),
                                 "radius": [round(float(r), 6) for r in result.radius]}, default=str))
    return rows, seconds


def _read_certificates(path: Any, ident: dict[str, Any], n_radii: int) -> tuple[list, float] | None:
    """A cached certificate file, verified on read: unreadable, tampered or foreign content (identity, row
    count or row fields differ) is ignored, so the certificates are recomputed instead of trusted."""
    try:
        with open(path, encoding="utf-8") as f:
            stored = json.loads(f.read(64 << 20))
        rows, seconds = stored["rows"], float(stored["seconds"])
        ok = (json.dumps(stored["identity"], sort_keys=True, default=str)
              == json.dumps(json.loads(json.dumps(ident, default=str)), sort_keys=True)
              and isinstance(rows, list) and len(rows) == n_radii
              and all(isinstance(r, dict) and {"radius", "n_examples", "certified_count", "certified_acc",
                                                "abstained"} <= set(r) for r in rows))
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return (rows, seconds) if ok else None
