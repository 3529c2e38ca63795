"""Conversions from stored arrays to the tensors robustkit works with.

Every loader funnels its pixels through :func:`images_to_tensor` and its labels through
:func:`labels_to_tensor`, so the [0, 1] scaling (uint8 / 255 in float32, as torchvision's ``ToTensor``
does, hence identical bytes and identical content hashes), the channel order and the label checks are
decided in exactly one place.
"""
from __future__ import annotations

import numpy as np
import torch

from robustkit.errors import ConfigError, DataError

LAYOUTS = ("auto", "NHWC", "NCHW", "NHW")


def guess_layout(shape: tuple[int, ...], source: str) -> str:
    """NHW for 3-D arrays; for 4-D, the axis of size 1 or 3 (channels) decides between NHWC and NCHW."""
    if len(shape) == 3:
        return "NHW"
    if len(shape) != 4:
        raise DataError(f"{source}: images must have 3 or 4 dimensions (N,H,W / N,H,W,C / N,C,H,W), got {shape}")
    last_is_c, first_is_c = shape[3] in (1, 3), shape[1] in (1, 3)
    if last_is_c and not first_is_c:
        return "NHWC"
    if first_is_c and not last_is_c:
        return "NCHW"
    if last_is_c and first_is_c:
        raise DataError(f"{source}: cannot tell channels-first from channels-last for shape {shape}; "
                        f"set option layout to NHWC or NCHW")
    raise DataError(f"{source}: expected 1 or 3 channels on axis 1 or 3, got shape {shape}; "
                    f"set option layout to NHWC or NCHW")


def images_to_tensor(arr: np.ndarray, *, layout: str = "auto", source: str = "images") -> torch.Tensor:
    """uint8 (0..255) or float ([0, 1]) images in ``layout`` → contiguous float32 NCHW tensor in [0, 1].

    Float input is range-checked rather than rescaled: silently dividing by 255 (or not) is exactly the
    kind of guess that makes published robustness numbers wrong.
    """
    if layout not in LAYOUTS:
        raise ConfigError(f"layout: expected one of {', '.join(LAYOUTS)}, got {layout!r}")
    arr = np.asarray(arr)
    if layout == "auto":
        layout = guess_layout(arr.shape, source)
    expected_dim = 3 if layout == "NHW" else 4
    if arr.ndim != expected_dim:
        raise DataError(f"{source}: layout {layout} needs a {expected_dim}-D array, got shape {arr.shape}")
    if layout == "NHW":
        arr = arr[:, None, :, :]
    elif layout == "NHWC":
        arr = arr.transpose(0, 3, 1, 2)

    if arr.dtype == np.uint8:
        out = arr.astype(np.float32, order="C")
        out /= np.float32(255)
    elif np.issubdtype(arr.dtype, np.floating):
        out = arr.astype(np.float32, order="C")
        if out.size:
            lo, hi = float(out.min()), float(out.max())
            if not (lo >= 0.0 and hi <= 1.0):
                raise DataError(f"{source}: float images must be in [0, 1], found range [{lo}, {hi}] "
                                f"(store uint8 0..255 or scale to [0, 1])")
    else:
        raise DataError(f"{source}: images must be uint8 (0..255) or float in [0, 1], got dtype {arr.dtype}")
    return torch.from_numpy(out)


def labels_to_tensor(arr: np.ndarray, *, n: int | None = None, source: str = "labels") -> torch.Tensor:
    """Integer class indices (shape (N,) or (N, 1); integral floats accepted) → int64 tensor of shape (N,)."""
    arr = np.asarray(arr)
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim == 2 and arr.shape[1] > 1 and arr.size and np.isin(arr, (0, 1)).all() and (arr.sum(axis=1) == 1).all():
        raise DataError(f"{source}: labels are one-hot encoded (shape {arr.shape}); expected one class index per "
                        f"image, shape ({arr.shape[0]},): use labels.argmax(axis=1)")
    if arr.ndim != 1:
        raise DataError(f"{source}: labels must be a 1-D array of class indices, got shape {arr.shape}")
    if np.issubdtype(arr.dtype, np.floating):
        if arr.size and not np.all(np.isfinite(arr) & (arr == np.round(arr))):
            raise DataError(f"{source}: labels must be integer class indices, found non-integer values")
    elif not np.issubdtype(arr.dtype, np.integer):
        raise DataError(f"{source}: labels must be integer class indices, got dtype {arr.dtype}")
    if arr.size and arr.min() < 0:
        raise DataError(f"{source}: labels must be >= 0, found {arr.min()}")
    if n is not None and arr.shape[0] != n:
        raise DataError(f"{source}: {arr.shape[0]} labels for {n} images")
    return torch.from_numpy(arr.astype(np.int64))
