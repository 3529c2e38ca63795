"""Common corruptions: validation, determinism under the seed, the size error, and mCE by hand."""
import numpy as np
import pytest
import torch

from robustkit.corruptions import CORRUPTIONS, check_corruptions, check_image_size, corrupt_images, mce
from robustkit.errors import ConfigError


def test_names_severities_and_sizes():
    assert check_corruptions(None, None) == (list(CORRUPTIONS), [1, 2, 3, 4, 5]) and len(CORRUPTIONS) == 15
    assert check_corruptions(["fog", "gaussian_noise"], [5, 1]) == (["gaussian_noise", "fog"], [1, 5])
    with pytest.raises(ConfigError, match=r"threat_model.corruptions: unknown corruption 'fgo'"):
        check_corruptions(["fgo"], None)
    with pytest.raises(ConfigError, match=r"threat_model.severities: expected a list of integers in 1..5"):
        check_corruptions(None, [0, 6])
    with pytest.raises(ConfigError, match=r"images are 28x28, but the corruptions need at least 32x32"):
        check_image_size((1, 28, 28))


def test_corruptions_are_deterministic_and_batch_independent():
    x = torch.rand(6, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    for name in ("gaussian_noise", "impulse_noise", "glass_blur", "frost"):
        whole = corrupt_images(x, name, 3, seed=7, indices=range(6))
        part = corrupt_images(x[3:], name, 3, seed=7, indices=range(3, 6))
        assert torch.equal(whole[3:], part), name
        assert (whole - x).abs().mean() > 0.01, name
        assert not torch.equal(whole, corrupt_images(x, name, 3, seed=8, indices=range(6))), name
    state = np.random.get_state()[1].copy()
    corrupt_images(x[:1], "shot_noise", 1, seed=0, indices=[0])
    assert (np.random.get_state()[1] == state).all()  # the caller's RNG is untouched
    gray = corrupt_images(x[:2, :1], "contrast", 5, seed=0, indices=[0, 1])
    assert gray.shape == (2, 1, 32, 32) and gray.std() < x[:2, :1].std()


def test_mce_by_hand():
    n = 4
    ones = np.ones(n, bool)
    # model errors: fog s1 1/4, s3 2/4; baseline: fog s1 2/4, s3 4/4 -> CE_fog = 0.75 / 1.5 = 0.5
    # noise s1 2/4, s3 2/4 vs baseline 1/4, 3/4 -> CE_noise = 1 / 1 = 1.0  -> mCE 75%
    model = {("fog", 1): np.array([0, 1, 1, 1], bool), ("fog", 3): np.array([0, 0, 1, 1], bool),
             ("gaussian_noise", 1): np.array([0, 0, 1, 1], bool), ("gaussian_noise", 3): np.array([0, 1, 1, 0], bool)}
    base = {("fog", 1): np.array([0, 0, 1, 1], bool), ("fog", 3): np.zeros(n, bool),
            ("gaussian_noise", 1): np.array([0, 1, 1, 1], bool), ("gaussian_noise", 3): np.array([0, 0, 0, 1], bool)}
    value, low, high = mce(model, base, ones, ones)
    assert value == 75.0 and low <= value <= high
    # relative: clean errors 0 and 1/4 -> fog (0.75 - 0) / (1.5 - 0.5) = 0.75; noise 1 / (1 - 0.5) = 2 -> 137.5%
    base_clean = np.array([0, 1, 1, 1], bool)
    assert mce(model, base, ones, base_clean, relative=True)[0] == 137.5
    with pytest.raises(ConfigError, match=r"baseline model has no result for fog at severity 3"):
        mce(model, {k: v for k, v in base.items() if k != ("fog", 3)}, ones, ones)


def test_mean_corruption_accuracy_and_its_bootstrap_interval():
    from robustkit.corruptions import mean_accuracy

    outcomes = {("fog", 1): np.array([1, 1, 0, 0], bool), ("fog", 3): np.array([1, 0, 0, 0], bool)}
    value, low, high = mean_accuracy(outcomes)
    assert value == 37.5 and low < value < high
    assert mean_accuracy({("fog", 1): np.ones(5, bool)}) == (100.0, 100.0, 100.0)
