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


MAX_PAYLOAD = 1 << 31  # 2 GiB: 40x the MNIST training images; a larger header is not an MNIST-format file


def _header(head: bytes, source: str) -> tuple[np.dtype, tuple[int, ...], int]:
    """(dtype, shape, header length) from the first bytes of an IDX file."""
    if len(head) < 4 or head[0] != 0 or head[1] != 0 or head[2] not in _TYPES:
        raise DataError(f"{source}: not an IDX file (bad magic number {head[:4].hex() or 'empty'})")
    ndim = head[3]
    size = 4 + 4 * ndim
    if ndim == 0 or len(head) < size:
        raise DataError(f"{source}: IDX header is truncated or has no dimensions")
    dims = tuple(int.from_bytes(head[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    return np.dtype(_TYPES[head[2]]), dims, size


def _payload_size(dtype: np.dtype, dims: tuple[int, ...], source: str) -> int:
    expected = 1
    for d in dims:
        expected *= d
    expected *= dtype.itemsize
    if expected > MAX_PAYLOAD:
        raise DataError(f"{source}: IDX header declares shape {dims} ({expected} bytes), more than the "
                        f"{MAX_PAYLOAD} bytes robustkit reads from one IDX file; the file is corrupted")
    return expected


def read_idx(path: Path) -> np.ndarray:
    """Read one IDX file (``.gz`` decompressed as a stream), reading only what the header declares.

    The header is read first; then exactly the declared number of bytes, and one more to prove the file
    ends there. A gzip file padded with gigabytes of zeros is therefore refused after reading the declared
    payload, never decompressed whole."""
    source = str(path)
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as f:
            head = f.read(4)
            head += f.read(4 * head[3]) if len(head) == 4 else b""
            dtype, dims, _ = _header(head, source)
            expected = _payload_size(dtype, dims, source)
            data = bytearray(expected)
            got = f.readinto(memoryview(data)) if expected else 0
            while got < expected:
                more = f.readinto(memoryview(data)[got:])
                if not more:
                    break
                got += more
            extra = f.read(1)
    except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
        raise DataError(f"{path}: corrupted or truncated gzip file ({exc}); delete it and download again") from exc
    if got != expected or extra:
        found = f"{got}" if got != expected else f"more than {expected}"
        raise DataError(f"{source}: IDX header says shape {dims} ({expected} bytes of data) but the file has "
                        f"{found}; the file is truncated or corrupted")
    return np.frombuffer(data, dtype=dtype).reshape(dims).astype(dtype.newbyteorder("="))
