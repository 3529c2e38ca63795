"""mnist / fashion-mnist from IDX files, on the real MNIST test set in ../shared/data/mnist."""
from __future__ import annotations

import gzip
import os
import shutil

import numpy as np
import pytest
import torch

from robustkit.data import load_dataset
from robustkit.errors import DataError

IMAGES, LABELS = "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"
# content_hash of the full MNIST test set (float32 pixels / 255 + int64 labels); recorded in leaderboards.
MNIST_TEST_SHA256 = "8c26786d4955bfbe4b1bc0048b3bedb22913ad773005ea62cd29f5c431131685"


@pytest.fixture(scope="module")
def mnist_dir(shared_dir):
    return shared_dir / "data" / "mnist"


@pytest.fixture(scope="module")
def raw_bytes(mnist_dir):
    """Independently decoded reference: strip the 16/8-byte IDX headers by hand."""
    images = np.frombuffer(gzip.decompress((mnist_dir / f"{IMAGES}.gz").read_bytes()), np.uint8, offset=16)
    labels = np.frombuffer(gzip.decompress((mnist_dir / f"{LABELS}.gz").read_bytes()), np.uint8, offset=8)
    return images.reshape(10000, 1, 28, 28), labels


def _one_line(exc: BaseException) -> str:
    msg = str(exc)
    assert "\n" not in msg and "Traceback" not in msg
    return msg


def test_mnist_test_set_matches_the_idx_files(mnist_test, raw_bytes):
    images, labels = raw_bytes
    ds = mnist_test
    assert ds.x.shape == (10000, 1, 28, 28) and ds.x.dtype == torch.float32
    assert ds.y.dtype == torch.int64 and ds.num_classes == 10 and ds.classes == [str(i) for i in range(10)]
    np.testing.assert_array_equal(ds.y.numpy(), labels)
    np.testing.assert_array_equal(ds.x.numpy(), images.astype(np.float32) / np.float32(255))
    assert ds.y[:5].tolist() == [7, 2, 1, 0, 4]  # the well-known first test digits
    assert ds.content_hash == MNIST_TEST_SHA256
    assert ds.spec["split"] == "test" and os.path.isabs(ds.spec["root"])


def test_mnist_first_n(mnist_dir, mnist_test):
    ds = load_dataset({"name": "mnist", "root": str(mnist_dir), "n_examples": 250})
    assert len(ds) == 250
    assert torch.equal(ds.x, mnist_test.x[:250]) and torch.equal(ds.y, mnist_test.y[:250])
    assert ds.content_hash == mnist_test.subset(250).content_hash


def test_mnist_raw_files_give_the_same_data_as_gz(tmp_path, mnist_dir, mnist_test):
    for stem in (IMAGES, LABELS):
        (tmp_path / stem).write_bytes(gzip.decompress((mnist_dir / f"{stem}.gz").read_bytes()))
    assert load_dataset("mnist", root=tmp_path).content_hash == mnist_test.content_hash


def test_torchvision_layout_is_found(tmp_path, mnist_dir, mnist_test):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for stem in (IMAGES, LABELS):
        os.symlink(mnist_dir / f"{stem}.gz", raw / f"{stem}.gz")
    assert load_dataset("mnist", root=tmp_path, n_examples=10).content_hash == mnist_test.subset(10).content_hash


def test_fashion_mnist_reads_the_same_format_with_its_class_names(tmp_path, mnist_dir):
    for stem in (IMAGES, LABELS):
        shutil.copy(mnist_dir / f"{stem}.gz", tmp_path / f"{stem}.gz")
    ds = load_dataset("fashion_mnist", root=tmp_path, n_examples=3)
    assert ds.name == "fashion-mnist" and ds.classes[0] == "T-shirt/top" and ds.classes[9] == "Ankle boot"


def test_truncated_gzip_is_a_one_line_data_error(tmp_path, mnist_dir):
    data = (mnist_dir / f"{IMAGES}.gz").read_bytes()
    (tmp_path / f"{IMAGES}.gz").write_bytes(data[: len(data) // 2])
    shutil.copy(mnist_dir / f"{LABELS}.gz", tmp_path)
    with pytest.raises(DataError) as err:
        load_dataset("mnist", root=tmp_path)
    msg = _one_line(err.value)
    assert f"{IMAGES}.gz" in msg and "truncated" in msg


def test_idx_size_mismatch_is_refused(tmp_path, mnist_dir):
    raw = gzip.decompress((mnist_dir / f"{IMAGES}.gz").read_bytes())
    (tmp_path / IMAGES).write_bytes(raw[:-784])  # one image short of what the header announces
    shutil.copy(mnist_dir / f"{LABELS}.gz", tmp_path)
    with pytest.raises(DataError) as err:
        load_dataset("mnist", root=tmp_path)
    msg = _one_line(err.value)
    assert "(10000, 28, 28)" in msg and "truncated or corrupted" in msg


def test_not_an_idx_file_and_label_count_mismatch(tmp_path, mnist_dir):
    (tmp_path / IMAGES).write_bytes(b"<html>not found</html>")
    shutil.copy(mnist_dir / f"{LABELS}.gz", tmp_path)
    with pytest.raises(DataError, match="not an IDX file"):
        load_dataset("mnist", root=tmp_path)
    shutil.copy(mnist_dir / "train-labels-idx1-ubyte.gz", tmp_path / f"{LABELS}.gz")
    (tmp_path / IMAGES).write_bytes(gzip.decompress((mnist_dir / f"{IMAGES}.gz").read_bytes()))
    with pytest.raises(DataError, match="expected 10000 labels"):
        load_dataset("mnist", root=tmp_path)


def test_wrong_layout_names_the_expected_files(tmp_path, mnist_dir):
    (tmp_path / "images.gz").write_bytes(b"")
    with pytest.raises(DataError) as err:
        load_dataset("mnist", root=tmp_path)
    msg = _one_line(err.value)
    assert f"{IMAGES}[.gz]" in msg and f"{LABELS}[.gz]" in msg and str(tmp_path) in msg
    # The shared folder has the training labels but not the training images.
    with pytest.raises(DataError, match=r"\(train split\): expected train-images-idx3-ubyte\[\.gz\] in"):
        load_dataset("mnist", root=mnist_dir, split="train")


def test_missing_root_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="does not exist.*download=True"):
        load_dataset("mnist", root=tmp_path / "nope")
