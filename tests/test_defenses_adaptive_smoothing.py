"""Adaptive smoothing on real MNIST (advertorch's LeNet5s as accurate and robust members): the mixture formula,
the feature-based mixing network trained through robustkit train, the end-to-end gradient, and no false flags."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
import yaml

from robustkit.cli import main
from robustkit.defenses import build_defense
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
        build_defense({"name": "adaptive-smoothing", "mixing": "network", "in_channels": 1, "input_size": 28},
                      [lenet5_clean, lenet5_adv])(x)


def _train_cli(shared_dir, out) -> dict:
    """A feature-reading mixing network trained by `robustkit train` (tiny: 64 images, 1 epoch); its sweep entry."""
    rc = main(["train", "--method", "mixing-network", "--member", "mnist-lenet5-clean", "--member", "mnist-lenet5-pgd",
               "--accurate-layer", "maxpool2", "--robust-layer", "maxpool1", "--robust-layer", "relu3",
               "--weights-dir", str(shared_dir / "weights"), "--dataset", "mnist", "--root",
               str(shared_dir / "data/mnist"), "--n-examples", "64", "--eval-examples", "32", "--eps", "0.3",
               "--steps", "2", "--epochs", "1", "--out", str(out), "--quiet"])
    assert rc == 0
    return yaml.safe_load((out / "mnist-adaptive-smoothing.yaml").read_text())


def test_mixing_network_reads_hooked_features_and_is_attacked_end_to_end(shared_dir, mnist_test, lenet5_clean,
                                                                         lenet5_adv, tmp_path):
    entry = _train_cli(shared_dir, tmp_path)
    check_model_entry(entry)  # a valid sweep model entry
    assert entry["defense"]["features"] == [["maxpool2"], ["maxpool1", "relu3"]]
    mixed = build_defense(entry["defense"], [lenet5_clean, lenet5_adv])
    feats = mixed.features(mnist_test.x[:2])  # the hooked layers' outputs, read during the members' forward
    assert [tuple(f.shape) for f in feats] == [(2, 64, 7, 7), (2, 32, 14, 14), (2, 200)]
    assert not lenet5_clean._forward_hooks and not dict(lenet5_adv.named_modules())["relu3"]._forward_hooks
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


@pytest.mark.slow  # the full checks on the mixture: minutes of CPU
def test_robustkit_eval_full_checks_raise_no_flag(shared_dir, mnist_test, tmp_path, monkeypatch):
    # as a user runs it: the entry `robustkit train` wrote, pasted into a sweep config, `robustkit eval --checks full`
    entry = _train_cli(shared_dir, tmp_path)
    np.savez(tmp_path / "eval.npz", x=(mnist_test.x[200:208].permute(0, 2, 3, 1) * 255).round().to(torch.uint8).numpy(),
             y=mnist_test.y[200:208].numpy())
    config = {"seed": 0, "dataset": {"name": "npz", "root": "eval.npz", "num_classes": 10},
              "models": [entry],
              "threat_model": {"norm": "Linf", "eps": [0.3]},
              "attacks": [{"name": "pgd", "steps": 10},
                          {"name": "autoattack", "version": "custom", "attacks_to_run": ["apgd-ce"]}],
              "checks": "full", "output": "run"}
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    monkeypatch.setenv("ROBUSTKIT_WEIGHTS_DIR", str(shared_dir / "weights"))
    assert main(["eval", "--config", str(tmp_path / "sweep.yaml"), "--quiet"]) == 0
    board = pd.read_csv(tmp_path / "run" / "leaderboard.csv", keep_default_na=False)
    assert board["flags"].tolist() == [""]  # no check fires on the mixture (the full checks ran)
    assert "adaptive-smoothing(mixing=network" in board["defense"][0] and "features=" in board["defense"][0]
    assert "checks: full" in (tmp_path / "run" / "report.md").read_text(encoding="utf-8")


def test_unknown_layer_is_one_line(shared_dir, lenet5_clean, lenet5_adv, tmp_path, capsys):
    with pytest.raises(ConfigError, match=r"robust member has no layer 'maxpool3' \(did you mean \"maxpool[12]\"\?\)"):
        build_defense({"name": "adaptive-smoothing", "mixing": "network", "in_channels": 1, "input_size": 28,
                       "features": [["relu3"], ["maxpool3"]]}, [lenet5_clean, lenet5_adv])
    rc = main(["train", "--method", "mixing-network", "--member", "mnist-lenet5-clean", "--member", "mnist-lenet5-pgd",
               "--accurate-layer", "conv7", "--weights-dir", str(shared_dir / "weights"), "--dataset", "mnist",
               "--root", str(shared_dir / "data/mnist"), "--n-examples", "8", "--eps", "0.3", "--out", str(tmp_path)])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "accurate member has no layer 'conv7'" in err
    assert not list(tmp_path.iterdir())  # nothing written
