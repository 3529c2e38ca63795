"""npz files and image folders: the shared CIFAR-10 npz and the real CIFAR-10 JPEG folder."""
from __future__ import annotations

import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

from robustkit.data import load_dataset
from robustkit.errors import ConfigError, DataError

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


# ---------------------------------------------------------------------------------------------------- npz
@pytest.fixture(scope="module")
def cifar_npz(shared_dir):
    return shared_dir / "data" / "cifar10" / "cifar10_test_first100_exact.npz"


def test_npz_shared_cifar10_first100(cifar_npz):
    ds = load_dataset({"name": "npz", "root": str(cifar_npz)})
    ref = np.load(cifar_npz)
    assert ds.x.shape == (100, 3, 32, 32) and ds.x.dtype == torch.float32 and ds.y.dtype == torch.int64
    np.testing.assert_array_equal(ds.x.numpy(), ref["x"].transpose(0, 3, 1, 2).astype(np.float32) / np.float32(255))
    np.testing.assert_array_equal(ds.y.numpy(), ref["y"])
    assert ds.y[:4].tolist() == [3, 8, 8, 0]  # cat, ship, ship, airplane: the CIFAR-10 test set's start
    assert ds.num_classes == 10
    assert load_dataset("npz", root=cifar_npz, n_examples=20).content_hash == ds.subset(20).content_hash


def test_npz_layouts_and_keys(tmp_path, cifar_npz):
    ref = np.load(cifar_npz)
    expected = load_dataset("npz", root=cifar_npz).x
    nchw_float = ref["x"].transpose(0, 3, 1, 2).astype(np.float64) / 255
    np.savez(tmp_path / "nchw.npz", images=nchw_float, labels=ref["y"].astype(np.int32))
    ds = load_dataset({"name": "npz", "root": str(tmp_path / "nchw.npz"), "x_key": "images", "y_key": "labels",
                       "classes": CIFAR10_CLASSES})
    assert torch.allclose(ds.x, expected, atol=1e-7) and ds.classes == CIFAR10_CLASSES
    np.savez(tmp_path / "gray.npz", x=ref["x"][:, :, :, 0], y=ref["y"])
    gray = load_dataset("npz", root=tmp_path / "gray.npz")
    assert gray.x.shape == (100, 1, 32, 32) and torch.equal(gray.x[:, 0], expected[:, 0])


def test_npz_errors(tmp_path, cifar_npz):
    with pytest.raises(DataError, match=r"no array named 'image' \(did you mean \"images\"\?\); arrays in the file: images, y"):
        np.savez(tmp_path / "a.npz", images=np.zeros((2, 3, 4, 4), np.uint8), y=np.zeros(2, np.int64))
        load_dataset("npz", root=tmp_path / "a.npz", x_key="image")
    np.savez(tmp_path / "range.npz", x=np.full((2, 4, 4, 3), 2.0), y=np.zeros(2, np.int64))
    with pytest.raises(DataError, match=r"float images must be in \[0, 1\], found range \[2.0, 2.0\]"):
        load_dataset("npz", root=tmp_path / "range.npz")
    np.savez(tmp_path / "ambiguous.npz", x=np.zeros((2, 3, 5, 3), np.uint8), y=np.zeros(2, np.int64))
    with pytest.raises(DataError, match="set option layout"):
        load_dataset("npz", root=tmp_path / "ambiguous.npz")
    assert load_dataset("npz", root=tmp_path / "ambiguous.npz", layout="NHWC").x.shape == (2, 3, 3, 5)
    np.savez(tmp_path / "obj.npz", x=np.array([object(), object()], dtype=object), y=np.zeros(2, np.int64))
    with pytest.raises(DataError, match="allow_pickle=False"):
        load_dataset("npz", root=tmp_path / "obj.npz")
    np.savez(tmp_path / "count.npz", x=np.zeros((3, 4, 4, 3), np.uint8), y=np.zeros(2, np.int64))
    with pytest.raises(DataError, match="2 labels for 3 images"):
        load_dataset("npz", root=tmp_path / "count.npz")
    (tmp_path / "broken.npz").write_bytes(cifar_npz.read_bytes()[:5000])
    with pytest.raises(DataError, match="broken.npz"):
        load_dataset("npz", root=tmp_path / "broken.npz")
    with pytest.raises(DataError, match="is a folder, not a file"):
        load_dataset("npz", root=tmp_path)
    with pytest.raises(ConfigError, match="needs root"):
        load_dataset("npz")
    with pytest.raises(ConfigError, match="layout: expected one of auto, NHWC, NCHW, NHW"):
        load_dataset("npz", root=cifar_npz, layout="HWC")


