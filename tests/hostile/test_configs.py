"""Hostile sweep configs and command lines: each is one line on stderr, exit code 2, earlier results intact."""
from __future__ import annotations

import copy
from typing import Any, Callable

import pytest
import yaml

from _hostile import assert_one_line_error, base_config

BOMB = """
a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]
b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]
c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]
d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]
e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]
f: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e]
g: &g [*f, *f, *f, *f, *f, *f, *f, *f, *f]
"""


def _anchored_attacks(field: str) -> str:
    """A config whose attack ``field`` is an alias bomb of 10**8 strings once expanded (a few hundred bytes)."""
    cfg = base_config()
    cfg.pop("attacks")
    chain = ['{name: fgsm, %s: &a0 ["x","x","x","x","x","x","x","x","x","x"]}' % field]
    for i in range(1, 8):
        chain.append("{name: fgsm, %s: &a%d [%s]}" % (field, i, ", ".join([f"*a{i - 1}"] * 10)))
    return yaml.safe_dump(cfg) + "attacks:\n" + "".join(f"  - {c}\n" for c in chain)


@pytest.mark.parametrize("field", ["label", "steps"])
def test_yaml_alias_bomb_is_refused_without_expanding_it(tiny, cli, unchanged, field):
    """Issue 12 (Bad 4): an alias bomb in an attack label or a number field."""
    path = tiny.write_config(_anchored_attacks(field))
    code, _, err = cli("eval", "--config", path, "-q")
    assert_one_line_error(code, err, "bad.yaml", "aliases")


def test_bomb_under_an_unknown_key_is_refused_too(tiny, cli, unchanged):
    path = tiny.write_config(BOMB + tiny.config.read_text())
    code, _, err = cli("eval", "--config", path, "-q")
    assert_one_line_error(code, err, "bad.yaml", "aliases")


