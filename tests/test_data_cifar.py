"""cifar10 / cifar100 pickle layouts and the cifar10c layout, on small folders built here.

The official files are not available offline, so the folders are constructed with the official names,
keys and encodings. The batches are written the way the originals were (Python 2 ``cPickle``: byte strings
as BINSTRING opcodes, numpy's ``numpy.core.multiarray._reconstruct``), so that reading them exercises the
same unpickling path as the real download.
"""
from __future__ import annotations

import io
import os
import pickle
import pickletools
import struct

import numpy as np
import pytest
import torch

from robustkit.data import load_dataset
from robustkit.data.safe_pickle import load_pickle
from robustkit.errors import ConfigError, DataError

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


class _Py2Pickler(pickle._Pickler):
    """Writes ``bytes`` and ``str`` as Python 2 ``str`` (BINSTRING), like the cPickle that made the CIFAR files
    (also inside numpy's own reduce output, e.g. the dtype code 'u1' and the raw pixel buffer)."""

    dispatch = dict(pickle._Pickler.dispatch)

    def _save_py2_str(self, obj: bytes | str) -> None:
        if isinstance(obj, str):
            obj = obj.encode("latin1")
        if len(obj) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(obj)]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(obj)) + obj)
        self.memoize(obj)

    dispatch[bytes] = _save_py2_str
    dispatch[str] = _save_py2_str


def py2_pickle(obj) -> bytes:
    buf = io.BytesIO()
    _Py2Pickler(buf, protocol=2).dump(obj)
    return buf.getvalue().replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")


def _batch(rng, n, label_keys=("labels",)):
    data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
    batch = {b"batch_label": b"batch", b"data": data, b"filenames": [b"f%d.png" % i for i in range(n)]}
    for key in label_keys:
        batch[key.encode()] = [int(v) for v in rng.integers(0, 10, size=n)]
    return batch


@pytest.fixture
def cifar10_root(tmp_path):
    """A parent folder holding cifar-10-batches-py/ with a 7-image test batch and five 3-image train batches."""
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    batches = {"test_batch": _batch(rng, 7)}
    for i in range(1, 6):
        batches[f"data_batch_{i}"] = _batch(rng, 3)
    for name, batch in batches.items():
        (folder / name).write_bytes(py2_pickle(batch))
    meta = {b"label_names": [c.encode() for c in CLASSES], b"num_cases_per_batch": 10000, b"num_vis": 3072}
    (folder / "batches.meta").write_bytes(py2_pickle(meta))
    return tmp_path, batches


def test_py2_style_pickle_really_uses_the_old_numpy_path_and_binstring(cifar10_root):
    root, _ = cifar10_root
    raw = (root / "cifar-10-batches-py" / "test_batch").read_bytes()
    assert b"cnumpy.core.multiarray\n_reconstruct" in raw and b"_codecs" not in raw
    opcodes = {op.name for op, _arg, _pos in pickletools.genops(raw)}
    assert "BINSTRING" in opcodes and not opcodes & {"BINUNICODE", "SHORT_BINUNICODE", "BINBYTES"}
    assert isinstance(load_pickle(root / "cifar-10-batches-py" / "test_batch")[b"data"], np.ndarray)


def test_cifar10_test_split_pixels_are_channel_major_rows(cifar10_root):
    root, batches = cifar10_root
    ds = load_dataset("cifar10", root=root)
    row = batches["test_batch"][b"data"]
    assert ds.x.shape == (7, 3, 32, 32) and ds.x.dtype == torch.float32
    assert ds.classes == CLASSES and ds.num_classes == 10
    assert ds.y.tolist() == batches["test_batch"][b"labels"]
    # pixel (c, h, w) of image i is row[i, c*1024 + h*32 + w]
    assert ds.x[4, 2, 5, 7].item() == np.float32(row[4, 2 * 1024 + 5 * 32 + 7]) / np.float32(255)
    np.testing.assert_array_equal(ds.x.numpy(), row.reshape(7, 3, 32, 32).astype(np.float32) / np.float32(255))


def test_cifar10_train_concatenates_batches_in_order_and_root_may_be_the_folder(cifar10_root):
    root, batches = cifar10_root
    ds = load_dataset({"name": "cifar10", "root": str(root / "cifar-10-batches-py"), "split": "train"})
    assert len(ds) == 15
    assert ds.y.tolist() == sum((batches[f"data_batch_{i}"][b"labels"] for i in range(1, 6)), [])
    first4 = load_dataset("cifar10", root=root, split="train", n_examples=4)
    assert first4.content_hash == ds.subset(4).content_hash


