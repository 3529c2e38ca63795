"""Model cards, the weights-folder lookup, on-demand download and ``robustkit zoo list``."""
from __future__ import annotations

import functools
import http.server
import json
import shutil
import threading
from pathlib import Path

import pytest
import torch
import yaml

from robustkit.cli import main
from robustkit.errors import CheckpointError, ConfigError, RobustkitError
from robustkit.zoo import (CARD_KEYS, build_arch, builtin_cards_dir, collect_cards, load_model, model_info,
                           parse_card, read_card_file, save_safetensors)

LENET_FILE = "advertorch/mnist_lenet5_clntrained.pt"
LENET_SHA = "551a11267982991fb0c9f74e9094de19e54b51455eff9bd1c19c77a69d85156a"


def _write(folder: Path, name: str, card: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(json.dumps(card) if path.suffix == ".json" else yaml.safe_dump(card, sort_keys=False))
    return path


def _lenet_card(**over) -> dict:
    card = {"name": "my-lenet", "arch": "lenet5", "dataset": "mnist", "normalization": None,
            "checkpoint": {"file": LENET_FILE, "sha256": LENET_SHA}, "training": "standard training",
            "threat_model": None, "source": "test", "reported_clean_acc": 98.89, "licence": "LGPL-3.0"}
    card.update(over)
    return card


@pytest.fixture
def isolated_cache(tmp_path, monkeypatch):
    """An empty download cache and no weights folder from the environment."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("ROBUSTKIT_CACHE", str(cache))
    monkeypatch.delenv("ROBUSTKIT_WEIGHTS_DIR", raising=False)
    return cache


def test_builtin_cards_are_complete_and_unique():
    cards = [read_card_file(p) for p in sorted(builtin_cards_dir().glob("*.yaml"))]
    names = {c.name for c in cards}
    assert {"mnist-lenet5-clean", "mnist-lenet5-pgd", "cifar10-resnet20", "cifar10-resnet32", "cifar10-resnet44",
            "cifar10-resnet56", "cifar10-resnet2b-pgd"} <= names
    assert len(names) == len(cards)
    for c in cards:
        assert c.checkpoint.url.startswith("https://raw.githubusercontent.com/"), c.name
        assert c.checkpoint.url.endswith(Path(c.checkpoint.file).name)
        assert c.licence and c.source and c.training and c.dataset and c.reported_clean_acc
        assert set(yaml.safe_load(c.path.read_text())) == set(CARD_KEYS)


def test_unknown_card_key_names_file_and_suggests(tmp_path):
    path = _write(tmp_path, "typo.yaml", _lenet_card(normalisation=None))
    with pytest.raises(ConfigError) as info:
        read_card_file(path)
    msg = str(info.value)
    assert "typo.yaml" in msg and "'normalisation'" in msg and 'did you mean "normalization"' in msg
    assert "\n" not in msg


@pytest.mark.parametrize("over,match", [
    ({"arch": "lenet"}, r"arch: unknown architecture 'lenet' \(did you mean \"lenet5\"\?\)"),
    ({"name": ""}, "name: required"),
    ({"num_classes": 0}, "num_classes: expected a positive integer"),
    ({"reported_clean_acc": 0.9889 * 1000}, "reported_clean_acc: expected a percentage"),
    ({"normalization": {"mean": [0.5], "std": [0.0]}}, r"normalization.std: every value must be > 0"),
    ({"normalization": {"mean": [0.5, 0.5], "std": [0.2]}}, "mean has 2 values but std has 1"),
    ({"normalization": "imagenett"}, "unknown preset 'imagenett'"),
    ({"checkpoint": {"file": LENET_FILE, "sha256": "abc"}}, "checkpoint.sha256: expected 64 hex digits"),
    ({"checkpoint": {"file": LENET_FILE}}, "needs its sha256"),
    ({"checkpoint": {"file": "../escape.pt", "sha256": LENET_SHA}}, "relative path without '..'"),
    ({"checkpoint": {"path": "a.pt", "file": LENET_FILE, "sha256": LENET_SHA}}, "exactly one of path"),
    ({"checkpoint": {"file": LENET_FILE, "sha256": LENET_SHA, "ur": "http://x"}}, r'did you mean "url"'),
    ({"checkpoint": {"file": LENET_FILE, "sha256": LENET_SHA, "url": "ftp://x/y"}}, "http"),
    ({"threat_model": {"norm": "L3", "eps": 0.1}}, "norm"),
    ({"arch_kwargs": ["x"]}, "arch_kwargs: expected a mapping"),
])
def test_card_validation_messages(tmp_path, over, match):
    path = _write(tmp_path, "bad.yaml", _lenet_card(**over))
    with pytest.raises(ConfigError, match=match) as info:
        read_card_file(path)
    assert "bad.yaml" in str(info.value) or "threat_model.norm" in str(info.value)


def test_yaml_syntax_error_is_one_line(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("name: x\narch: [lenet5\n")
    with pytest.raises(ConfigError, match=r"broken.yaml: not valid YAML at line \d+") as info:
        read_card_file(path)
    assert "\n" not in str(info.value)


def test_bad_arch_kwargs_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown argument 'in_channel' \(did you mean \"in_channels\"\?\)"):
        load_model({"name": "x", "arch": "lenet5", "arch_kwargs": {"in_channel": 1}})


def test_config_form_with_relative_checkpoint_and_normalization(tmp_path):
    torch.manual_seed(0)
    net = build_arch("small-cnn", input_size=8).eval()
    save_safetensors(net.state_dict(), tmp_path / "sub" / "w.safetensors")
    model = load_model({"name": "norm", "arch": "small-cnn", "arch_kwargs": {"input_size": 8},
                        "checkpoint": "sub/w.safetensors", "normalization": {"mean": [0.25], "std": [0.5]}},
                       base_dir=tmp_path)
    x = torch.rand(3, 1, 8, 8)
    with torch.no_grad():
        assert torch.allclose(model(x), net((x - 0.25) / 0.5), atol=1e-6)
    assert model.robustkit_card["normalization"] == {"mean": [0.25], "std": [0.5]}


def test_weights_dir_lookup_verifies_sha256(shared_dir, tmp_path, isolated_cache, monkeypatch):
    weights = tmp_path / "weights"
    (weights / "advertorch").mkdir(parents=True)
    shutil.copy(shared_dir / "weights" / LENET_FILE, weights / LENET_FILE)
    zoo = tmp_path / "zoo"
    _write(zoo, "my-lenet.yaml", _lenet_card())
    model = load_model("my-lenet", zoo_dirs=[zoo], weights_dir=weights)
    assert model_info(model)["checkpoint_sha256"] == LENET_SHA
    monkeypatch.setenv("ROBUSTKIT_WEIGHTS_DIR", str(weights))  # the environment variable works the same way
    assert load_model("my-lenet", zoo_dirs=[zoo]).robustkit_card["checkpoint_path"] == str((weights / LENET_FILE).resolve())
    # a different file under the right name is refused, not loaded
    data = bytearray((weights / LENET_FILE).read_bytes())
    data[-10] ^= 0xFF
    (weights / LENET_FILE).write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="sha256 .* but the card expects " + LENET_SHA):
        load_model("my-lenet", zoo_dirs=[zoo])


def test_missing_checkpoint_without_download_says_how_to_get_it(tmp_path, isolated_cache):
    zoo = tmp_path / "zoo"
    _write(zoo, "c.yaml", _lenet_card(checkpoint={"file": LENET_FILE, "sha256": LENET_SHA,
                                                  "url": "http://127.0.0.1:9/none.pt"}))
    with pytest.raises(CheckpointError, match=r"not available locally.*download=True.*ROBUSTKIT_WEIGHTS_DIR"):
        load_model("my-lenet", zoo_dirs=[zoo])


@pytest.fixture
def weights_server(shared_dir):
    """A local HTTP server serving the shared weights folder; always shut down."""
    handler = functools.partial(_QuietHandler, directory=str(shared_dir / "weights"))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:  # keep test output clean
        pass


def test_download_into_cache_verifies_and_reuses(tmp_path, isolated_cache, weights_server):
    zoo = tmp_path / "zoo"
    _write(zoo, "dl.yaml", _lenet_card(checkpoint={"file": LENET_FILE, "sha256": LENET_SHA,
                                                   "url": f"{weights_server}/{LENET_FILE}"}))
    model = load_model("my-lenet", zoo_dirs=[zoo], download=True)
    cached = isolated_cache / "checkpoints" / LENET_FILE
    assert cached.is_file() and model.robustkit_checkpoint_sha256 == LENET_SHA
    assert not [p for p in cached.parent.iterdir() if p.name.endswith(".part")]
    # now cached: no download needed
    again = load_model("my-lenet", zoo_dirs=[zoo])
    assert again.robustkit_card["checkpoint_path"] == str(cached.resolve())


def test_download_with_wrong_sha_is_discarded(tmp_path, isolated_cache, weights_server):
    zoo = tmp_path / "zoo"
    wrong = "0" * 64
    _write(zoo, "dl.yaml", _lenet_card(checkpoint={"file": LENET_FILE, "sha256": wrong,
                                                   "url": f"{weights_server}/{LENET_FILE}"}))
    with pytest.raises(CheckpointError, match=f"does not match the expected {wrong}"):
        load_model("my-lenet", zoo_dirs=[zoo], download=True)
    folder = isolated_cache / "checkpoints" / "advertorch"
    assert not folder.exists() or not list(folder.iterdir())
    _write(zoo, "dl.yaml", _lenet_card(checkpoint={"file": LENET_FILE, "sha256": LENET_SHA,
                                                   "url": f"{weights_server}/missing.pt"}))
    with pytest.raises(CheckpointError, match="download from .*missing.pt failed"):
        load_model("my-lenet", zoo_dirs=[zoo], download=True)


def test_user_zoo_names_and_duplicates(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    _write(a, "one.yaml", _lenet_card(name="shared-name"))
    _write(b, "two.json", _lenet_card(name="Shared-Name"))
    assert "shared-name" in collect_cards([a])
    with pytest.raises(ConfigError, match="defined twice"):
        collect_cards([a, b])
    with pytest.raises(RobustkitError, match=r"unknown zoo model 'mnist-lenet5-clen' \(did you mean \"mnist-lenet5-clean\""):
        load_model("mnist-lenet5-clen")


def test_zoo_list_cli(tmp_path, shared_dir, isolated_cache, capsys):
    zoo = tmp_path / "zoo"
    _write(zoo, "mine.yaml", _lenet_card(name="zz-mine", checkpoint=str(shared_dir / "weights" / LENET_FILE)))
    _write(zoo, "gone.yaml", _lenet_card(name="zz-gone", checkpoint="nowhere.pt"))
    assert main(["zoo", "list", "--zoo", str(zoo), "--weights-dir", str(shared_dir / "weights")]) == 0
    out = capsys.readouterr().out
    lines = {line.split()[0]: line for line in out.splitlines()[2:]}
    assert out.splitlines()[0].split()[:3] == ["name", "arch", "dataset"]
    assert "98.89%" in lines["mnist-lenet5-clean"] and "yes (weights dir)" in lines["mnist-lenet5-clean"]
    assert "Linf 2/255" in lines["cifar10-resnet2b-pgd"]
    assert "yes (local)" in lines["zz-mine"] and "no (missing)" in lines["zz-gone"]
    assert {"digits-cnn", "digits-cnn-pgd", "digits-mlp"} <= set(lines)

    assert main(["zoo", "list"]) == 0
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()[2:]}
    assert "no (downloadable)" in lines["cifar10-resnet20"]

    assert main(["zoo", "list", "--zoo", str(tmp_path / "absent")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: zoo folder") and err.count("\n") == 1


def test_zoo_show_cli(capsys):
    assert main(["zoo", "show", "cifar10-resnet20"]) == 0
    shown = yaml.safe_load(capsys.readouterr().out)
    assert shown["arch"] == "resnet20" and shown["normalization"]["std"] == [0.229, 0.224, 0.225]
    assert parse_card({k: v for k, v in shown.items() if k in CARD_KEYS}, origin="roundtrip").name == "cifar10-resnet20"
