"""PubDef training (robustkit train --method pubdef): transfer examples from each surrogate, the defender's
dynamic weights, the CLI end to end on real MNIST, and one-line errors."""
from __future__ import annotations

import pytest
import torch
import yaml
from torch import nn

from robustkit.cli import main
from robustkit.errors import ConfigError
from robustkit.pubdef import DynamicWeights, stacked_transfer_inputs
from robustkit.training import train


class Fixed(nn.Module):
    """Logits chosen per input set: the k-th copy of each image gets the k-th row of ``table``."""

    def __init__(self, table: torch.Tensor) -> None:
        super().__init__()
        self.table = table
        self.w = nn.Parameter(torch.ones(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k = x.flatten(1)[:, 0].long()          # the set index is written in the first pixel
        return self.w * self.table[k]


def test_dynamic_weights_favour_the_source_that_hurts_most():
    table = torch.tensor([[5.0, 0.0], [2.0, 0.0], [0.0, 2.0]])  # clean: easy; source 1: mild; source 2: hard
    x = torch.zeros(4, 3, 1, 2, 2)
    for k in range(3):
        x[:, k, 0, 0, 0] = k
    y = torch.zeros(4, dtype=torch.long)
    weights = DynamicWeights(3)
    loss, clean_logits = weights.loss(Fixed(table), x, y)
    losses = torch.stack([nn.functional.cross_entropy(table[k].expand(4, 2), y) for k in range(3)])
    avg = (1 - 0.99) / 3 + 0.99 * losses
    expected = losses[0] / 3 + (2 / 3) * (avg[1] * losses[1] + avg[2] * losses[2]) / (avg[1] + avg[2])
    assert torch.allclose(loss, expected)
    assert torch.equal(clean_logits, table[0].expand(4, 2))


def test_transfer_inputs_come_from_each_surrogate(mnist_test, lenet5_clean, lenet5_adv):
    x, y = mnist_test.x[:8], mnist_test.y[:8]
    calls = []

    def attack(m, xb, yb):
        calls.append(m)
        return (xb + 0.1).clamp(0, 1)

    stacked = stacked_transfer_inputs(x, y, [lenet5_clean, lenet5_adv], attack, batch_size=5)
    assert stacked.shape == (8, 3, 1, 28, 28)
    assert torch.equal(stacked[:, 0], x) and torch.allclose(stacked[:, 2], (x + 0.1).clamp(0, 1))
    assert calls == [lenet5_clean, lenet5_clean, lenet5_adv, lenet5_adv]   # batches of 5: two calls each


def test_pubdef_needs_surrogates_and_only_pubdef_takes_them(mnist_test, lenet5_clean):
    net = nn.Sequential(nn.Flatten(), nn.Linear(784, 10))
    with pytest.raises(ConfigError, match="surrogate"):
        train(net, mnist_test.x[:8], mnist_test.y[:8], method="pubdef", eps=0.3, epochs=1)
    with pytest.raises(ConfigError, match="only used by method pubdef"):
        train(net, mnist_test.x[:8], mnist_test.y[:8], method="standard", epochs=1, surrogates=[lenet5_clean])
    with pytest.raises(ConfigError, match="eps_warmup"):
        train(net, mnist_test.x[:8], mnist_test.y[:8], method="pubdef", eps=0.3, eps_warmup=1, epochs=1,
              surrogates=[lenet5_clean])


def test_cli_trains_pubdef_against_zoo_surrogates(shared_dir, tmp_path, capsys):
    rc = main(["train", "--arch", "kw-small", "--dataset", "mnist", "--root", str(shared_dir / "data/mnist"),
               "--n-examples", "128", "--eval-examples", "64", "--method", "pubdef", "--eps", "0.3", "--steps", "2",
               "--surrogate", "mnist-lenet5-clean", "--surrogate", "mnist-lenet5-pgd",
               "--weights-dir", str(shared_dir / "weights"), "--epochs", "1", "--out", str(tmp_path), "--quiet"])
    assert rc == 0
    card = yaml.safe_load((tmp_path / "mnist-kw-small-pubdef.yaml").read_text())
    assert "method=pubdef" in card["training"] and "surrogates=mnist-lenet5-clean,mnist-lenet5-pgd" in card["training"]
    assert card["threat_model"].startswith("transfer from public models (mnist-lenet5-clean, mnist-lenet5-pgd)")
    rc = main(["train", "--arch", "kw-small", "--dataset", "mnist", "--root", str(shared_dir / "data/mnist"),
               "--method", "pubdef", "--eps", "0.3", "--surrogate", "no-such-model", "--out", str(tmp_path)])
    assert rc == 2 and "no-such-model" in capsys.readouterr().err
