"""The in-memory dataset every robustkit component receives, and its content hash.

A :class:`Dataset` is deliberately plain: two CPU tensors in a fixed order plus what is needed to say, in a
published leaderboard, exactly which examples were evaluated. The ``content_hash`` is computed from the
tensors themselves (not from file names or options), so two runs that claim the same data can be checked
to have seen the same pixels and labels, whichever loader, mirror or file format produced them.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from robustkit.errors import ConfigError, DataError


def content_hash(x: torch.Tensor, y: torch.Tensor) -> str:
    """sha256 hex of ``x`` as little-endian float32 bytes (C order) followed by ``y`` as little-endian int64.

    Fixed byte order and dtype make the hash the same on every machine for the same examples.
    """
    h = hashlib.sha256()
    xs = np.ascontiguousarray(x.detach().cpu().numpy(), dtype="<f4")
    ys = np.ascontiguousarray(y.detach().cpu().numpy(), dtype="<i8")
    h.update(memoryview(xs).cast("B"))
    h.update(memoryview(ys).cast("B"))
    return h.hexdigest()


@dataclass
class LoadedData:
    """What a dataset loader returns: every example it read, in its stable order.

    ``x`` must already be float32 NCHW in [0, 1] and ``y`` int64 (see :mod:`robustkit.data.arrays` for the
    conversions); :func:`robustkit.data.load_dataset` checks both, applies ``n_examples`` and hashes.
    ``num_classes`` defaults to ``len(classes)``, else ``max(y) + 1``. ``root`` is the folder or file the
    data actually came from (e.g. the default cache folder when the user gave none), for provenance.
    """

    x: torch.Tensor
    y: torch.Tensor
    classes: list[str] | None = None
    num_classes: int | None = None
    root: Path | None = None


def _validate(name: str, x: torch.Tensor, y: torch.Tensor, classes: list[str] | None, num_classes: int) -> None:
    """Refuse tensors that break the product's input contract, before any attack sees them."""
    where = f"dataset {name!r}"
    if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
        raise DataError(f"{where}: x and y must be torch tensors, got {type(x).__name__} and {type(y).__name__}")
    if x.dtype != torch.float32 or x.dim() != 4:
        raise DataError(f"{where}: x must be float32 with shape (N, C, H, W), got {x.dtype} {tuple(x.shape)}")
    if y.dtype != torch.int64 or y.dim() != 1:
        raise DataError(f"{where}: y must be int64 with shape (N,), got {y.dtype} {tuple(y.shape)}")
    if x.device.type != "cpu" or y.device.type != "cpu":
        raise DataError(f"{where}: x and y must be CPU tensors, got {x.device} and {y.device}")
    if x.shape[0] != y.shape[0]:
        raise DataError(f"{where}: {x.shape[0]} images but {y.shape[0]} labels")
    if x.shape[0] == 0 or x[:1].numel() == 0:
        raise DataError(f"{where}: no examples to evaluate (x has shape {tuple(x.shape)})")
    if x.numel():
        lo, hi = torch.aminmax(x)
        if not (lo >= 0 and hi <= 1):  # also false for NaN
            raise DataError(f"{where}: pixel values must be in [0, 1], found range [{lo.item()}, {hi.item()}]")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise DataError(f"{where}: num_classes must be a positive int, got {num_classes!r}")
    if classes is not None and len(classes) != num_classes:
        raise DataError(f"{where}: {len(classes)} class names but num_classes={num_classes}")
    if y.numel():
        ylo, yhi = int(y.min()), int(y.max())
        if ylo < 0 or yhi >= num_classes:
            raise DataError(f"{where}: labels must be in [0, {num_classes - 1}], found [{ylo}, {yhi}]")


@dataclass(repr=False)
class Dataset:
    """Examples ready for evaluation: ``x`` float32 (N, C, H, W) in [0, 1] on CPU, ``y`` int64 (N,).

    ``spec`` is the normalized, JSON-serialisable description that :func:`robustkit.data.load_dataset`
    accepts back (name, absolute root, split, n_examples, options). ``content_hash`` is always computed
    here from the tensors (it is not an argument), so it cannot disagree with the data it describes.
    """

    name: str
    x: torch.Tensor
    y: torch.Tensor
    classes: list[str] | None
    num_classes: int
    spec: dict[str, Any] = field(default_factory=dict)
    content_hash: str = field(init=False)
    # subgroup id per example (int64 (N,)), for the subgroup metrics; not part of the content hash because
    # it changes no verdict, only how the verdicts are summarised (robustkit.subgroups)
    groups: torch.Tensor | None = None

    def __post_init__(self) -> None:
        _validate(self.name, self.x, self.y, self.classes, self.num_classes)
        if self.groups is not None and tuple(self.groups.shape) != (len(self),):
            raise DataError(f"dataset {self.name!r}: {tuple(self.groups.shape)} subgroup ids for {len(self)} examples")
        self.content_hash = content_hash(self.x, self.y)

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def subset(self, n: int) -> "Dataset":
        """The first ``n`` examples (as RobustBench's ``n_examples``), with the hash recomputed.

        The tensors are copied so that a small subset does not keep a large parent dataset in memory.
        """
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ConfigError(f"n_examples: expected a positive integer, got {n!r}")
        if n > len(self):
            raise ConfigError(f"n_examples={n} but dataset {self.name!r} has only {len(self)} examples")
        spec = dict(self.spec)
        spec["n_examples"] = n
        groups = None if self.groups is None else self.groups[:n].clone()
        return Dataset(self.name, self.x[:n].clone(), self.y[:n].clone(), self.classes, self.num_classes, spec,
                       groups=groups)

    def __repr__(self) -> str:
        c, h, w = self.x.shape[1:] if self.x.dim() == 4 else ("?", "?", "?")
        return (f"Dataset(name={self.name!r}, n={len(self)}, shape=({c}, {h}, {w}), "
                f"num_classes={self.num_classes}, hash={self.content_hash[:12]})")