def test_cifar_python3_pickles_with_str_keys_also_load(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(1)
    batch = {k.decode(): v for k, v in _batch(rng, 2).items()}
    with open(folder / "test_batch", "wb") as f:
        pickle.dump(batch, f, protocol=4)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": CLASSES}, f, protocol=2)  # protocol 2: bytes via _codecs.encode
    ds = load_dataset("cifar10", root=tmp_path)
    assert ds.y.tolist() == batch["labels"] and ds.classes == CLASSES


class _Evil:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


def test_malicious_pickle_is_refused_and_nothing_runs(cifar10_root, tmp_path):
    root, _ = cifar10_root
    marker = tmp_path / "pwned"
    bad = {b"data": np.zeros((1, 3072), np.uint8), b"labels": [0], b"x": _Evil(marker)}
    (root / "cifar-10-batches-py" / "test_batch").write_bytes(pickle.dumps(bad, protocol=2))
    with pytest.raises(DataError) as err:
        load_dataset("cifar10", root=root)
    msg = str(err.value)
    assert "refusing to unpickle" in msg and "system" in msg and "\n" not in msg
    assert not marker.exists()
    (root / "cifar-10-batches-py" / "test_batch").write_bytes(pickle.dumps({b"x": eval}, protocol=4))
    with pytest.raises(DataError, match="global builtins.eval is not allowed"):
        load_dataset("cifar10", root=root)


def test_cifar_wrong_layout_and_corruption(cifar10_root, tmp_path):
    root, _ = cifar10_root
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match=r"expected cifar-10-batches-py/\{test_batch, batches.meta\}"):
        load_dataset("cifar10", root=empty)
    with pytest.raises(DataError, match="does not exist"):
        load_dataset("cifar10", root=tmp_path / "missing")
    path = root / "cifar-10-batches-py" / "test_batch"
    path.write_bytes(path.read_bytes()[:3000])
    with pytest.raises(DataError, match="corrupted or truncated pickle"):
        load_dataset("cifar10", root=root)
    (root / "cifar-10-batches-py" / "test_batch").write_bytes(py2_pickle({b"data": np.zeros((2, 100), np.uint8),
                                                                          b"labels": [0, 1]}))
    with pytest.raises(DataError, match="uint8 rows of 3072"):
        load_dataset("cifar10", root=root)


def test_cifar100_fine_and_coarse_labels(tmp_path):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    rng = np.random.default_rng(2)
    test = {b"data": rng.integers(0, 256, size=(5, 3072), dtype=np.uint8),
            b"fine_labels": [99, 0, 42, 7, 13], b"coarse_labels": [19, 0, 4, 3, 1]}
    (folder / "test").write_bytes(py2_pickle(test))
    meta = {b"fine_label_names": [b"f%d" % i for i in range(100)],
            b"coarse_label_names": [b"c%d" % i for i in range(20)]}
    (folder / "meta").write_bytes(py2_pickle(meta))
    fine = load_dataset("cifar100", root=tmp_path)
    coarse = load_dataset("cifar100", root=folder, label_type="coarse")
    assert fine.num_classes == 100 and fine.y.tolist() == [99, 0, 42, 7, 13] and fine.classes[99] == "f99"
    assert coarse.num_classes == 20 and coarse.y.tolist() == [19, 0, 4, 3, 1]
    assert torch.equal(fine.x, coarse.x) and coarse.spec["options"]["label_type"] == "coarse"


# ---------------------------------------------------------------------------------------------- cifar10c
@pytest.fixture
def cifar10c_root(tmp_path):
    """CIFAR-10-C/ with 4 images per severity: <corruption>.npy (20, 32, 32, 3) uint8 and labels.npy."""
    folder = tmp_path / "CIFAR-10-C"
    folder.mkdir()
    rng = np.random.default_rng(3)
    arrays = {}
    for corruption in ("fog", "gaussian_noise"):
        arrays[corruption] = rng.integers(0, 256, size=(20, 32, 32, 3), dtype=np.uint8)
        np.save(folder / f"{corruption}.npy", arrays[corruption])
    labels = np.tile(rng.integers(0, 10, size=4), 5).astype(np.uint8)
    np.save(folder / "labels.npy", labels)
    return tmp_path, arrays, labels


def test_cifar10c_selects_corruption_and_severity_block(cifar10c_root):
    root, arrays, labels = cifar10c_root
    ds = load_dataset({"name": "cifar10c", "root": str(root), "corruption": "fog", "severity": 3})
    assert ds.x.shape == (4, 3, 32, 32) and ds.classes == CLASSES
    expected = arrays["fog"][8:12].transpose(0, 3, 1, 2).astype(np.float32) / np.float32(255)
    np.testing.assert_array_equal(ds.x.numpy(), expected)
    assert ds.y.tolist() == labels[8:12].tolist()
    assert ds.spec["options"] == {"corruption": "fog", "severity": 3} and ds.spec["split"] is None
    default = load_dataset("cifar10c", root=root / "CIFAR-10-C", corruption="gaussian_noise", n_examples=2)
    np.testing.assert_array_equal(default.x.numpy(),
                                  arrays["gaussian_noise"][16:18].transpose(0, 3, 1, 2) / np.float32(255))
    assert default.spec["options"]["severity"] == 5


def test_cifar10c_errors(cifar10c_root):
    root, _arrays, _labels = cifar10c_root
    with pytest.raises(ConfigError, match=r"corruption: expected one of .*got 'fgo' \(did you mean \"fog\"\?\)"):
        load_dataset("cifar10c", root=root, corruption="fgo")
    with pytest.raises(ConfigError, match=r"severity: expected an integer in 1\.\.5, got 6"):
        load_dataset("cifar10c", root=root, corruption="fog", severity=6)
    with pytest.raises(DataError, match=r"expected snow.npy and labels.npy in"):
        load_dataset("cifar10c", root=root, corruption="snow")
    with pytest.raises(ConfigError, match="only 4 examples"):
        load_dataset("cifar10c", root=root, corruption="fog", n_examples=5)
    path = root / "CIFAR-10-C" / "fog.npy"
    path.write_bytes(path.read_bytes()[:10000])
    with pytest.raises(DataError, match="fog.npy: not a readable .npy array or truncated"):
        load_dataset("cifar10c", root=root, corruption="fog")
    np.save(path, np.zeros((7, 32, 32, 3), np.uint8))
    with pytest.raises(DataError, match=r"5 severities stacked"):
        load_dataset("cifar10c", root=root, corruption="fog")
