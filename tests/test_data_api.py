"""load_dataset's spec handling, option checking, registration and the Dataset contract."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from robustkit.data import DATASETS, Dataset, LoadedData, list_datasets, load_dataset, register_dataset
from robustkit.errors import ConfigError, DataError


def test_builtin_datasets_are_listed():
    assert {"digits", "mnist", "fashion-mnist", "cifar10", "cifar100", "cifar10c", "npz",
            "imagefolder"} <= set(list_datasets())


def test_unknown_dataset_lists_known_names_with_did_you_mean():
    with pytest.raises(ConfigError) as err:
        load_dataset("mnsit")
    msg = str(err.value)
    assert '"mnist"' in msg and "digits" in msg and "cifar10c" in msg and "\n" not in msg


def test_unknown_option_gets_did_you_mean_and_the_known_options():
    with pytest.raises(ConfigError, match=r"unknown option 'splt' \(did you mean \"split\"\?\); known options: split"):
        load_dataset({"name": "digits", "splt": "train"})
    with pytest.raises(ConfigError, match=r"did you mean \"n_examples\""):
        load_dataset({"name": "digits", "n_example": 5})


def test_mapping_without_name_and_wrong_types_are_config_errors():
    with pytest.raises(ConfigError, match="needs a 'name'"):
        load_dataset({"root": "x"})
    with pytest.raises(ConfigError, match="expected a name or a mapping"):
        load_dataset(42)
    with pytest.raises(ConfigError, match="download: expected true or false"):
        load_dataset({"name": "mnist", "download": "yes"})


def test_root_for_a_bundled_dataset_and_download_for_a_local_one_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="'digits' takes no root"):
        load_dataset("digits", root=tmp_path)
    with pytest.raises(ConfigError, match=r"'npz' cannot be downloaded; downloadable: cifar10, cifar100, cifar10c"):
        load_dataset("npz", root=tmp_path / "a.npz", download=True)


def test_missing_required_option_is_named():
    with pytest.raises(ConfigError, match="option 'corruption' is required"):
        load_dataset({"name": "cifar10c", "root": "/nonexistent"})


def test_relative_root_resolves_against_base_dir_and_spec_round_trips(shared_dir):
    spec = {"name": "npz", "root": "cifar10/cifar10_test_first100_exact.npz", "n_examples": 10}
    ds = load_dataset(spec, base_dir=shared_dir / "data")
    assert len(ds) == 10
    assert ds.spec["root"] == str((shared_dir / "data/cifar10/cifar10_test_first100_exact.npz").resolve())
    assert Path(ds.spec["root"]).is_absolute()
    text = json.dumps(ds.spec)
    again = load_dataset(json.loads(text))
    assert again.content_hash == ds.content_hash and again.spec == ds.spec


def test_keyword_arguments_override_the_mapping():
    ds = load_dataset({"name": "digits", "split": "train", "n_examples": 5}, n_examples=7, split="test")
    assert len(ds) == 7 and ds.spec["split"] == "test"
    assert torch.equal(ds.y, load_dataset("digits").y[:7])


def test_options_may_be_nested_under_options_as_in_the_spec():
    ds = load_dataset({"name": "digits", "options": {}, "split": "train", "n_examples": 3})
    assert ds.spec["split"] == "train"
    with pytest.raises(ConfigError, match="both at top level and under 'options'"):
        load_dataset({"name": "npz", "x_key": "a", "options": {"x_key": "b"}})


def test_registered_loader_gets_option_checking_and_validation(monkeypatch):
    monkeypatch.setattr(DATASETS, "_items", dict(DATASETS._items))

    @register_dataset("toy-plugin", aliases=("toy",))
    def load_toy(*, scale: float = 1.0, n: int = 4) -> LoadedData:
        x = torch.full((n, 1, 2, 2), 0.5 * scale)
        return LoadedData(x, torch.arange(n) % 2, num_classes=2)

    assert "toy-plugin" in list_datasets() and "toy" not in list_datasets()
    ds = load_dataset("toy", n=6)
    assert ds.name == "toy-plugin" and len(ds) == 6 and ds.num_classes == 2
    assert ds.spec["options"] == {"n": 6, "scale": 1.0} and ds.spec["split"] is None
    with pytest.raises(DataError, match=r"pixel values must be in \[0, 1\]"):
        load_dataset("toy", scale=3.0)
    with pytest.raises(ConfigError, match=r"unknown option 'scal' \(did you mean \"scale\"\?\)"):
        load_dataset("toy", scal=2.0)


def test_dataset_refuses_tensors_that_break_the_contract():
    x, y = torch.rand(3, 1, 4, 4), torch.tensor([0, 1, 2])
    ok = Dataset("t", x, y, None, 3)
    assert len(ok) == 3 and len(ok.content_hash) == 64
    with pytest.raises(DataError, match="float32"):
        Dataset("t", x.double(), y, None, 3)
    with pytest.raises(DataError, match="int64"):
        Dataset("t", x, y.int(), None, 3)
    with pytest.raises(DataError, match=r"labels must be in \[0, 1\]"):
        Dataset("t", x, y, ["a", "b"], 2)
    with pytest.raises(DataError, match=r"\[0, 1\]"):
        Dataset("t", x.clone().fill_(float("nan")), y, None, 3)
    with pytest.raises(DataError, match="3 images but 2 labels"):
        Dataset("t", x, y[:2], None, 3)


def test_hash_depends_on_every_pixel_and_label():
    x, y = torch.rand(4, 3, 2, 2), torch.tensor([0, 1, 0, 1])
    base = Dataset("t", x, y, None, 2).content_hash
    x2 = x.clone()
    x2[3, 2, 1, 1] = torch.nextafter(x2[3, 2, 1, 1], torch.tensor(2.0))
    y2 = y.clone()
    y2[0] = 1
    assert Dataset("t", x2, y, None, 2).content_hash != base
    assert Dataset("t", x, y2, None, 2).content_hash != base
    assert repr(Dataset("t", x, y, None, 2)).startswith("Dataset(name='t', n=4, shape=(3, 2, 2)")
