"""The installed package exposes the plugin packages only as robustkit.attacks / robustkit.defenses."""
import subprocess
import sys

import pytest

from robustkit.errors import RobustkitError
from robustkit.registry import Registry


def test_no_bare_top_level_plugin_modules(tmp_path):
    code = (
        "import importlib.util as u;"
        "assert u.find_spec('attacks') is None, 'bare attacks importable';"
        "assert u.find_spec('defenses') is None, 'bare defenses importable';"
        "import robustkit.attacks, robustkit.defenses;"
        "print(robustkit.attacks.__name__)"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "robustkit.attacks"


def test_cli_entry_point_runs(tmp_path):
    out = subprocess.run([sys.executable, "-m", "robustkit.cli", "--version"], cwd=tmp_path,
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "robustkit" in out.stdout


def test_registry_names_and_did_you_mean():
    reg: Registry = Registry("widget")

    @reg.register("alpha", aliases=("a",))
    class Alpha:
        pass

    assert reg.get("ALPHA") is Alpha and reg.get("a") is Alpha
    assert "alpha" in reg and reg.names() == ["a", "alpha"]
    with pytest.raises(RobustkitError, match='did you mean "alpha"'):
        reg.get("alpah")
