"""Subgroup metrics: MacroStd and worst-group accuracy by hand, subgroup files in dataset specs, real MNIST."""
import numpy as np
import pytest

from robustkit.data import load_dataset
from robustkit.errors import ConfigError, DataError
from robustkit.subgroups import ink_terciles, macro_std, subgroup_metrics, worst_group


def test_macro_std_and_worst_group_by_hand():
    # class 0: group 0 = 2/2 right, group 1 = 1/2 right  -> mu 0.75, weighted std 0.25
    # class 1: group 0 = 1/3 right, group 1 = 1/1 right  -> mu 0.5, var (3 (1/3-1/2)^2 + (1/2)^2) / 4 = 1/12
    correct = np.array([1, 1, 1, 0, 1, 0, 0, 1])
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    groups = np.array([0, 0, 1, 1, 0, 0, 0, 1])
    expected = (0.25 + np.sqrt(1 / 12)) / 2
    assert macro_std(correct, labels, groups) == pytest.approx(expected, abs=1e-12)
    assert worst_group(correct, labels, groups) == (1, 3, 1, 0)
    m = subgroup_metrics(correct, labels, groups)
    assert m.worst_group_acc == 33.33 and m.worst_group == "class 1 / group 0"
    assert m.worst_group_ci[0] < 33.33 < m.worst_group_ci[1]
    assert m.macro_std == round(100 * expected, 2)
    assert m.macro_std_ci[0] <= m.macro_std <= m.macro_std_ci[1] and m.macro_std_ci[1] > m.macro_std_ci[0]


def test_equal_subgroups_have_zero_macro_std():
    labels = np.repeat([0, 1], 6)
    groups = np.tile([0, 0, 1, 1, 2, 2], 2)
    correct = np.tile([1, 0], 6)  # every subgroup at 50%
    assert macro_std(correct, labels, groups) == 0.0
    with pytest.raises(ConfigError, match="one correctness value, label and subgroup per example"):
        macro_std(correct[:-1], labels, groups)


def test_subgroup_files_in_a_dataset_spec(tmp_path):
    ids = np.arange(500) % 4
    np.save(tmp_path / "g.npy", ids)
    (tmp_path / "g.csv").write_text("thick,other\n" + "\n".join(f"{i},0" for i in ids) + "\n")
    ds = load_dataset({"name": "digits", "n_examples": 100, "subgroups": str(tmp_path / "g.npy")})
    assert ds.groups.tolist() == ids[:100].tolist() and ds.spec["subgroups"]["file"].endswith("g.npy")
    ds = load_dataset({"name": "digits", "n_examples": 50, "subgroups": {"file": "g.csv", "column": "thick"}},
                      base_dir=tmp_path)
    assert ds.groups.tolist() == ids[:50].tolist()
    with pytest.raises(DataError, match=r"g.csv: 2 columns; say which holds the subgroups"):
        load_dataset({"name": "digits", "subgroups": str(tmp_path / "g.csv")})
    np.save(tmp_path / "short.npy", ids[:30])
    with pytest.raises(DataError, match=r"short.npy: 30 subgroup ids for 40 examples"):
        load_dataset({"name": "digits", "n_examples": 40, "subgroups": str(tmp_path / "short.npy")})
    np.save(tmp_path / "float.npy", ids[:40] + 0.5)
    with pytest.raises(DataError, match=r"float.npy: subgroup ids must be integers"):
        load_dataset({"name": "digits", "n_examples": 40, "subgroups": str(tmp_path / "float.npy")})
    with pytest.raises(ConfigError, match=r"subgroups.file: not found"):
        load_dataset({"name": "digits", "subgroups": str(tmp_path / "nope.npy")})
    with pytest.raises(ConfigError, match=r"subgroups: unknown key 'col'"):
        load_dataset({"name": "digits", "subgroups": {"file": str(tmp_path / "g.csv"), "col": "x"}})


def test_mnist_stroke_thickness_terciles(mnist_test, lenet5_clean):
    """Real data: thin/medium/thick terciles of ink area per digit, and the metrics of a real model on them."""
    import torch

    x, y = mnist_test.x[:2000], mnist_test.y[:2000]
    groups = ink_terciles(x.numpy(), y.numpy())
    for c in range(10):
        counts = np.bincount(groups[y.numpy() == c], minlength=3)
        assert counts.max() - counts.min() <= 0.1 * counts.sum()  # terciles: nearly equal thirds
    ink = (x.flatten(1) > 0.5).sum(1).numpy()
    ones = y.numpy() == 1
    assert ink[ones & (groups == 2)].min() >= ink[ones & (groups == 0)].max()  # thick really has more ink
    with torch.no_grad():
        correct = (lenet5_clean(x).argmax(1) == y).numpy()
    m = subgroup_metrics(correct, y.numpy(), groups)
    assert m.worst_group_acc < 100 * correct.mean() and m.macro_std > 0
