"""Checkpoint reading: the shapes files come in, strict loading messages, and refusal of code-running pickles."""
from __future__ import annotations

import hashlib
import os
from collections import OrderedDict

import pytest
import torch
from torch import nn

from robustkit.errors import CheckpointError
from robustkit.zoo import build_arch, load_into, load_model, load_state_dict, save_safetensors, sha256_file


def _lenet_sd(seed: int = 0) -> "OrderedDict[str, torch.Tensor]":
    torch.manual_seed(seed)
    return build_arch("lenet5").state_dict()


def _assert_same(a, b):
    assert sorted(a) == sorted(b)
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.mark.parametrize("wrap", [
    lambda sd: sd,
    lambda sd: {"state_dict": sd, "epoch": 7, "best_prec1": 91.0},
    lambda sd: {"model": sd, "optimizer": {"lr": 0.1}},
    lambda sd: {"net": sd},
    lambda sd: {"checkpoint": {"model_state_dict": sd}},
    lambda sd: {"my_weights": sd, "acc": 0.5},
    lambda sd: {"weights_v2": sd, "optimizer": {"state": {0: {"momentum_buffer": torch.zeros(3)}},
                                                 "param_groups": [{"lr": 0.1}]}},
    lambda sd: OrderedDict((f"module.{k}", v) for k, v in sd.items()),
    lambda sd: {"state_dict": OrderedDict((f"module._orig_mod.{k}", v) for k, v in sd.items())},
    lambda sd: [sd],
    lambda sd: {"state_dict": [sd], "err": 0.3},
], ids=["flat", "state_dict", "model", "net", "nested-twice", "single-unknown-key", "unknown-key-and-optimizer",
         "module-prefix",
        "compile-prefix", "list-of-one", "list-under-key"])
def test_weights_are_found_in_common_layouts(tmp_path, wrap):
    sd = _lenet_sd()
    path = tmp_path / "ckpt.pt"
    torch.save(wrap(sd), path)
    _assert_same(load_state_dict(path), sd)


def test_list_of_state_dicts_needs_an_index(tmp_path):
    sds = [_lenet_sd(0), _lenet_sd(1), _lenet_sd(2)]
    path = tmp_path / "cascade.pth"
    torch.save({"state_dict": sds, "epoch": 20}, path)
    with pytest.raises(CheckpointError, match=r"list of 3 state dicts.*index 0\.\.2"):
        load_state_dict(path)
    _assert_same(load_state_dict(path, index=1), sds[1])
    with pytest.raises(CheckpointError, match="out of range"):
        load_state_dict(path, index=3)


def test_real_convex_adversarial_cascade_file(shared_dir):
    """locuslab/convex_adversarial stores cascades as {'state_dict': [sd0, sd1, sd2], ...}."""
    path = shared_dir / "weights/convex_adversarial/models_scaled/mnist_small_0_3.pth"
    with pytest.raises(CheckpointError, match="list of 3 state dicts"):
        load_state_dict(path)
    raw = torch.load(path, map_location="cpu", weights_only=True)["state_dict"][2]
    model = load_model({"name": "kw-2", "arch": "kw-small", "checkpoint": {"path": str(path), "index": 2}})
    _assert_same(model.state_dict(), raw)


def test_named_entry_and_missing_entry(tmp_path):
    sd = _lenet_sd()
    path = tmp_path / "two.pt"
    torch.save({"ema": sd, "model": _lenet_sd(1)}, path)
    _assert_same(load_state_dict(path, key="ema"), sd)
    with pytest.raises(CheckpointError, match=r"no entry 'emma'.*ema, model"):
        load_state_dict(path, key="emma")


def test_file_without_weights_names_its_keys(tmp_path):
    path = tmp_path / "meta.pt"
    torch.save({"epoch": 3, "acc": 0.9}, path)
    with pytest.raises(CheckpointError, match=r"no state dict.*epoch, acc"):
        load_state_dict(path)


