"""Sweep-config validation: one-line ConfigErrors naming the config file, raised before any computation."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from robustkit.cli import main
from robustkit.engine.config import load_config, resolve_config
from robustkit.errors import ConfigError

GOOD = {
    "seed": 0,
    "device": "cpu",
    "dataset": {"name": "digits", "n_examples": 20},
    "models": ["digits-mlp"],
    "threat_model": {"norm": "Linf", "eps": [0.1]},
    "attacks": ["fgsm", {"name": "pgd", "steps": 5}],
    "output": "out",
}


def write(tmp_path: Path, data: dict, name: str = "sweep.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return path


def with_(**changes) -> dict:
    data = {k: (dict(v) if isinstance(v, dict) else list(v) if isinstance(v, list) else v) for k, v in GOOD.items()}
    data.update(changes)
    return data


def cli_error(tmp_path: Path, data: dict, capsys) -> str:
    """Run ``robustkit eval --config`` and return its one-line error (asserting exit status 2, no output)."""
    path = write(tmp_path, data)
    code = main(["eval", "--config", str(path), "--quiet"])
    captured = capsys.readouterr()
    assert code == 2
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("error: sweep.yaml: ")
    assert not (tmp_path / "out").exists()  # nothing was computed (no store was even created)
    return lines[0]


@pytest.mark.parametrize("data,needles", [
    (with_(attaks=["fgsm"]), ["unknown key 'attaks'", 'did you mean "attacks"']),
    (with_(models=[{"name": "m", "arch": "mlp", "chekpoint": "w.pt"}]),
     ["models[0]: unknown key 'chekpoint'", 'did you mean "checkpoint"']),
    (with_(threat_model={"norm": "Linf", "epss": [0.1]}), ["threat_model: unknown key 'epss'", 'did you mean "eps"']),
    (with_(seed="zero"), ["seed: expected an integer, got 'zero'"]),
    (with_(batch_size=0), ["batch_size: expected a positive integer"]),
    (with_(models="digits-mlp", dataset=5), ["dataset: expected a name or a mapping"]),
    (with_(models=[3]), ["models[0]: expected a zoo name"]),
    (with_(threat_model={"norm": "Linf", "eps": [0]}), ["threat_model.eps[0]: expected eps > 0, got 0.0"]),
    (with_(threat_model={"norm": "Linf", "eps": [8]}), ["threat_model.eps[0]: Linf eps must be <= 1", "8.0/255"]),
    (with_(threat_model={"norm": "Linf", "eps": "abc"}), ["threat_model.eps: expected a number or a fraction"]),
    (with_(threat_model={"norm": "L7", "eps": 0.1}), ["threat_model.norm: expected one of Linf, L2, L1"]),
    (with_(attacks=["pgdd"]), ["attacks[0]: unknown attack 'pgdd'", 'did you mean "pgd"']),
    (with_(attacks=[{"name": "pgd", "stepz": 3}]), ["attacks[0]: attack 'pgd': unknown parameter 'stepz'"]),
    (with_(attacks=["fgsm", "fgsm"]), ["two attacks are labelled 'fgsm'"]),
    (with_(models=[{"name": "m", "arch": "lenet5", "checkpoint": "missing/weights.pt"}]),
     ["models[0].checkpoint: file not found:", "missing/weights.pt"]),
    (with_(dataset={"name": "mnist", "root": "no-such-folder"}), ["dataset.root: not found:", "no-such-folder"]),
    (with_(models=[{"name": "m", "arch": "mlp", "defense": "jpg"}]), ["models[0].defense: unknown defense 'jpg'",
                                                                       'did you mean "jpeg"']),
    (with_(models=[{"name": "m", "members": ["a"]}]), ["models[0].members: expected a list of at least 2"]),
])
def test_config_errors_are_one_line_and_name_the_file(tmp_path, capsys, data, needles):
    line = cli_error(tmp_path, data, capsys)
    for needle in needles:
        assert needle in line, line


@pytest.mark.parametrize("data,needles", [
    (with_(models=["digits-mpl"]), ["models[0] (digits-mpl):", "digits-mlp"]),
    (with_(dataset={"name": "mnits"}), ["dataset:", "unknown dataset 'mnits'", "mnist"]),
    (with_(device="tpu"), ["device: expected auto, cpu, cuda or cuda:N"]),
])
def test_names_that_need_a_lookup_fail_before_compute(tmp_path, capsys, data, needles):
    line = cli_error(tmp_path, data, capsys)
    for needle in needles:
        assert needle in line, line


def test_relative_paths_resolve_against_the_config_folder(tmp_path, monkeypatch):
    sub = tmp_path / "configs"
    sub.mkdir()
    (tmp_path / "weights").mkdir()
    (tmp_path / "weights" / "w.pt").write_bytes(b"not a real checkpoint")
    path = write(sub, with_(models=[{"name": "m", "arch": "lenet5", "checkpoint": "../weights/w.pt"}],
                            output="../results"))
    monkeypatch.chdir(tmp_path / "weights")  # the current directory must not matter
    cfg = load_config(path)
    assert cfg.models[0]["checkpoint"] == str(tmp_path / "weights" / "w.pt")
    assert cfg.output == tmp_path / "results"
    assert cfg.eps == [0.1] and cfg.norm == "Linf"


def test_example_config_parses(shared_dir):
    cfg = load_config(Path(__file__).parent / "configs" / "mnist-linf.yaml")
    assert cfg.eps == [0.1, 0.2, 0.3]
    assert Path(cfg.dataset["root"]) == (shared_dir / "data" / "mnist").resolve()
    assert [m["name"] for m in cfg.models] == ["lenet5-clean", "lenet5-adv"]


def test_resolve_rejects_bad_overrides(tmp_path):
    cfg = load_config(write(tmp_path, GOOD))
    with pytest.raises(ConfigError, match=r"^sweep.yaml: --n-examples: expected a positive integer"):
        resolve_config(cfg, n_examples=0)
