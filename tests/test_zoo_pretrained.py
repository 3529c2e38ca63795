"""Published checkpoints reproduce their published clean accuracy on real data.

Exact figures (98.89, 98.64, 94/92/93/96) are the proof that architecture, key mapping and normalization are
right: a wrong padding, shortcut or mean/std costs whole points, not hundredths.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from robustkit.zoo import builtin_cards_dir, load_model, model_info, read_card_file


def _correct(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 2500) -> int:
    with torch.inference_mode():
        return sum(int((model(x[i:i + batch]).argmax(1) == y[i:i + batch]).sum()) for i in range(0, len(y), batch))


def _cifar(shared_dir: Path, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    data = np.load(shared_dir / "data" / "cifar10" / f"{name}.npz")
    x = torch.from_numpy(data["x"]).permute(0, 3, 1, 2).float().div(255)
    return x.contiguous(), torch.from_numpy(data["y"]).long()


def test_lenet5_clean_accuracy_is_exact(mnist_test, lenet5_clean):
    assert len(mnist_test) == 10000
    assert _correct(lenet5_clean, mnist_test.x, mnist_test.y) == 9889  # 98.89%


def test_lenet5_adv_accuracy_is_exact(mnist_test, lenet5_adv):
    assert _correct(lenet5_adv, mnist_test.x, mnist_test.y) == 9864  # 98.64%


def test_zoo_name_loads_the_same_weights_as_the_config_form(shared_dir, lenet5_clean):
    by_name = load_model("mnist-lenet5-clean", weights_dir=shared_dir / "weights")
    assert model_info(by_name)["checkpoint_sha256"] == model_info(lenet5_clean)["checkpoint_sha256"] == (
        "551a11267982991fb0c9f74e9094de19e54b51455eff9bd1c19c77a69d85156a")
    for a, b in zip(by_name.state_dict().values(), lenet5_clean.state_dict().values()):
        assert torch.equal(a, b)


@pytest.mark.parametrize("depth,expected", [(20, 94), (32, 92), (44, 93), (56, 96)])
def test_akamaster_resnets_on_exact_first_100(shared_dir, depth, expected):
    x, y = _cifar(shared_dir, "cifar10_test_first100_exact")
    model = load_model(f"cifar10-resnet{depth}", weights_dir=shared_dir / "weights")
    assert _correct(model, x, y) == expected


def test_resnet20_without_its_normalization_is_much_worse(shared_dir):
    """Guards the claim that normalization matters: the same weights fed unnormalized inputs collapse."""
    x, y = _cifar(shared_dir, "cifar10_test_first100_exact")
    ckpt = shared_dir / "weights/akamaster_pytorch_resnet_cifar10/resnet20-12fca82f.th"
    bare = load_model({"name": "r20-bare", "arch": "resnet20", "checkpoint": str(ckpt)})
    assert _correct(bare, x, y) < 80


def test_resnet2b_on_300_exact_images(shared_dir):
    x1, y1 = _cifar(shared_dir, "cifar10_test_first100_exact")
    x2, y2 = _cifar(shared_dir, "abcrown_sdp200_exact")
    model = load_model("cifar10-resnet2b-pgd", weights_dir=shared_dir / "weights")
    correct = _correct(model, torch.cat([x1, x2]), torch.cat([y1, y2]))
    assert correct >= 210, f"{correct}/300"  # >= 70% (69.25% reported on the full test set)


def test_resnet4b_loads_strictly(shared_dir):
    x, y = _cifar(shared_dir, "cifar10_test_first100_exact")
    model = load_model("cifar10-resnet4b-pgd", weights_dir=shared_dir / "weights")
    assert _correct(model, x, y) >= 70  # 77.2% reported


def test_builtin_card_hashes_match_the_shared_sha256sums(shared_dir):
    sums = {}
    for line in (shared_dir / "SHA256SUMS").read_text().splitlines():
        digest, path = line.split(maxsplit=1)
        sums[path.strip()] = digest
    cards = [read_card_file(p) for p in sorted(builtin_cards_dir().glob("*.yaml"))]
    assert len(cards) >= 7
    for card in cards:
        assert sums[f"weights/{card.checkpoint.file}"] == card.checkpoint.sha256, card.name
