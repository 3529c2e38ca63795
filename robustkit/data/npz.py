"""``npz``: any NumPy ``.npz`` file with an image array and a label array; ``root`` is the file.

This is the escape hatch for data that exists in no standard layout (e.g. the exact CIFAR-10 test images
exported by verification papers). Arrays are read member by member from the zip (streamed: only the rows
that are evaluated are read and decompressed); an ``.npz`` holding object arrays (which could run code) is
refused. Images may be uint8 (0..255) or float in [0, 1], as
N,H,W,C, N,C,H,W or N,H,W; the layout is guessed from which axis has 1 or 3 channels unless ``layout``
says it.
"""
from __future__ import annotations

import zipfile
import zlib
from pathlib import Path

import numpy as np

from robustkit.errors import ConfigError, DataError, did_you_mean, short_repr

from .arrays import LAYOUTS, images_to_tensor, labels_to_tensor
from .catalog import register_dataset
from .dataset import LoadedData
from .options import choice, positive_int, string_list

MAX_HEADER = 1 << 16  # an .npy header is a short dict literal; numpy's own default cap is 10000 bytes
LABELS_READ_WHOLE = 64 << 20  # bytes of a label array that are read whole even with n_examples
MAX_MEMBER = 1 << 34  # 16 GiB declared for one array: refuse before allocating anything

def _member_names(zf: zipfile.ZipFile) -> dict[str, zipfile.ZipInfo]:
    return {info.filename[:-4]: info for info in zf.infolist() if info.filename.endswith(".npy")}

def _read_rows(zf: zipfile.ZipFile, info: zipfile.ZipInfo, n: int | None, source: str) -> tuple[np.ndarray, int]:
    """The first ``n`` rows (all when None) of one ``.npy`` member and the number of rows it declares,
    streamed: only the header and those rows are read (and decompressed), whatever size the array declares."""
    with zf.open(info) as f:
        try:
            version = np.lib.format.read_magic(f)
            reader = np.lib.format.read_array_header_1_0 if version == (1, 0) else \
                np.lib.format.read_array_header_2_0
            shape, fortran, dtype = reader(f, max_header_size=MAX_HEADER)
        except ValueError as exc:
            raise DataError(f"{source}: not a valid .npy array ({str(exc)[:120]})") from None
        if dtype.hasobject:
            raise DataError(f"{source}: holds Python objects (dtype {dtype}): refused, as with allow_pickle=False, "
                            f"since loading them could run code; store numeric arrays")
        if len(shape) == 0:
            raise DataError(f"{source}: is a scalar, expected an array with one row per example")
        rows = shape[0]
        row_items = int(np.prod(shape[1:], dtype=np.int64)) if len(shape) > 1 else 1
        if rows * row_items * dtype.itemsize > MAX_MEMBER:
            raise DataError(f"{source}: declares shape {shape} of {dtype} ({rows * row_items * dtype.itemsize} "
                            f"bytes), more than the {MAX_MEMBER} bytes robustkit reads from one array")
        take = rows if n is None or fortran else min(n, rows)
        want = take * row_items * dtype.itemsize
        buf = bytearray(want)
        got = 0
        while got < want:
            more = f.readinto(memoryview(buf)[got:])
            if not more:
                break
            got += more
        if got != want or (take == rows and f.read(1)):
            raise DataError(f"{source}: the array header declares shape {shape} of {dtype} but the data does not "
                            f"match it (truncated or padded file)")
    arr = np.frombuffer(buf, dtype=dtype)
    if fortran:
        arr = arr.reshape(shape[::-1]).transpose()
        return (arr[:n] if n is not None else arr), rows
    return arr.reshape((take,) + tuple(shape[1:])), rows

@register_dataset("npz")
def load_npz(root: Path | None, *, x_key: str = "x", y_key: str = "y", layout: str = "auto",
             classes: list[str] | None = None, num_classes: int | None = None,
             n_examples: int | None = None) -> LoadedData:
    """Images under ``x_key`` and labels under ``y_key``; ``classes``/``num_classes`` override the inferred
    class count (max label + 1), which a small file may under-estimate. With ``n_examples`` only the first
    N rows of each array are read from the file (streamed), so a large file costs only what is evaluated."""
    if root is None:
        raise ConfigError("dataset 'npz' needs root: the path of the .npz file")
    choice("npz", "layout", layout, LAYOUTS)
    classes = string_list("npz", "classes", classes)
    if num_classes is not None:
        positive_int("npz", "num_classes", num_classes)
    for option, key in (("x_key", x_key), ("y_key", y_key)):
        if not isinstance(key, str) or not key:
            raise ConfigError(f"dataset 'npz' option {option}: expected an array name, got {short_repr(key)}")
    if not root.is_file():
        what = "is a folder, not a file" if root.is_dir() else "does not exist"
        raise DataError(f"npz root {root} {what}; point root at the .npz file")
    try:
        with zipfile.ZipFile(root) as zf:
            members = _member_names(zf)
            keys = sorted(members)
            for key in (x_key, y_key):
                if key not in members:
                    raise DataError(f"{root}: no array named {key!r}{did_you_mean(key, keys)}; "
                                    f"arrays in the file: {', '.join(keys) or 'none'} (set x_key / y_key)")
            images, n_images = _read_rows(zf, members[x_key], n_examples, f"{root}[{x_key}]")
            # every label when they are few (the class count is inferred from all of them, as for a full
            # read), else only the first n_examples
            all_labels = members[y_key].file_size <= LABELS_READ_WHOLE
            labels, n_labels = _read_rows(zf, members[y_key], None if all_labels else n_examples,
                                          f"{root}[{y_key}]")
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, zlib.error, NotImplementedError) as exc:
        with open(root, "rb") as f:
            single = f.read(6) == b"\x93NUMPY"
        if single:
            raise DataError(f"{root}: is a single .npy array, expected an .npz archive with {x_key!r} and "
                            f"{y_key!r}") from None
        raise DataError(f"{root}: not a readable .npz file ({str(exc)[:120]})") from None
    if n_labels != n_images:
        labels_to_tensor(labels, source=f"{root}[{y_key}]")  # one-hot or 2-D labels get their own message
        raise DataError(f"{root}[{y_key}]: {n_labels} labels for {n_images} images")
    x = images_to_tensor(images, layout=layout, source=f"{root}[{x_key}]")
    if n_examples is not None and labels.ndim and labels.shape[0] > x.shape[0] == n_examples:
        if num_classes is None and classes is None and labels.size and np.issubdtype(labels.dtype, np.number):
            num_classes = int(labels.max()) + 1 if labels.ndim == 1 and labels.max() >= 0 else None
        labels = labels[:n_examples]
    y = labels_to_tensor(labels, n=x.shape[0], source=f"{root}[{y_key}]")
    if classes is not None and num_classes is not None and len(classes) != num_classes:
        raise ConfigError(f"dataset 'npz': {len(classes)} class names but num_classes={num_classes}")
    return LoadedData(x, y, classes=classes, num_classes=num_classes, root=root)
