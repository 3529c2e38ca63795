"""Reader for the IDX format of MNIST and Fashion-MNIST (raw or gzip-compressed).

The header states the element type and every dimension, so the payload size is known exactly; a file
whose size disagrees (truncated, padded, or a different file renamed) is refused rather than reshaped.
Format: two zero bytes, a type code, the number of dimensions, then one big-endian uint32 per dimension.
"""
from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np

from robustkit.errors import DataError

_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def _read_bytes(path: Path) -> bytes:
    if path.suffix != ".gz":
        return path.read_bytes()
    try:
        with gzip.open(path, "rb") as f:
            return f.read()
    except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
        raise DataError(f"{path}: corrupted or truncated gzip file ({exc}); delete it and download again") from exc


def parse_idx(data: bytes, source: str = "IDX data") -> np.ndarray:
    """Decode IDX bytes into a native-endian array of the stated shape."""
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _TYPES:
        raise DataError(f"{source}: not an IDX file (bad magic number {data[:4].hex() or 'empty'})")
    ndim = data[3]
    header = 4 + 4 * ndim
    if ndim == 0 or len(data) < header:
        raise DataError(f"{source}: IDX header is truncated or has no dimensions")
    dims = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(_TYPES[data[2]])
    expected = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    if len(data) - header != expected:
        raise DataError(f"{source}: IDX header says shape {dims} ({expected} bytes of data) but the file has "
                        f"{len(data) - header}; the file is truncated or corrupted")
    return np.frombuffer(data, dtype=dtype, offset=header).reshape(dims).astype(dtype.newbyteorder("="))


def read_idx(path: Path) -> np.ndarray:
    """Read one IDX file (``.gz`` decompressed on the fly)."""
    return parse_idx(_read_bytes(path), str(path))