# ------------------------------------------------------------------------------------------ image folder
@pytest.fixture(scope="module")
def jpeg_folder(shared_dir, tmp_path_factory):
    """The real CIFAR-10 test set as JPEGs, test/<class>/<NNNN>.jpg, extracted once for this module."""
    dest = tmp_path_factory.mktemp("cifar_jpeg")
    with tarfile.open(shared_dir / "data" / "cifar10" / "YoongiKim_CIFAR-10-images_test.tar") as tar:
        tar.extractall(dest, filter="data")
    return dest / "test"


def test_imagefolder_real_cifar10_jpegs(jpeg_folder):
    ds = load_dataset({"name": "imagefolder", "root": str(jpeg_folder)})
    assert ds.x.shape == (10000, 3, 32, 32) and ds.x.dtype == torch.float32
    assert ds.classes == CIFAR10_CLASSES and ds.num_classes == 10
    assert torch.equal(torch.bincount(ds.y), torch.full((10,), 1000))
    assert torch.equal(ds.y, torch.arange(10).repeat_interleave(1000))  # classes sorted, files sorted
    first = np.asarray(Image.open(jpeg_folder / "airplane" / "0000.jpg").convert("RGB"))
    np.testing.assert_array_equal(ds.x[0].numpy(), first.transpose(2, 0, 1).astype(np.float32) / np.float32(255))
    last = np.asarray(Image.open(jpeg_folder / "truck" / "0999.jpg").convert("RGB"))
    np.testing.assert_array_equal(ds.x[-1].numpy(), last.transpose(2, 0, 1).astype(np.float32) / np.float32(255))
    assert float(ds.x.min()) >= 0 and float(ds.x.max()) <= 1
    assert ds.spec["options"] == {"center_crop": None, "mode": "RGB", "resize": None}


def test_imagefolder_first_n_mode_resize_and_crop(jpeg_folder):
    gray = load_dataset("imagefolder", root=jpeg_folder, n_examples=4, mode="L")
    assert gray.x.shape == (4, 1, 32, 32)
    big = load_dataset("imagefolder", root=jpeg_folder, n_examples=2, resize=48, center_crop=[40, 36])
    assert big.x.shape == (2, 3, 40, 36)
    with pytest.raises(DataError, match="larger than the image"):
        load_dataset("imagefolder", root=jpeg_folder, n_examples=1, center_crop=64)
    with pytest.raises(ConfigError, match=r"mode: expected one of RGB, L"):
        load_dataset("imagefolder", root=jpeg_folder, mode="CMYK")


def _png(path, size, color):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)


def test_imagefolder_sizes_order_and_layout_errors(tmp_path):
    _png(tmp_path / "b_cls" / "2.png", (6, 4), (255, 0, 0))
    _png(tmp_path / "b_cls" / "10.png", (6, 4), (0, 255, 0))
    _png(tmp_path / "a_cls" / "x.png", (8, 8), (0, 0, 255))
    (tmp_path / "a_cls" / "notes.txt").write_text("ignored")
    (tmp_path / ".hidden").mkdir()
    with pytest.raises(DataError, match="set resize and/or center_crop"):
        load_dataset("imagefolder", root=tmp_path)
    ds = load_dataset("imagefolder", root=tmp_path, resize=[4, 4])
    assert ds.classes == ["a_cls", "b_cls"] and ds.y.tolist() == [0, 1, 1]
    # files sort by name: "10.png" before "2.png" -> green then red
    assert ds.x[1, 1].min() == 1.0 and ds.x[2, 0].min() == 1.0
    (tmp_path / "c_empty").mkdir()
    with pytest.raises(DataError, match="c_empty has no image files"):
        load_dataset("imagefolder", root=tmp_path, resize=[4, 4])
    with pytest.raises(DataError, match="one sub-folder per class"):
        load_dataset("imagefolder", root=tmp_path / "a_cls")
    (tmp_path / "c_empty" / "bad.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(DataError, match="bad.jpg: cannot decode image"):
        load_dataset("imagefolder", root=tmp_path, resize=[4, 4])
    with pytest.raises(DataError, match="does not exist"):
        load_dataset("imagefolder", root=tmp_path / "missing")
