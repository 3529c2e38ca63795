"""``digits``: scikit-learn's bundled 8x8 handwritten digits, the dataset that needs no download.

It is real data (1797 scanned digits, UCI "optdigits" test part) shipped inside scikit-learn, which makes
it the default for the quickstart and for fast tests. The split is fixed and documented in
``docs/datasets.md``: in scikit-learn's order, the first 1297 images are ``train`` and the last 500 are
``test``. Pixel counts 0..16 are divided by 16, which is exact in float32.
"""
from __future__ import annotations

import numpy as np
import torch

from robustkit.errors import DataError

from .arrays import labels_to_tensor
from .catalog import register_dataset
from .dataset import LoadedData
from .options import choice

DIGITS_TOTAL = 1797
DIGITS_TRAIN = 1297  # first 1297 in scikit-learn's order; the remaining 500 are the test split
DIGITS_CLASSES = [str(i) for i in range(10)]


@register_dataset("digits")
def load_digits(*, split: str = "test") -> LoadedData:
    """Images 1x8x8 in [0, 1]; ``split``: ``test`` (last 500, default) or ``train`` (first 1297)."""
    from sklearn.datasets import load_digits as sklearn_digits

    choice("digits", "split", split, ("test", "train"))
    bunch = sklearn_digits()
    images = np.asarray(bunch.images, dtype=np.float64)
    if images.shape != (DIGITS_TOTAL, 8, 8):  # a different scikit-learn release would change the split
        raise DataError(f"scikit-learn digits: expected {DIGITS_TOTAL} images of 8x8, got shape {images.shape}")
    rows = slice(0, DIGITS_TRAIN) if split == "train" else slice(DIGITS_TRAIN, DIGITS_TOTAL)
    x = torch.from_numpy((images[rows] / 16.0).astype(np.float32)[:, None, :, :].copy())
    y = labels_to_tensor(bunch.target[rows], source="scikit-learn digits")
    return LoadedData(x, y, classes=list(DIGITS_CLASSES))