def _mutate(change: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    cfg = copy.deepcopy(base_config())
    change(cfg)
    return cfg


BAD_CONFIGS = {
    "steps-10**30": (lambda c: c.__setitem__("attacks", [{"name": "pgd", "steps": 10 ** 30}]), ["steps", "upper bound"]),
    "label-not-a-string": (lambda c: c.__setitem__("attacks", [{"name": "fgsm", "label": [1, 2]}]), ["label"]),
    "label-with-newline": (lambda c: c.__setitem__("attacks", [{"name": "fgsm", "label": "a\nb"}]), ["label"]),
    "label-too-long": (lambda c: c.__setitem__("attacks", [{"name": "fgsm", "label": "x" * 500}]), ["label"]),
    "step-size-nan": (lambda c: c.__setitem__("attacks", [{"name": "pgd", "step_size": float("nan")}]), ["step_size"]),
    "unknown-key": (lambda c: c.__setitem__("attaks", []), ["attaks", "did you mean"]),
    "eps-negative": (lambda c: c["threat_model"].__setitem__("eps", [-0.1]), ["threat_model.eps"]),
    "eps-above-1-linf": (lambda c: c["threat_model"].__setitem__("eps", [2.0]), ["threat_model.eps"]),
    "eps-text": (lambda c: c["threat_model"].__setitem__("eps", ["abc"]), ["threat_model.eps"]),
    "norm-l3": (lambda c: c["threat_model"].__setitem__("norm", "L3"), ["threat_model.norm"]),
    "unknown-attack": (lambda c: c.__setitem__("attacks", ["pgdd"]), ["pgdd", "did you mean"]),
    "unknown-attack-param": (lambda c: c.__setitem__("attacks", [{"name": "pgd", "stepz": 3}]), ["stepz"]),
    "duplicate-labels": (lambda c: c.__setitem__("attacks", ["fgsm", "fgsm"]), ["fgsm", "label"]),
    "seed-text": (lambda c: c.__setitem__("seed", "zero"), ["seed"]),
    "batch-size-0": (lambda c: c.__setitem__("batch_size", 0), ["batch_size"]),
    "dataset-root-missing": (lambda c: c["dataset"].__setitem__("root", "nope.npz"), ["dataset.root", "nope.npz"]),
    "models-empty": (lambda c: c.__setitem__("models", []), ["models"]),
    "checks-bogus": (lambda c: c.__setitem__("checks", "bogus"), ["checks"]),
    "radii-negative": (lambda c: c.__setitem__("certified_radii", [-1]), ["certified_radii"]),
    "checkpoint-missing": (lambda c: c["models"][0].__setitem__("checkpoint", "gone.pt"), ["checkpoint", "gone.pt"]),
    "device-tpu": (lambda c: c.__setitem__("device", "tpu"), ["device"]),
    "n-examples-zero": (lambda c: c["dataset"].__setitem__("n_examples", 0), ["n_examples"]),
    "n-examples-too-many": (lambda c: c["dataset"].__setitem__("n_examples", 10 ** 6), ["n_examples"]),
    "npz-classes-not-strings": (lambda c: c["dataset"].__setitem__("classes", [[1], [2]]), ["classes"]),
    "eot-iter-huge": (lambda c: c.__setitem__("attacks", [{"name": "fgsm", "eot_iter": 10 ** 12}]), ["eot_iter"]),
}


@pytest.mark.parametrize("case", sorted(BAD_CONFIGS))
def test_bad_config_value_is_one_line(tiny, cli, unchanged, case):
    change, needles = BAD_CONFIGS[case]
    path = tiny.write_config(_mutate(change))
    code, _, err = cli("eval", "--config", path, "-q")
    assert_one_line_error(code, err, "bad.yaml", *needles)


@pytest.mark.parametrize("text,needle", [
    ("seed: [unclosed\n", "not valid YAML"),
    ("- just\n- a list\n", "expected a mapping"),
    ("\t- tab: [\n", "not valid YAML"),
    ("[" * 5000 + "]" * 5000 + "\n", "bad.yaml"),
])
def test_config_that_is_not_a_config(tiny, cli, unchanged, text, needle):
    path = tiny.write_config(text)
    code, _, err = cli("eval", "--config", path, "-q")
    assert_one_line_error(code, err, "bad.yaml", needle)


def test_binary_and_oversized_config_files(tiny, cli, unchanged):
    binary = tiny.root / "binary.yaml"
    binary.write_bytes(b"\xff\xfe\x00garbage\x80" * 10)
    code, _, err = cli("eval", "--config", binary, "-q")
    assert_one_line_error(code, err, "binary.yaml", "UTF-8")
    huge = tiny.root / "huge.yaml"
    huge.write_text("# padding\n" * 200_000)
    code, _, err = cli("eval", "--config", huge, "-q")
    assert_one_line_error(code, err, "huge.yaml", "larger than")


def test_inline_attack_alias_bomb_on_the_command_line(tiny, cli, unchanged):
    keys = ["k0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    keys += [f"k{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 8)]
    code, _, err = cli("eval", "--model", "digits-mlp", "--dataset", "digits", "--eps", "0.1",
                       "--attack", "{name: fgsm, " + ", ".join(keys) + "}", "--out", tiny.out, "-q")
    assert_one_line_error(code, err, "--attack", "aliases")


@pytest.mark.parametrize("target", ["config-itself", "dev-null", "file-parent"])
def test_output_that_is_a_file(tiny, cli, unchanged, target):
    """Issue 12 (Weak): ``output:`` the config itself or /dev/null, ``--out afile.txt/sub``."""
    (tiny.root / "afile.txt").write_text("keep me\n")
    if target == "config-itself":
        cfg = base_config()
        cfg["output"] = "bad.yaml"
        path = tiny.write_config(cfg)
        code, _, err = cli("eval", "--config", path, "-q")
        assert_one_line_error(code, err, "bad.yaml", "not a folder")
        assert "output" in (tiny.root / "bad.yaml").read_text()  # the config was not overwritten
    elif target == "dev-null":
        cfg = base_config()
        cfg["output"] = "/dev/null"
        path = tiny.write_config(cfg)
        code, _, err = cli("eval", "--config", path, "-q")
        assert_one_line_error(code, err, "/dev/null", "not a folder")
    else:
        code, _, err = cli("eval", "--config", tiny.config, "--out", tiny.root / "afile.txt" / "sub", "-q")
        assert_one_line_error(code, err, "afile.txt", "a file")
        assert (tiny.root / "afile.txt").read_text() == "keep me\n"


def test_n_examples_flag_negative(tiny, cli, unchanged):
    code, _, err = cli("eval", "--config", tiny.config, "--n-examples", "-3", "-q")
    assert_one_line_error(code, err, "--n-examples")


def test_config_and_adhoc_flags_together(tiny, cli, unchanged):
    code, _, err = cli("eval", "--config", tiny.config, "--eps", "0.1", "-q")
    assert_one_line_error(code, err, "--config")
