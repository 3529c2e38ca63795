"""``robustkit.evaluate``: the Python entry point for defense authors, on the same runner as the CLI.

It accepts what a researcher has at hand -- an ``nn.Module`` (or several), tensors, a DataLoader or a dataset
name -- and gives back DataFrames. With ``out=None`` the results store lives in a temporary folder that is
deleted afterwards; with ``out`` set, the run is resumable exactly like ``robustkit eval``.
"""
from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn

from robustkit.attacks import Attack
from robustkit.data import Dataset, load_dataset
from robustkit.data.arrays import labels_to_tensor
from robustkit.defenses.certification import DEFAULT_RADII
from robustkit.errors import ConfigError, DataError
from robustkit.outputs import output_dir, write_text
from robustkit.zoo import load_model

from .leaderboard import to_markdown
from .options import parse_options
from .plan import describe_sweep
from .quickstart import DEFAULT_ATTACKS
from .runner import run_sweep
from .sweep import ModelEntry, Sweep, build_suite

CUSTOM_DATASET = "custom"


@dataclass
class EvaluationResult:
    """The leaderboard (one row per model and eps) and the per-sample verdicts behind it."""

    leaderboard: pd.DataFrame
    per_sample: pd.DataFrame
    run_id: str
    out: Path | None
    curve: pd.DataFrame | None = None  # with evaluate(curve=...): the table of curve.csv

    def to_csv(self, path: str | Path) -> Path:
        """Write the leaderboard CSV (the same format as ``leaderboard.csv`` of ``robustkit eval``)."""
        path = Path(path)
        output_dir(path.parent)
        return write_text(path, self.leaderboard.to_csv(index=False))

    def to_markdown(self) -> str:
        return to_markdown(self.leaderboard)

    def __repr__(self) -> str:
        return f"EvaluationResult(run_id={self.run_id!r})\n{self.to_markdown()}"


def _display_name(model: nn.Module, given: str | None) -> str:
    if given is not None:
        return str(given)
    card = getattr(model, "robustkit_card", None)
    if isinstance(card, Mapping) and card.get("name"):
        return str(card["name"])
    return type(model).__name__


def _as_module(value: Any, where: str) -> nn.Module:
    if isinstance(value, nn.Module):
        return value
    if isinstance(value, (str, Path)):
        return load_model(str(value))
    raise ConfigError(f"{where}: expected a torch nn.Module, a zoo name or a card path, got {type(value).__name__}")


def resolve_models(model: Any, name: str | None = None) -> list[ModelEntry]:
    """One model, a list of models or a dict name → model (models may also be zoo names / card paths)."""
    if isinstance(model, Mapping):
        if name is not None:
            raise ConfigError("name: only for a single model; a dict already names its models")
        items: list[tuple[str | None, Any]] = [(str(k), v) for k, v in model.items()]
    elif isinstance(model, (list, tuple)):
        if name is not None:
            raise ConfigError("name: only for a single model; pass a dict name -> model to name several")
        items = [(None, m) for m in model]
    else:
        items = [(name, model)]
    if not items:
        raise ConfigError("model: expected at least one model")
    entries = []
    for i, (given, value) in enumerate(items):
        module = _as_module(value, f"model[{i}]" if len(items) > 1 else "model")
        display = _display_name(module, given)
        cls = type(module)
        source = {"class": f"{cls.__module__}.{cls.__qualname__}"}
        if isinstance(value, (str, Path)):
            source["spec"] = str(value)
        entries.append(ModelEntry(name=display, model=module, source=source))
    names = [e.name for e in entries]
    for n in names:
        if names.count(n) > 1:
            raise ConfigError(f"model: two models are named {n!r}; pass a dict name -> model to name them")
    return entries


def _tensor(value: Any, what: str) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(value))
    raise DataError(f"dataset: {what} must be a torch tensor or a numpy array, got {type(value).__name__}")


def _from_tensors(x: Any, y: Any) -> Dataset:
    xt, yt = _tensor(x, "x"), _tensor(y, "y")
    if not xt.dtype.is_floating_point:
        raise DataError(f"dataset: x must be floating point images in [0, 1] (NCHW), got dtype {xt.dtype}; "
                        f"divide uint8 images by 255")
    if yt.dtype.is_floating_point or yt.dtype == torch.bool:
        raise DataError(f"dataset: y must be integer class labels, got dtype {yt.dtype}")
    if xt.dim() != 4 or xt.shape[0] == 0:
        raise DataError(f"dataset: x must be a non-empty float batch of images (N, C, H, W), got shape "
                        f"{tuple(xt.shape)}")
    xt = xt.to(torch.float32).contiguous()
    yt = labels_to_tensor(yt.numpy(), n=xt.shape[0], source="dataset: y").contiguous()
    num_classes = int(yt.max()) + 1 if yt.numel() else 1
    return Dataset(CUSTOM_DATASET, xt, yt, None, max(1, num_classes), {"name": CUSTOM_DATASET, "source": "tensors"})


