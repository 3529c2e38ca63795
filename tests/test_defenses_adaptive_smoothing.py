"""Adaptive smoothing on real MNIST (advertorch's LeNet5s as accurate and robust members): the mixture formula,
the mixing network trained through robustkit train, the end-to-end gradient, and no false flags."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import yaml

import robustkit
from robustkit.cli import main
from robustkit.defenses import AdaptiveSmoothing, build_defense
from robustkit.defenses.sweep import check_model_entry
from robustkit.errors import ConfigError, RobustkitError


def test_fixed_alpha_is_the_papers_mixture(mnist_test, lenet5_clean, lenet5_adv):
    x = mnist_test.x[:6]
    mixed = build_defense({"name": "adaptive-smoothing", "alpha": 0.3}, [lenet5_clean, lenet5_adv])
    expected = torch.log(0.7 * F.softmax(lenet5_clean(x), 1) + 0.3 * F.softmax(lenet5_adv(x), 1))
    assert torch.allclose(mixed(x), expected, atol=1e-6)
    with pytest.raises(ConfigError, match="alpha_min"):
        build_defense({"name": "adaptive-smoothing", "alpha_min": 0.9, "alpha_max": 0.5}, [lenet5_clean, lenet5_adv])
    with pytest.raises(RobustkitError, match="untrained"):
        build_defense({"name": "adaptive-smoothing", "mixing": "network", "in_channels": 1},
                      [lenet5_clean, lenet5_adv])(x)


def test_mixing_network_trained_by_the_cli_and_attacked_end_to_end(shared_dir, mnist_test, lenet5_clean, lenet5_adv,
                                                                   tmp_path):
    rc = main(["train", "--method", "mixing-network", "--member", "mnist-lenet5-clean", "--member", "mnist-lenet5-pgd",
               "--weights-dir", str(shared_dir / "weights"), "--dataset", "mnist", "--root",
               str(shared_dir / "data/mnist"), "--n-examples", "64", "--eval-examples", "32", "--eps", "0.3",
               "--steps", "2", "--epochs", "1", "--out", str(tmp_path), "--quiet"])
    assert rc == 0
    entry = yaml.safe_load((tmp_path / "mnist-adaptive-smoothing.yaml").read_text())
    check_model_entry(entry)  # a valid sweep model entry
    mixed = build_defense(entry["defense"], [lenet5_clean, lenet5_adv])
    x = mnist_test.x[100:108].clone().requires_grad_(True)
    out, gamma = mixed.mix(x)
    alpha = 0.2 + 0.75 * torch.sigmoid(gamma)
    assert torch.all((alpha >= 0.2) & (alpha <= 0.95))
    (grad,) = torch.autograd.grad(F.nll_loss(out, mnist_test.y[100:108]), x)
    # the mixing network is part of the gradient: holding alpha fixed at its value gives another gradient
    x2 = mnist_test.x[100:108].clone().requires_grad_(True)
    a = alpha.detach().unsqueeze(1)
    held = torch.log((1 - a) * F.softmax(lenet5_clean(x2), 1) + a * F.softmax(lenet5_adv(x2), 1))
    (grad_held,) = torch.autograd.grad(F.nll_loss(held, mnist_test.y[100:108]), x2)
    assert not torch.allclose(grad, grad_held)
    result = robustkit.evaluate(mixed, dataset=(mnist_test.x[200:208], mnist_test.y[200:208]),
                                attacks=[{"name": "pgd", "steps": 10},
                                         {"name": "autoattack", "version": "custom", "attacks_to_run": ["apgd-ce"]}],
                                eps=[0.3], checks="full", name="adaptive-smoothing")
    row = result.leaderboard.iloc[0]
    assert row["flags"] == "" or row["flags"] != row["flags"]
    assert isinstance(mixed, AdaptiveSmoothing) and "adaptive-smoothing(" in row["defense"]
