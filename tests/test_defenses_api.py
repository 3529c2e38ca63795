"""The defense-author API: registry and entry points, spec validation, declarations, descriptions, and the
"Write your own defense" page, whose example is extracted from the markdown and run."""
from __future__ import annotations

import re
import sys
import textwrap
from importlib import metadata
from pathlib import Path

import pytest
import torch
from torch import nn

import robustkit.defenses as defenses
from robustkit.defenses import DEFENSES, Defense, build_defense, check_defense_spec, register_defense
from robustkit.errors import ConfigError, RobustkitError
from robustkit.randomness import refresh_randomized
from robustkit.predict import is_randomized

DOCS = Path(__file__).resolve().parents[1] / "docs"


def tiny() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(4, 3))


def test_builtin_defenses_are_registered() -> None:
    names = defenses.list_defenses()
    for name in ("smoothing", "distillation", "ensemble", "bit-depth", "jpeg", "median-filter", "gaussian-noise"):
        assert name in names
    assert defenses.get_defense_class("randomized-smoothing") is defenses.RandomizedSmoothing


@pytest.mark.parametrize("spec,message", [
    ("smoothin", 'unknown defense \'smoothin\' \\(did you mean "smoothing"\\?\\)'),
    ({"name": "jpeg", "qualiti": 50}, "defense 'jpeg': unknown parameter 'qualiti' \\(did you mean \"quality\"\\?\\)"),
    ({"name": "jpeg", "quality": "high"}, "defense 'jpeg': quality: expected an integer, got 'high'"),
    ({"name": "bit-depth", "bpda": "yes"}, "bpda: expected true or false"),
    ({"sigma": 0.5}, "each defense needs a 'name'"),
    (42, "expected a defense name or a mapping"),
])
def test_bad_specs_are_one_line_config_errors(spec, message) -> None:
    with pytest.raises(ConfigError, match=message):
        check_defense_spec(spec)
    with pytest.raises(ConfigError, match=message):
        build_defense(spec, tiny())


def test_model_count_is_checked() -> None:
    with pytest.raises(ConfigError, match="takes exactly one model, got 2.*ensemble"):
        build_defense("jpeg", [tiny(), tiny()])
    with pytest.raises(ConfigError, match="expected a torch nn.Module"):
        build_defense("jpeg", "lenet5")


def test_chained_specs_wrap_in_order_and_describe_themselves() -> None:
    chain = build_defense([{"name": "bit-depth", "bits": 4}, {"name": "gaussian-noise", "sigma": 0.2}], tiny())
    assert isinstance(chain, defenses.GaussianNoiseDefense) and isinstance(chain.model, defenses.BitDepthDefense)
    assert chain.describe() == "gaussian-noise(sigma=0.2, clip=True)"
    assert chain.model.describe() == "bit-depth(bits=4, bpda=True)"
    assert chain.config() == {"name": "gaussian-noise", "sigma": 0.2, "clip": True}
    assert chain.randomized is True
    # the settings are part of repr(model), which the engine hashes into a job's identity
    assert "sigma=0.2" in repr(chain) and "bits=4" in repr(chain)


def test_randomized_declarations() -> None:
    class Plain(Defense):
        name = "plain-test"

        def forward(self, x):
            return self.model(x)

    class Undeclared(nn.Module):
        def forward(self, x):
            return torch.randn(x.shape[0], 3)

    x = torch.rand(4, 1, 2, 2)
    plain = Plain(tiny())
    assert plain.randomized is None and refresh_randomized(plain, x) is False
    hidden = Plain(Undeclared())
    assert hidden.randomized is None and refresh_randomized(hidden, x) is True  # None keeps detection on
    plain.randomized = True
    assert is_randomized(plain) is True


def test_certify_is_only_for_certifiable_defenses() -> None:
    with pytest.raises(RobustkitError, match="gives no certificates; certifiable defenses: .*smoothing"):
        build_defense("jpeg", tiny()).certify(torch.rand(1, 1, 2, 2))


def test_registration_names_the_class_and_rejects_clashes() -> None:
    @register_defense("test-identity-defense")
    class Identity(Defense):
        defaults = {"scale": 1.0}

        def forward(self, x):
            return self.model(x) * self.params["scale"]

    built = build_defense({"name": "test-identity-defense", "scale": 2}, tiny())
    assert built.describe() == "test-identity-defense(scale=2)"
    assert built.params["scale"] == 2.0 and isinstance(built.params["scale"], float)
    with pytest.raises(RobustkitError, match="registered twice"):
        @register_defense("test-identity-defense")
        class Other(Defense):
            pass