def _from_batches(batches: Iterable[Any]) -> Dataset:
    xs, ys = [], []
    for i, batch in enumerate(batches):
        if isinstance(batch, Mapping):
            raise DataError(f"dataset: DataLoader batch {i} is a mapping; expected (x, y) pairs")
        try:
            x, y = batch[0], batch[1]
        except (TypeError, IndexError, KeyError):
            raise DataError(f"dataset: DataLoader batch {i}: expected (x, y), got {type(batch).__name__}") from None
        xs.append(_tensor(x, "x"))
        ys.append(_tensor(y, "y"))
    if not xs:
        raise DataError("dataset: the DataLoader yielded no batches")
    ds = _from_tensors(torch.cat(xs), torch.cat(ys))
    ds.spec = {"name": CUSTOM_DATASET, "source": "dataloader"}
    return ds


def resolve_dataset(dataset: Any, n_examples: int | None = None) -> Dataset:
    """A dataset name/spec, a :class:`Dataset`, a pair ``(x, y)`` or a DataLoader → a :class:`Dataset`."""
    if n_examples is not None and (isinstance(n_examples, bool) or not isinstance(n_examples, int) or n_examples < 1):
        raise ConfigError(f"n_examples: expected a positive integer, got {n_examples!r}")
    if isinstance(dataset, (str, Mapping)):
        return load_dataset(dataset, n_examples=n_examples)
    if isinstance(dataset, Dataset):
        ds = dataset
    elif isinstance(dataset, (tuple, list)) and len(dataset) == 2:
        ds = _from_tensors(*dataset)
    elif isinstance(dataset, torch.utils.data.DataLoader):
        ds = _from_batches(dataset)
    else:
        raise ConfigError(f"dataset: expected a dataset name or spec, a Dataset, a pair (x, y) or a DataLoader, "
                          f"got {type(dataset).__name__}")
    if n_examples is not None and n_examples != len(ds):
        ds = ds.subset(n_examples)
    return ds


def evaluate(model: Any, dataset: Any = None, attacks: Sequence[str | Mapping[str, Any] | Attack] | None = None,
             eps: float | str | Sequence[float | str] | None = None, norm: str = "Linf", *, seed: int = 0,
             device: str = "auto", batch_size: int | None = None, out: str | Path | None = None,
             name: str | None = None, n_examples: int | None = None, quiet: bool = True,
             fresh: bool = False, radii: Sequence[float] = DEFAULT_RADII, curve: Any = None,
             checks: str = "cheap") -> EvaluationResult:
    """Robust accuracy of ``model`` under ``attacks`` at each ``eps`` (same engine as ``robustkit eval``).

    ``model``: an ``nn.Module`` (inputs in [0, 1], normalization inside), a list of them, or a dict
    name → model; zoo names and card paths work too. ``dataset``: a dataset name or spec (as in a sweep
    config), a :class:`robustkit.data.Dataset`, a pair ``(x, y)`` or a DataLoader yielding ``(x, y)``.
    ``attacks``: names, config mappings or Attack instances, run as a cascade in this order (default: the
    built-in suite of :mod:`robustkit.engine.quickstart`). ``out``: a folder for the results store and CSVs
    (resumable), which also gets the plots and ``report.html`` (docs/report.md); None uses a temporary folder
    and draws no report. ``fresh`` discards previous results in ``out``.

    A defended model (``robustkit.defenses``) is just an ``nn.Module`` here; the leaderboard names its defense,
    and a certifiable one (randomized smoothing) also gets certified-accuracy rows at the L2 ``radii``
    (with the defense's own n0, n, alpha), marked ``evaluation: certified``.

    ``curve``: e.g. ``{"attack": "fmn", "eps": "auto", "points": 20}`` runs that minimum-norm attack once
    per model and returns the robust-accuracy-vs-eps curve (``result.curve``, ``curve.csv``), confirmed at
    each eps by the bounded suite (:mod:`robustkit.engine.curve_fill`).

    ``checks``: ``cheap`` (default), ``full`` or ``off`` -- the evaluation checks whose flags fill the
    ``flags`` column (docs/checks.md); they never change a number.
    """
    if dataset is None:
        raise ConfigError("dataset: required (a dataset name, a pair (x, y) or a DataLoader)")
    if eps is None:
        raise ConfigError("eps: required (a number, a fraction like '8/255', or a list)")
    entries = resolve_models(model, name)
    data = resolve_dataset(dataset, n_examples)
    suite = build_suite(list(DEFAULT_ATTACKS) if attacks is None else attacks)
    sweep = Sweep(dataset=data, models=entries, attacks=suite, norm=norm, eps=eps, seed=seed, device=device,
                  batch_size=batch_size)
    sweep.config = {"source": "python api", **describe_sweep(sweep)}
    options = parse_options({"checks": checks, "certified_radii": radii, "curve": curve}, sweep.norm)
    if options.curve is not None:
        sweep.config["curve"] = options.curve.to_json()
    if out is None:
        with tempfile.TemporaryDirectory(prefix="robustkit-eval-") as tmp:
            result = run_sweep(sweep, tmp, fresh=True, quiet=quiet, options=options, report=False)
        return EvaluationResult(result.leaderboard, result.per_sample, result.run_id, None, result.curve)
    result = run_sweep(sweep, out, fresh=fresh, quiet=quiet, options=options)
    return EvaluationResult(result.leaderboard, result.per_sample, result.run_id, Path(out), result.curve)
