"""Models whose output does not fit the data (issue 12: Bad 5, Weak "Python API models", NaN logits).

Python-API models are probed with one forward pass before the sweep; each misfit is one RobustkitError line
naming the model, and nothing already in the output folder changes. Through the CLI (cards and checkpoints)
the same misfits are exit code 2 with one line."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

import robustkit
from _hostile import MLP_KW, assert_one_line_error, base_config
from robustkit.errors import RobustkitError
from robustkit.zoo import load_model


def _mlp(tiny) -> nn.Module:
    return load_model({"name": "mlp", "arch": "mlp", "arch_kwargs": dict(MLP_KW),
                       "checkpoint": str(tiny.root / "mlp.safetensors")})


def _data(tiny) -> tuple[torch.Tensor, torch.Tensor]:
    with np.load(tiny.root / "data.npz") as f:
        return torch.from_numpy(f["x"]).float() / 255, torch.from_numpy(f["y"]).long()


class Wrap(nn.Module):
    """The tiny MLP with its output passed through ``post`` (how the hostile models misbehave)."""

    def __init__(self, inner: nn.Module, post) -> None:
        super().__init__()
        self.inner, self.post = inner, post

    def forward(self, x):
        return self.post(self.inner(x), x)


MISFITS = {
    "shape-n-1-10": (lambda z, x: z[:, None, :], "shape (2, 1, 10)"),
    "one-row": (lambda z, x: z[:1], "shape (1, 10) for 2 inputs"),
    "tuple": (lambda z, x: (z, z), "returned a tuple"),
    "dict": (lambda z, x: {"logits": z}, "returned a dict"),
    "half": (lambda z, x: z.half(), "float16"),
    "bfloat16": (lambda z, x: z.bfloat16(), "bfloat16"),
    "integer": (lambda z, x: z.argmax(1, keepdim=True).repeat(1, 10), "int64"),
    "five-logits-on-ten-classes": (lambda z, x: z[:, :5], "5 logits but the data has 10 classes"),
    "all-nan": (lambda z, x: torch.full_like(z, float("nan")), "NaN"),
    "inf": (lambda z, x: z + float("inf"), "infinite"),
    "empty": (lambda z, x: z[:0], "shape (0, 10)"),
    "raises": (lambda z, x: z[:, 99], "forward pass"),
}


@pytest.mark.parametrize("case", sorted(MISFITS))
def test_model_that_does_not_fit_is_one_line_naming_it(tiny, unchanged, case):
    post, needle = MISFITS[case]
    with pytest.raises(RobustkitError) as info:
        robustkit.evaluate({"hostile": Wrap(_mlp(tiny), post)}, dataset=_data(tiny), attacks=["fgsm"], eps=[0.01],
                           device="cpu", out=tiny.out)
    message = str(info.value)
    assert "\n" not in message and "'hostile'" in message and needle in message, message


def test_some_nan_rows_during_the_run_are_an_error_naming_the_model(tiny, unchanged):
    """NaN for some inputs only (not the two the probe sees): an error when they are reached, not a number."""
    def post(z, x):
        bad = x.flatten(1).mean(1) > x.flatten(1).mean(1).median()  # about half the rows
        return torch.where(bad[:, None], torch.full_like(z, float("nan")), z)

    x, y = _data(tiny)
    order = torch.argsort(x.flatten(1).mean(1))  # the two darkest images first: the probe sees finite logits
    with pytest.raises(RobustkitError) as info:
        robustkit.evaluate({"partly-nan": Wrap(_mlp(tiny), post)}, dataset=(x[order], y[order]), attacks=["fgsm"],
                           eps=[0.01], device="cpu", batch_size=24, out=tiny.out)
    message = str(info.value)
    assert "\n" not in message and "'partly-nan'" in message and "NaN" in message, message


def test_double_outputs_are_evaluated_exactly_like_float_ones(tiny):
    """Decision (docs/security.md): float64 logits are accepted -- the same numbers as float32."""
    x, y = _data(tiny)
    kw = dict(dataset=(x, y), attacks=["fgsm", {"name": "pgd", "steps": 3}], eps=[0.01, 0.03], device="cpu")
    plain = robustkit.evaluate({"m": _mlp(tiny)}, **kw).per_sample
    double = robustkit.evaluate({"m": Wrap(_mlp(tiny), lambda z, x: z.double())}, **kw).per_sample
    cols = ["index", "eps", "clean_pred", "robust", "broken_by", "adv_pred"]
    pd.testing.assert_frame_equal(plain[cols], double[cols])


def test_double_parameters_are_refused(tiny, unchanged):
    with pytest.raises(RobustkitError, match="float64 but inputs are float32"):
        robustkit.evaluate({"dbl": _mlp(tiny).double()}, dataset=_data(tiny), attacks=["fgsm"], eps=[0.01],
                           device="cpu", out=tiny.out)


def test_one_hot_labels_are_named_as_such(tiny):
    """Issue 12: one-hot labels were reported as '100 images but 1000 labels'."""
    x, y = _data(tiny)
    with pytest.raises(RobustkitError, match="one-hot"):
        robustkit.evaluate(_mlp(tiny), dataset=(x, torch.eye(10, dtype=torch.long)[y]), attacks=["fgsm"], eps=[0.01])


@pytest.mark.parametrize("shape", [(0, 1, 8, 8), (0,), (3, 0, 8, 8)])
def test_empty_tensors(tiny, shape):
    """Issue 12: empty tensors gave a TypeError from hashing."""
    with pytest.raises(RobustkitError) as info:
        robustkit.evaluate(_mlp(tiny), dataset=(torch.zeros(shape), torch.zeros(shape[:1], dtype=torch.long)),
                           attacks=["fgsm"], eps=[0.01])
    assert "\n" not in str(info.value)


# ------------------------------------------------------------------------------------------ through the CLI
def test_three_channel_data_into_a_one_channel_model(tiny, cli, unchanged):
    """Issue 12: a 78-line torch traceback."""
    rng = np.random.RandomState(1)
    np.savez(tiny.root / "rgb.npz", x=rng.randint(0, 256, (24, 3, 8, 8), dtype=np.uint8), y=np.arange(24) % 10)
    cfg = base_config()
    cfg["dataset"]["root"] = "rgb.npz"
    cfg["models"] = [{"name": "cnn1", "arch": "small-cnn", "checkpoint": "cnn.safetensors",
                      "arch_kwargs": {"in_channels": 1, "input_size": 8, "width": 4}}]
    code, _, err = cli("eval", "--config", tiny.write_config(cfg), "-q")
    assert_one_line_error(code, err, "'cnn1'", "1-channel", "3 channels")


def test_three_channel_data_into_a_one_channel_mlp(tiny, cli, unchanged):
    rng = np.random.RandomState(1)
    np.savez(tiny.root / "rgb.npz", x=rng.randint(0, 256, (24, 3, 8, 8), dtype=np.uint8), y=np.arange(24) % 10)
    cfg = base_config()
    cfg["dataset"]["root"] = "rgb.npz"
    code, _, err = cli("eval", "--config", tiny.write_config(cfg), "-q")
    assert_one_line_error(code, err, "'mlp'", "forward pass")


def test_five_class_checkpoint_with_num_classes_5_on_ten_class_data(tiny, cli, unchanged):
    """Issue 12: it ran; now it is one line."""
    cfg = base_config()
    cfg["models"] = [{"name": "five", "arch": "mlp", "arch_kwargs": dict(MLP_KW), "num_classes": 5,
                      "checkpoint": "mlp5.safetensors"}]
    code, _, err = cli("eval", "--config", tiny.write_config(cfg), "-q")
    assert_one_line_error(code, err, "'five'", "5 logits", "10 classes")


def test_checkpoint_of_the_wrong_shape(tiny, cli, unchanged):
    cfg = base_config()
    cfg["models"][0]["checkpoint"] = "mlp5.safetensors"  # a 5-class checkpoint in a 10-class card
    code, _, err = cli("eval", "--config", tiny.write_config(cfg), "-q")
    assert_one_line_error(code, err, "bad.yaml", "models[0]")
