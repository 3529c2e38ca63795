"""Bounded reads, measured: 50 examples from a 3 GB npz stay under 500 MB of peak RSS (issue 12, Bad 4).

Before, the whole image array was converted to float32 (12 GiB) and then sliced. The 3 GB file is written
sparsely -- the zero image rows are a hole in the file, so the test needs almost no disk and little time --
as a normal zip (STORED members, zip64, correct CRC) that numpy itself would read.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile

import numpy as np

from robustkit.data import load_dataset

ROWS = 1_000_000          # x: (1e6, 3, 32, 32) uint8 = 3.07 GB
ROW_SHAPE = (3, 32, 32)
LIMIT_MB = 500
CHUNK = bytes(64 << 20)


class _SparseWriter:
    """A file object for zipfile that turns writes of the shared zero chunk into seeks (a hole)."""

    def __init__(self, f) -> None:
        self.f = f

    def write(self, data) -> int:
        if data is CHUNK:
            self.f.seek(len(data), os.SEEK_CUR)
            return len(data)
        return self.f.write(data)

    def __getattr__(self, name):
        return getattr(self.f, name)


def _write_sparse_npz(path) -> None:
    header = {"descr": "|u1", "fortran_order": False, "shape": (ROWS, *ROW_SHAPE)}
    with open(path, "wb") as raw:
        with zipfile.ZipFile(_SparseWriter(raw), "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
            with zf.open("x.npy", "w", force_zip64=True) as member:
                np.lib.format.write_array_header_1_0(member, header)
                remaining = ROWS * int(np.prod(ROW_SHAPE))
                while remaining:
                    step = min(remaining, len(CHUNK))
                    member.write(CHUNK if step == len(CHUNK) else bytes(step))
                    remaining -= step
            labels = np.arange(ROWS, dtype=np.int64) % 10
            with zf.open("y.npy", "w", force_zip64=True) as member:
                np.lib.format.write_array(member, labels)


CHILD = """
import json, resource, sys
from robustkit.data import load_dataset
ds = load_dataset({"name": "npz", "root": sys.argv[1], "n_examples": 50})
print(json.dumps({"n": len(ds), "shape": list(ds.x.shape), "classes": ds.num_classes,
                  "max": float(ds.x.max()), "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""

def test_fifty_examples_from_a_3gb_npz_stay_under_500mb(tmp_path):
    path = tmp_path / "big.npz"
    _write_sparse_npz(path)
    assert path.stat().st_size > 3_000_000_000
    assert os.stat(path).st_blocks * 512 < 200_000_000, "the file was not written sparsely"
    with zipfile.ZipFile(path) as zf:  # a well-formed archive with the declared sizes
        assert zf.getinfo("x.npy").file_size > 3_000_000_000
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    child = subprocess.run([sys.executable, "-c", CHILD, str(path)], capture_output=True, text=True, env=env,
                           timeout=600)
    assert child.returncode == 0, child.stderr
    result = json.loads(child.stdout.strip().splitlines()[-1])
    assert result["n"] == 50 and result["shape"] == [50, *ROW_SHAPE] and result["classes"] == 10
    assert result["max"] == 0.0
    print(f"peak RSS {result['rss_mb']:.0f} MB loading 50 of {ROWS} examples")  # 278 MB measured, imports ~250
    assert result["rss_mb"] < LIMIT_MB


def test_compressed_npz_is_streamed_too(tmp_path):
    """A deflated member is decompressed only as far as the rows read (here: 3 of 200000)."""
    x = np.zeros((200_000, 1, 8, 8), np.uint8)
    np.savez_compressed(tmp_path / "c.npz", x=x, y=np.arange(200_000) % 10)
    ds = load_dataset({"name": "npz", "root": str(tmp_path / "c.npz"), "n_examples": 3})
    assert len(ds) == 3 and ds.num_classes == 10
