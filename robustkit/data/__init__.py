"""Datasets: real data as float32 NCHW tensors in [0, 1], int64 labels, a stable order and a content hash.

::

    from robustkit.data import load_dataset
    ds = load_dataset("mnist", root="data/mnist", n_examples=1000)
    ds = load_dataset({"name": "cifar10c", "root": "data", "corruption": "fog", "severity": 5})

Built-in datasets: ``digits`` (bundled with scikit-learn, no files needed), ``mnist``, ``fashion-mnist``,
``cifar10``, ``cifar100``, ``cifar10c``, ``npz`` and ``imagefolder``; see ``docs/datasets.md``. Importing
this package registers them; third-party loaders register through the ``robustkit.datasets`` entry points.
"""
from __future__ import annotations

from . import cifar, cifar10c, digits, imagefolder, mnist, npz  # noqa: F401  (registration side effects)
from .catalog import DATASETS, list_datasets, register_dataset
from .dataset import Dataset, LoadedData, content_hash
from .download import download_url
from .loading import load_dataset

__all__ = ["DATASETS", "Dataset", "LoadedData", "content_hash", "download_url", "list_datasets",
           "load_dataset", "register_dataset"]
