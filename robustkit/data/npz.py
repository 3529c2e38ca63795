"""``npz``: any NumPy ``.npz`` file with an image array and a label array; ``root`` is the file.

This is the escape hatch for data that exists in no standard layout (e.g. the exact CIFAR-10 test images
exported by verification papers). Arrays are read with ``allow_pickle=False``, so an ``.npz`` holding
object arrays (which could run code) is refused. Images may be uint8 (0..255) or float in [0, 1], as
N,H,W,C, N,C,H,W or N,H,W; the layout is guessed from which axis has 1 or 3 channels unless ``layout``
says it.
"""
from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from robustkit.errors import ConfigError, DataError, did_you_mean

from .arrays import LAYOUTS, images_to_tensor, labels_to_tensor
from .catalog import register_dataset
from .dataset import LoadedData
from .options import choice, positive_int, string_list


@register_dataset("npz")
def load_npz(root: Path | None, *, x_key: str = "x", y_key: str = "y", layout: str = "auto",
             classes: list[str] | None = None, num_classes: int | None = None) -> LoadedData:
    """Images under ``x_key`` and labels under ``y_key``; ``classes``/``num_classes`` override the inferred
    class count (max label + 1), which a small file may under-estimate."""
    if root is None:
        raise ConfigError("dataset 'npz' needs root: the path of the .npz file")
    choice("npz", "layout", layout, LAYOUTS)
    classes = string_list("npz", "classes", classes)
    if num_classes is not None:
        positive_int("npz", "num_classes", num_classes)
    for option, key in (("x_key", x_key), ("y_key", y_key)):
        if not isinstance(key, str) or not key:
            raise ConfigError(f"dataset 'npz' option {option}: expected an array name, got {key!r}")
    if not root.is_file():
        what = "is a folder, not a file" if root.is_dir() else "does not exist"
        raise DataError(f"npz root {root} {what}; point root at the .npz file")
    try:
        archive = np.load(root, allow_pickle=False)
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as exc:
        raise DataError(f"{root}: not a readable .npz file ({exc})") from exc
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise DataError(f"{root}: is a single .npy array, expected an .npz archive with {x_key!r} and {y_key!r}")
    with archive:
        keys = list(archive.files)
        for key in (x_key, y_key):
            if key not in keys:
                raise DataError(f"{root}: no array named {key!r}{did_you_mean(key, keys)}; "
                                f"arrays in the file: {', '.join(keys) or 'none'} (set x_key / y_key)")
        try:
            images, labels = archive[x_key], archive[y_key]
        except (zipfile.BadZipFile, ValueError, OSError, EOFError) as exc:
            raise DataError(f"{root}: cannot read arrays {x_key!r}/{y_key!r} ({exc})") from exc
    x = images_to_tensor(images, layout=layout, source=f"{root}[{x_key}]")
    y = labels_to_tensor(labels, n=x.shape[0], source=f"{root}[{y_key}]")
    if classes is not None and num_classes is not None and len(classes) != num_classes:
        raise ConfigError(f"dataset 'npz': {len(classes)} class names but num_classes={num_classes}")
    return LoadedData(x, y, classes=classes, num_classes=num_classes, root=root)