def test_safetensors_round_trip(tmp_path):
    torch.manual_seed(0)
    net = build_arch("small-cnn", in_channels=1, input_size=8)
    path = save_safetensors(net.state_dict(), tmp_path / "w.safetensors")
    _assert_same(load_state_dict(path), net.state_dict())
    loaded = load_model({"name": "rt", "arch": "small-cnn", "arch_kwargs": {"input_size": 8},
                         "checkpoint": str(path)})
    x = torch.rand(4, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(loaded(x), net.eval()(x))
    # also recognised by content when the suffix says nothing
    plain = tmp_path / "weights.bin"
    plain.write_bytes(path.read_bytes())
    _assert_same(load_state_dict(plain), net.state_dict())


def test_strict_error_lists_missing_unexpected_and_shapes_on_one_line():
    model = build_arch("lenet5")
    sd = OrderedDict(model.state_dict())
    del sd["linear2.bias"]
    sd["extra.weight"] = torch.zeros(3)
    sd["linear2.weight"] = torch.zeros(7, 200)
    with pytest.raises(CheckpointError) as info:
        load_into(model, sd, source="checkpoint x.pt", arch="lenet5")
    msg = str(info.value)
    assert "\n" not in msg
    assert "x.pt does not fit architecture 'lenet5'" in msg
    assert "missing keys (1): linear2.bias" in msg
    assert "unexpected keys (1): extra.weight" in msg
    assert "shape mismatches (1): linear2.weight (7, 200) in file vs (10, 200) in model" in msg


def test_long_key_lists_are_truncated():
    model = build_arch("resnet56")
    with pytest.raises(CheckpointError) as info:
        load_into(model, build_arch("lenet5").state_dict(), arch="resnet56")
    msg = str(info.value)
    assert "\n" not in msg and len(msg) < 1500
    assert "more)" in msg


def test_missing_batchnorm_counters_are_tolerated():
    """Checkpoints from old PyTorch (e.g. akamaster's) have no num_batches_tracked buffers."""
    torch.manual_seed(0)
    src = build_arch("resnet20")
    sd = OrderedDict((k, v) for k, v in src.state_dict().items() if not k.endswith("num_batches_tracked"))
    dst = build_arch("resnet20")
    load_into(dst, sd)
    _assert_same(OrderedDict((k, v) for k, v in dst.state_dict().items() if k in sd), sd)


def test_wrapper_prefix_from_a_normalized_model_is_stripped(tmp_path):
    """A state dict saved from load_model's Sequential(normalize, model) has 'model.' keys."""
    with pytest.warns(UserWarning, match="randomly initialized"):
        wrapped = load_model({"name": "w", "arch": "lenet5", "normalization": "mnist"})
    path = tmp_path / "wrapped.pt"
    torch.save(wrapped.state_dict(), path)
    again = load_model({"name": "w2", "arch": "lenet5", "normalization": "mnist", "checkpoint": str(path)})
    _assert_same(again.state_dict(), wrapped.state_dict())


class _RunsCode:
    def __init__(self, target: str) -> None:
        self.target = target

    def __reduce__(self):
        return (os.mkdir, (self.target,))


def test_pickle_that_would_run_code_is_refused(tmp_path):
    marker = tmp_path / "created-by-unpickling"
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": _lenet_sd(), "payload": _RunsCode(str(marker))}, path)
    with pytest.raises(CheckpointError, match="refused for safety") as info:
        load_state_dict(path)
    assert "\n" not in str(info.value)
    assert not marker.exists()


def test_unreadable_files(tmp_path):
    with pytest.raises(CheckpointError, match="file not found"):
        load_state_dict(tmp_path / "nope.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"PK\x03\x04 this is not a zip archive")
    with pytest.raises(CheckpointError, match="not a readable torch checkpoint"):
        load_state_dict(junk)
    bad_st = tmp_path / "bad.safetensors"
    bad_st.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(CheckpointError, match="not a valid safetensors file"):
        load_state_dict(bad_st)


def test_sha256_file_matches_hashlib_and_notices_changes(tmp_path):
    path = tmp_path / "f.bin"
    path.write_bytes(b"abc" * 1000)
    assert sha256_file(path) == hashlib.sha256(b"abc" * 1000).hexdigest()
    path.write_bytes(b"abcd" * 1000)  # new size (and mtime): the cache must not answer the old digest
    assert sha256_file(path) == hashlib.sha256(b"abcd" * 1000).hexdigest()
    st = path.stat()
    path.write_bytes(b"abce" * 1000)  # same size; force a different mtime
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    assert sha256_file(path) == hashlib.sha256(b"abce" * 1000).hexdigest()
    with pytest.raises(CheckpointError, match="cannot read"):
        sha256_file(tmp_path / "missing.bin")


def test_loaded_model_is_eval_fp32_and_carries_provenance(tmp_path):
    net = build_arch("lenet5").half()
    path = tmp_path / "half.pt"
    torch.save(net.state_dict(), path)
    model = load_model({"name": "half", "arch": "lenet5", "checkpoint": "half.pt"}, base_dir=tmp_path)
    assert not model.training and all(p.dtype == torch.float32 for p in model.parameters())
    assert model.robustkit_name == "half"
    assert model.robustkit_checkpoint_sha256 == sha256_file(path)
    assert model.robustkit_card["checkpoint_path"] == str(path.resolve())
    assert model.robustkit_card["arch"] == "lenet5"
    assert isinstance(model, nn.Module)