def test_entry_point_plugins_are_found(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "rk_plugin_defense.py").write_text(textwrap.dedent('''
        from robustkit.defenses import Defense

        class Halve(Defense):
            name = "halve"
            def forward(self, x):
                return self.model(x) / 2
    '''))
    monkeypatch.syspath_prepend(str(tmp_path))
    ep = metadata.EntryPoint(name="halve", value="rk_plugin_defense:Halve", group="robustkit.defenses")
    real = metadata.entry_points
    monkeypatch.setattr(metadata, "entry_points",
                        lambda **kw: [ep] if kw.get("group") == "robustkit.defenses" else real(**kw))
    monkeypatch.setattr(DEFENSES, "_entry_points_loaded", False)
    monkeypatch.setattr(DEFENSES, "_items", dict(DEFENSES._items))
    model = tiny()
    defended = build_defense("halve", model)
    x = torch.rand(2, 1, 2, 2)
    assert torch.allclose(defended(x), model(x) / 2)
    assert "halve" in defenses.list_defenses()
    sys.modules.pop("rk_plugin_defense", None)


def test_write_your_own_defense_page_runs() -> None:
    text = (DOCS / "write-your-own-defense.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert len(blocks) == 1
    code = blocks[0]
    assert len(code.strip().splitlines()) < 40
    namespace: dict = {"__name__": "write_your_own_defense_example"}
    try:
        exec(compile(code, str(DOCS / "write-your-own-defense.md"), "exec"), namespace)
        board = namespace["result"].leaderboard
        assert board["model"].tolist() == ["quantized-noise(levels=4, sigma=0.1)"]
        assert float(board["clean_acc"].iloc[0]) >= 60.0
        defended = namespace["defended"]
        assert defended.randomized is True
        from robustkit.attacks.bpda import bpda_parts

        assert bpda_parts(defended) == ["quantize"]
        with pytest.raises(ConfigError, match="levels: expected an integer >= 2"):
            build_defense({"name": "quantized-noise", "levels": 1}, tiny())
    finally:
        DEFENSES._items.pop("quantized-noise", None)  # let the page run again in the same process


def test_sweep_entry_helpers_for_the_engine() -> None:
    from robustkit.defenses.sweep import (certified_leaderboard_rows, check_model_entry, defended_model,
                                          leaderboard_fields)

    check_model_entry({"name": "a", "arch": "lenet5", "defense": {"name": "jpeg", "quality": 50}})
    with pytest.raises(ConfigError, match="models\\[0\\].defense: defense 'jpeg': unknown parameter 'q'"):
        check_model_entry({"name": "a", "defense": {"name": "jpeg", "q": 50}}, "models[0]")
    with pytest.raises(ConfigError, match="members: expected a list of at least 2 models"):
        check_model_entry({"name": "e", "members": ["x"]})
    with pytest.raises(ConfigError, match="takes only name, members and defense; move 'arch'"):
        check_model_entry({"name": "e", "members": ["x", "y"], "arch": "lenet5"})
    loaded = []

    def load(spec):
        loaded.append(spec)
        return tiny()

    ens = defended_model({"name": "e", "members": ["m1", {"name": "m2", "arch": "lenet5"}]}, load)
    assert isinstance(ens, defenses.Ensemble) and loaded == ["m1", {"name": "m2", "arch": "lenet5"}]
    assert leaderboard_fields(ens)["defense"] == "ensemble(aggregation=logits, members=2)"
    single = defended_model({"name": "s", "arch": "x", "defense": [{"name": "bit-depth"}, "gaussian-noise"]}, load)
    assert loaded[-1] == {"name": "s", "arch": "x"}
    assert leaderboard_fields(single)["defense"] == "gaussian-noise(sigma=0.1, clip=True) <- bit-depth(bits=3, bpda=True)"
    assert leaderboard_fields(tiny()) == {"defense": "", "defense_config": None}
    assert certified_leaderboard_rows(single, torch.rand(2, 1, 2, 2), torch.zeros(2, dtype=torch.long)) == []
    smoothed = build_defense({"name": "smoothing", "sigma": 0.5}, tiny())
    rows = certified_leaderboard_rows(smoothed, torch.rand(3, 1, 2, 2), torch.zeros(3, dtype=torch.long), n=200,
                                      radii=(0.0, 0.5), generator=torch.Generator().manual_seed(0))
    assert [r["radius"] for r in rows] == [0.0, 0.5]
    assert all(r["kind"] == "certified" and r["norm"] == "L2" and r["n"] == 200 and r["n_examples"] == 3 for r in rows)
