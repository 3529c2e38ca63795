"""The attack plugin contract: ``Attack.__call__`` is final, subclasses implement ``perturb`` only."""
from __future__ import annotations

import re
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from torch import nn

from robustkit.attacks import ATTACKS, Attack, build_attack, get_attack_class
from robustkit.cli import main
from robustkit.errors import ConfigError
from robustkit.threat import ThreatModel


def test_a_subclass_that_defines_call_is_rejected_with_a_clear_error():
    with pytest.raises(TypeError, match=r"ShortCut defines __call__, which is final.*implement perturb"):
        class ShortCut(Attack):  # noqa: F841  (never created: the class statement itself must fail)
            name = "shortcut"

            def __call__(self, model, x, y, threat, **kwargs):  # skips re-prediction and the budget check
                return x


def test_a_grandchild_cannot_override_call_either():
    class Base(Attack):
        name = "base-for-test"

        def perturb(self, model, x, y, eps, norm, *, target, generator):
            return x

    with pytest.raises(TypeError, match="final"):
        type("Child", (Base,), {"__call__": lambda self, *a, **k: None})


@pytest.mark.skipif(sys.version_info < (3, 11), reason="typing.final records __final__ from Python 3.11")
def test_call_is_marked_final_for_type_checkers():
    assert getattr(Attack.__call__, "__final__", False) is True


def test_no_registered_attack_overrides_call():
    classes = [ATTACKS.get(name) for name in ATTACKS.names()] + [get_attack_class("torchattacks:PGD")]
    for cls in classes:
        assert cls.__call__ is Attack.__call__, cls


def test_a_perturb_only_attack_gets_the_guarantees():
    """An attack that returns an out-of-ball point is projected back; success is re-predicted."""

    class Overshoot(Attack):
        name = "overshoot-for-test"

        def perturb(self, model, x, y, eps, norm, *, target, generator):
            return x + 10.0  # far outside the ball and outside [0, 1]

    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 2)).eval()
    x = torch.full((3, 1, 2, 2), 0.5)
    y = model(x).argmax(1)
    res = build_attack(Overshoot())(model, x, y, ThreatModel("Linf", 0.1))
    assert torch.allclose(res.x_adv, torch.full_like(x, 0.6))
    assert torch.equal(res.pred, model(res.x_adv).argmax(1))


# ------------------------------------------------------------------------------ docs/write-your-own-attack.md
DOC = Path(__file__).resolve().parents[1] / "docs" / "write-your-own-attack.md"


def test_write_your_own_attack_page_runs(tmp_path, capsys):
    """The page's Python block and sweep config run as written (a user copies them)."""
    text = DOC.read_text(encoding="utf-8")
    (code,) = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    (config,) = re.findall(r"```yaml\n(.*?)```", text, flags=re.S)
    namespace: dict = {"__name__": "write_your_own_attack_example"}
    try:
        exec(compile(code, str(DOC), "exec"), namespace)
        assert ATTACKS.get("mi-fgsm") is namespace["MIFGSM"]
        res = namespace["res"]
        assert float(res.norms.max()) <= 0.1 * (1 + 1e-6)
        assert 0 < int(res.success.sum()) <= 64
        board = namespace["result"].leaderboard
        row = board.iloc[0]
        assert row["model"] == "digits-mlp" and row["n_examples"] == 100
        # the momentum attack breaks samples FGSM left (cumulative columns of the cascade)
        assert row["acc_mi-fgsm"] < row["acc_fgsm"] <= row["clean_acc"]
        assert row["robust_acc"] == row["acc_mi-fgsm"]
        with pytest.raises(ConfigError, match=r"unknown parameter 'stpes' \(did you mean \"steps\"\?\)"):
            build_attack({"name": "mi-fgsm", "stpes": 10})
        with pytest.raises(ConfigError, match="steps: expected an integer >= 1"):
            build_attack({"name": "mi-fgsm", "steps": 0})

        # the sweep config, through the command line, in this process (where the attack is registered)
        (tmp_path / "sweep.yaml").write_text(config, encoding="utf-8")
        assert main(["eval", "--config", str(tmp_path / "sweep.yaml"), "--out", str(tmp_path / "out"),
                     "--quiet"]) == 0
        swept = pd.read_csv(tmp_path / "out" / "leaderboard.csv")
        assert swept["acc_mi-fgsm"].iloc[0] == pytest.approx(row["acc_mi-fgsm"])  # same seed, same numbers
        assert "| digits-mlp |" in capsys.readouterr().out
    finally:
        ATTACKS._items.pop("mi-fgsm", None)  # let the page run again in the same process
