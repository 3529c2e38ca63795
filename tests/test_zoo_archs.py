"""Architecture registry, output shapes, published key names, and normalization inside the model."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from robustkit.errors import ConfigError, RobustkitError
from robustkit.zoo import ARCHS, Normalize, build_arch, create_model, load_model, register_model


@pytest.mark.parametrize("name,kwargs,shape", [
    ("small-cnn", {"input_size": 8}, (2, 1, 8, 8)),
    ("small-cnn", {}, (2, 1, 28, 28)),
    ("small-cnn", {"in_channels": 3, "input_size": 32}, (2, 3, 32, 32)),
    ("lenet5", {}, (2, 1, 28, 28)),
    ("kw-small", {}, (2, 1, 28, 28)),
    ("kw-small", {"in_channels": 3, "input_size": 32}, (2, 3, 32, 32)),
    ("mlp", {"in_features": 64}, (2, 1, 8, 8)),
    ("resnet20", {}, (2, 3, 32, 32)),
    ("resnet2b", {}, (2, 3, 32, 32)),
    ("resnet4b", {}, (2, 3, 32, 32)),
    ("preact-resnet18", {}, (1, 3, 32, 32)),
    ("wide-resnet", {"depth": 10, "widen_factor": 1}, (2, 3, 32, 32)),
])
def test_forward_shapes(name, kwargs, shape):
    model = build_arch(name, num_classes=7, **kwargs).eval()
    with torch.no_grad():
        assert model(torch.rand(shape)).shape == (shape[0], 7)


def test_create_model_is_the_timm_style_alias():
    model = create_model("small-cnn", num_classes=4, input_size=8)
    assert model(torch.rand(1, 1, 8, 8)).shape == (1, 4)


def test_required_names_are_registered():
    for name in ("small-cnn", "lenet5", "resnet20", "resnet32", "resnet44", "resnet56", "resnet2b",
                 "preact-resnet18", "wrn-28-10"):
        assert name in ARCHS


def test_resnet_depths_have_the_published_number_of_blocks():
    for depth, n in ((20, 3), (32, 5), (44, 7), (56, 9)):
        model = build_arch(f"resnet{depth}")
        assert len(model.layer1) == len(model.layer2) == len(model.layer3) == n
        convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
        assert len(convs) + 1 == depth  # option-A shortcuts have no parameters


def test_robustbench_key_names():
    """RobustBench checkpoints must load unchanged: spot-check the names their state dicts use."""
    wrn = build_arch("wrn-28-10", sub_block1=True).state_dict()
    for key in ("conv1.weight", "block1.layer.0.bn1.running_mean", "block1.layer.0.convShortcut.weight",
                "block1.layer.3.conv2.weight", "sub_block1.layer.0.conv1.weight", "block3.layer.0.convShortcut.weight",
                "bn1.weight", "fc.weight", "fc.bias"):
        assert key in wrn, key
    assert "block1.layer.1.convShortcut.weight" not in wrn
    assert wrn["fc.weight"].shape == (10, 640)
    assert sum(v.numel() for k, v in wrn.items() if not k.startswith("sub_block1") and "running" not in k
               and "num_batches" not in k) == 36_479_194  # WRN-28-10: 36.5M parameters
    pre = build_arch("preact-resnet18").state_dict()
    for key in ("conv1.weight", "layer1.0.bn1.weight", "layer2.0.shortcut.0.weight", "layer4.1.conv2.weight",
                "linear.weight"):
        assert key in pre, key
    assert "layer1.0.shortcut.0.weight" not in pre and "bn.weight" not in pre
    assert "bn.weight" in build_arch("preact-resnet18", bn_before_fc=True).state_dict()


def test_normalize_is_inside_the_model_and_not_in_its_state_dict():
    torch.manual_seed(0)
    net = build_arch("small-cnn", in_channels=3, input_size=8).eval()
    wrapped = nn.Sequential(Normalize((0.5, 0.4, 0.3), (0.2, 0.25, 0.3)), net)
    x = torch.rand(2, 3, 8, 8)
    mean = torch.tensor([0.5, 0.4, 0.3]).view(1, 3, 1, 1)
    std = torch.tensor([0.2, 0.25, 0.3]).view(1, 3, 1, 1)
    with torch.no_grad():
        assert torch.allclose(wrapped(x), net((x - mean) / std), atol=1e-6)
    assert set(wrapped.state_dict()) == {f"1.{k}" for k in net.state_dict()}


def test_load_model_applies_card_normalization_presets():
    with pytest.warns(UserWarning, match="randomly initialized"):
        model = load_model({"name": "n", "arch": "small-cnn", "arch_kwargs": {"in_channels": 3, "input_size": 8},
                            "normalization": "imagenet"})
    assert isinstance(model.normalize, Normalize)
    assert model.normalize.std.flatten().tolist() == pytest.approx([0.229, 0.224, 0.225])
    x = torch.rand(2, 3, 8, 8)
    with torch.no_grad():
        expected = model.model((x - model.normalize.mean) / model.normalize.std)
        assert torch.equal(model(x), expected)


def test_unknown_arch_and_bad_arguments():
    with pytest.raises(RobustkitError, match='did you mean "resnet20"'):
        build_arch("resnt20")
    with pytest.raises(ConfigError, match="unknown argument 'widen'"):
        build_arch("wide-resnet", widen=2)
    with pytest.raises(ConfigError, match="depth must be 6n"):
        build_arch("wide-resnet", depth=11)


def test_third_party_registration_via_decorator():
    @register_model("zz-test-tiny")
    def tiny(num_classes: int = 10, **kwargs) -> nn.Module:
        return nn.Sequential(nn.Flatten(), nn.Linear(4, num_classes))

    with pytest.warns(UserWarning):
        model = load_model({"name": "t", "arch": "zz-test-tiny", "num_classes": 3})
    assert model(torch.rand(1, 1, 2, 2)).shape == (1, 3)
