"""digits: scikit-learn's bundled 8x8 digits with the documented 1297/500 split."""
from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits as sklearn_digits

from robustkit.data import Dataset, load_dataset
from robustkit.errors import ConfigError

# Recorded in published leaderboards: if this changes, old results no longer identify their data.
DIGITS_TEST_SHA256 = "e38557854d212c6639f74f0e7add22c37105c0eec40cb1a32bbb20e0c9cc4f8f"


def _independent_hash(x: np.ndarray, y: np.ndarray) -> str:
    return hashlib.sha256(x.astype("<f4").tobytes() + y.astype("<i8").tobytes()).hexdigest()


def test_digits_test_split_is_last_500_scaled_by_16():
    ds = load_dataset("digits")
    bunch = sklearn_digits()
    assert isinstance(ds, Dataset) and len(ds) == 500
    assert ds.x.shape == (500, 1, 8, 8) and ds.x.dtype == torch.float32
    assert ds.y.shape == (500,) and ds.y.dtype == torch.int64
    assert float(ds.x.min()) == 0.0 and float(ds.x.max()) == 1.0
    expected = (bunch.images[1297:] / 16.0).astype(np.float32)[:, None]
    np.testing.assert_array_equal(ds.x.numpy(), expected)
    np.testing.assert_array_equal(ds.y.numpy(), bunch.target[1297:])
    assert ds.classes == [str(i) for i in range(10)] and ds.num_classes == 10
    assert ds.spec == {"name": "digits", "root": None, "split": "test", "n_examples": None, "options": {}}


def test_digits_train_split_is_first_1297_and_disjoint_from_test():
    train, test = load_dataset("digits", split="train"), load_dataset({"name": "digits", "split": "test"})
    assert len(train) == 1297 and len(test) == 500
    np.testing.assert_array_equal(train.y.numpy(), sklearn_digits().target[:1297])
    assert train.content_hash != test.content_hash


def test_digits_hash_is_stable_and_matches_its_definition():
    a, b = load_dataset("digits"), load_dataset("digits")
    assert a.content_hash == b.content_hash == DIGITS_TEST_SHA256
    assert a.content_hash == _independent_hash(a.x.numpy(), a.y.numpy())


def test_digits_n_examples_takes_the_first_n():
    full = load_dataset("digits")
    first = load_dataset("digits", n_examples=37)
    assert len(first) == 37
    assert torch.equal(first.x, full.x[:37]) and torch.equal(first.y, full.y[:37])
    assert first.content_hash == _independent_hash(full.x[:37].numpy(), full.y[:37].numpy())
    assert first.content_hash != full.content_hash
    assert first.spec["n_examples"] == 37
    sub = full.subset(37)
    assert sub.content_hash == first.content_hash and sub.spec == first.spec


@pytest.mark.parametrize("bad", [0, -3, True, 2.5, "10"])
def test_digits_bad_n_examples_is_a_config_error(bad):
    with pytest.raises(ConfigError, match="n_examples"):
        load_dataset("digits", n_examples=bad)


def test_digits_asking_for_more_than_exists_is_refused_not_truncated():
    with pytest.raises(ConfigError, match=r"n_examples=501 .*only 500"):
        load_dataset("digits", n_examples=501)
    with pytest.raises(ConfigError, match="only 500"):
        load_dataset("digits").subset(501)


def test_digits_bad_split_names_the_choices():
    with pytest.raises(ConfigError, match=r"split: expected one of test, train, got 'tset' \(did you mean \"test\"\?\)"):
        load_dataset("digits", split="tset")
