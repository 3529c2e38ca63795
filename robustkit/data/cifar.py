"""``cifar10`` and ``cifar100``: the official "python version" pickle layout.

``root`` may be the extracted folder itself (``cifar-10-batches-py`` / ``cifar-100-python``) or its parent.
Batches are read with :mod:`robustkit.data.safe_pickle` (no arbitrary code from downloaded files). Each row
of ``data`` is 3072 uint8 values, channel-major (1024 red, 1024 green, 1024 blue), i.e. already CHW.
With ``download=True`` the official archive is fetched into ``root``, MD5-checked and safely extracted.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from robustkit.errors import DataError

from .archive import extract_tar
from .arrays import images_to_tensor, labels_to_tensor
from .catalog import register_dataset
from .dataset import LoadedData
from .options import choice, optional_str
from .safe_pickle import load_pickle
from .sources import CIFAR10_ARCHIVE, CIFAR100_ARCHIVE, RemoteFile, default_root, fetch


@dataclass(frozen=True)
class CifarLayout:
    """File names and dictionary keys of one CIFAR variant."""

    dataset: str
    folder: str
    batches: dict[str, tuple[str, ...]]
    meta: str
    archive: RemoteFile


CIFAR10 = CifarLayout("cifar10", "cifar-10-batches-py",
                      {"test": ("test_batch",), "train": tuple(f"data_batch_{i}" for i in range(1, 6))},
                      "batches.meta", CIFAR10_ARCHIVE)
CIFAR100 = CifarLayout("cifar100", "cifar-100-python", {"test": ("test",), "train": ("train",)},
                       "meta", CIFAR100_ARCHIVE)


def _get(mapping: Any, key: str, path: Path) -> Any:
    """Python 2 pickles give bytes keys, Python 3 re-pickles give str keys: accept both."""
    if isinstance(mapping, dict):
        for k in (key.encode(), key):
            if k in mapping:
                return mapping[k]
    found = sorted(k.decode() if isinstance(k, bytes) else str(k) for k in mapping) if isinstance(mapping, dict) else []
    raise DataError(f"{path}: expected a dict with key {key!r}, found {found or type(mapping).__name__}")


def _find_folder(layout: CifarLayout, root: Path, split: str) -> Path | None:
    for folder in (root, root / layout.folder):
        if all((folder / name).is_file() for name in (*layout.batches[split], layout.meta)):
            return folder
    return None


def _read_batch(path: Path, label_key: str) -> tuple[np.ndarray, np.ndarray]:
    batch = load_pickle(path)
    data = np.asarray(_get(batch, "data", path))
    labels = np.asarray(_get(batch, label_key, path))
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise DataError(f"{path}: expected 'data' as uint8 rows of 3072 values, got {data.dtype} {data.shape}")
    if labels.shape != (data.shape[0],):
        raise DataError(f"{path}: expected {data.shape[0]} labels under {label_key!r}, got shape {labels.shape}")
    return data, labels


def _class_names(path: Path, key: str) -> list[str]:
    names = _get(load_pickle(path), key, path)
    if not isinstance(names, list):
        raise DataError(f"{path}: expected a list of class names under {key!r}")
    return [n.decode() if isinstance(n, bytes) else str(n) for n in names]


def _load_cifar(layout: CifarLayout, root: Path | None, split: str, download: bool, mirror: str | None,
                label_key: str, names_key: str, n_examples: int | None) -> LoadedData:
    choice(layout.dataset, "split", split, ("test", "train"))
    optional_str(layout.dataset, "mirror", mirror)
    root = root if root is not None else default_root(layout.dataset)
    folder = _find_folder(layout, root, split)
    if folder is None and download:
        archive = fetch(layout.dataset, layout.archive, root, mirror=mirror)
        extract_tar(archive, root)
        folder = _find_folder(layout, root, split)
    if folder is None:
        if not root.exists():
            raise DataError(f"{layout.dataset} root {root} does not exist; point root at the folder containing "
                            f"{layout.folder}/ or pass download=True")
        wanted = ", ".join((*layout.batches[split], layout.meta))
        raise DataError(f"{layout.dataset} ({split} split): expected {layout.folder}/{{{wanted}}} in {root} "
                        f"(or those files directly in it); pass download=True to fetch the official archive")
    xs, ys, have = [], [], 0
    for name in layout.batches[split]:
        if n_examples is not None and have >= n_examples:
            break  # later batches are not needed for the first n_examples
        data, labels = _read_batch(folder / name, label_key)
        xs.append(data)
        ys.append(labels)
        have += data.shape[0]
    classes = _class_names(folder / layout.meta, names_key)
    images = np.concatenate(xs).reshape(-1, 3, 32, 32)
    x = images_to_tensor(images, layout="NCHW", source=str(folder))
    y = labels_to_tensor(np.concatenate(ys), source=str(folder))
    return LoadedData(x, y, classes=classes, root=root)


@register_dataset("cifar10")
def load_cifar10(root: Path | None, *, split: str = "test", download: bool = False, mirror: str | None = None,
                 n_examples: int | None = None) -> LoadedData:
    """CIFAR-10, 3x32x32; ``split``: ``test`` (10000, default) or ``train`` (50000, data_batch_1..5 in order)."""
    return _load_cifar(CIFAR10, root, split, download, mirror, "labels", "label_names", n_examples)


@register_dataset("cifar100")
def load_cifar100(root: Path | None, *, split: str = "test", label_type: str = "fine", download: bool = False,
                  mirror: str | None = None, n_examples: int | None = None) -> LoadedData:
    """CIFAR-100, 3x32x32; ``label_type``: ``fine`` (100 classes, default) or ``coarse`` (20 superclasses)."""
    choice("cifar100", "label_type", label_type, ("fine", "coarse"))
    return _load_cifar(CIFAR100, root, split, download, mirror, f"{label_type}_labels",
                       f"{label_type}_label_names", n_examples)
