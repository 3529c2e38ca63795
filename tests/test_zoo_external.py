"""External model names: clean one-line messages when the library is missing or broken, and the glue code."""
from __future__ import annotations

import subprocess
import sys
import types

import pytest
import torch
from torch import nn

from robustkit.errors import CheckpointError, ConfigError, RobustkitError
from robustkit.zoo import Normalize, load_model
from robustkit.zoo.external import import_optional


def test_real_torchvision_and_robustbench_fail_with_one_line():
    """torchvision is broken in this environment (and robustbench imports it). Run in a subprocess so the
    failed half-import cannot affect other tests. Wherever they do work, the answer must still be a single
    RobustkitError line (then: download=True is needed)."""
    code = (
        "from robustkit.zoo import load_model\n"
        "from robustkit.errors import RobustkitError\n"
        "for name in ('torchvision:resnet18', 'robustbench:Carmon2019Unlabeled'):\n"
        "    try:\n"
        "        load_model(name)\n"
        "    except RobustkitError as exc:\n"
        "        print(repr(str(exc)))\n"
        "    else:\n"
        "        print('LOADED')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert len(lines) == 2
    for line, pkg in zip(lines, ("torchvision", "robustbench")):
        msg = eval(line)  # repr of a str
        assert "\n" not in msg and "Traceback" not in msg
        assert pkg in msg
        assert any(s in msg for s in ("fails to import", "not installed", "download=True", "broken")), msg


def test_broken_package_message(tmp_path, monkeypatch):
    pkg = tmp_path / "rk_broken_pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("raise RuntimeError('operator rk::nms does not exist\\nsecond line')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(RobustkitError) as info:
        import_optional("rk_broken_pkg", "rk_broken_pkg:x")
    msg = str(info.value)
    assert msg == ("'rk_broken_pkg:x' needs the rk_broken_pkg package, which is installed but fails to import "
                   "(RuntimeError: operator rk::nms does not exist); reinstall a rk_broken_pkg build that matches "
                   "your torch")


def test_missing_package_message():
    with pytest.raises(RobustkitError, match=r"needs the rk_absent_pkg package, which is not installed \(pip install"):
        import_optional("rk_absent_pkg", "rk_absent_pkg:x")


def test_unknown_prefix_is_not_an_external_name():
    with pytest.raises(RobustkitError, match="unknown zoo model"):
        load_model("keras:resnet")


@pytest.fixture
def fake_timm(monkeypatch):
    """A stand-in for timm with its create_model / pretrained_cfg contract, to test robustkit's glue."""
    calls = []

    def create_model(name, pretrained=False, **kwargs):
        calls.append((name, pretrained, kwargs))
        torch.manual_seed(0)
        model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, kwargs.get("num_classes", 1000)))
        model.pretrained_cfg = {"mean": (0.5, 0.5, 0.5), "std": (0.25, 0.25, 0.25)}
        return model

    module = types.ModuleType("timm")
    module.create_model = create_model
    monkeypatch.setitem(sys.modules, "timm", module)
    return calls


def test_timm_model_gets_its_normalization_and_needs_download_permission(fake_timm):
    with pytest.raises(CheckpointError, match="download=True"):
        load_model("timm:tiny")
    model = load_model("timm:tiny", download=True)
    assert fake_timm[-1] == ("tiny", True, {})
    assert isinstance(model.normalize, Normalize)
    x = torch.rand(2, 3, 4, 4)
    with torch.no_grad():
        assert torch.allclose(model(x), model.model((x - 0.5) / 0.25))
    assert model.robustkit_name == model.robustkit_card["arch"] == "timm:tiny"
    assert model.robustkit_checkpoint_sha256 is None
    assert model.robustkit_card["source"] == "timm tiny"


def test_timm_architecture_with_own_checkpoint(fake_timm, tmp_path):
    net = sys.modules["timm"].create_model("tiny", num_classes=5)
    torch.save(net.state_dict(), tmp_path / "w.pt")
    model = load_model({"name": "mine", "arch": "timm:tiny", "num_classes": 5, "checkpoint": "w.pt",
                        "normalization": "imagenet"}, base_dir=tmp_path)
    assert fake_timm[-1] == ("tiny", False, {"num_classes": 5})
    assert model.robustkit_checkpoint_sha256 is not None
    with pytest.raises(ConfigError, match="brings its own normalization"):
        load_model({"name": "x", "arch": "timm:tiny", "normalization": "imagenet"}, download=True)
