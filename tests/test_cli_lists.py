"""``robustkit defenses list``, ``robustkit datasets list`` (next to ``attacks list``) and click's shell completion."""
from __future__ import annotations

import csv
import io
import os
import subprocess
import sys
from pathlib import Path

from click.shell_completion import BashComplete

from robustkit.cli import _add_commands, cli, main
from robustkit.data import list_datasets
from robustkit.defenses import DEFENSES, list_defenses


def _csv(capsys, *args: str) -> list[dict[str, str]]:
    capsys.readouterr()
    assert main([*args, "--format", "csv"]) == 0
    return list(csv.DictReader(io.StringIO(capsys.readouterr().out)))


def test_defenses_list_shows_every_defense_with_its_options(capsys):
    rows = {r["name"]: r for r in _csv(capsys, "defenses", "list")}
    assert set(rows) == {DEFENSES.get(n).name for n in list_defenses()}
    assert rows["jpeg"]["options"] == "quality=75, bpda=true"
    assert rows["smoothing"]["certifiable"] == "yes" and rows["smoothing"]["randomized"] == "yes"
    assert rows["gaussian-noise"]["randomized"] == "yes" and rows["jpeg"]["randomized"] == "no"
    assert rows["ensemble"]["members"] == "yes"
    assert main(["defenses", "list"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["name", "options", "randomized", "certifiable", "members", "description"]


def test_datasets_list_shows_every_dataset_with_its_options(capsys):
    rows = {r["name"]: r for r in _csv(capsys, "datasets", "list")}
    assert set(rows) == set(list_datasets())
    assert rows["cifar10c"]["aliases"] == "cifar10-c" and "corruption (required)" in rows["cifar10c"]["options"]
    assert "severity=5" in rows["cifar10c"]["options"]
    assert rows["digits"]["root"] == "no" and rows["mnist"]["root"] == "yes"
    assert "split='test'" in rows["mnist"]["options"] and "root" not in rows["mnist"]["options"]


def test_bash_completion_script_from_click():
    script = Path(sys.executable).parent / "robustkit"
    command = [str(script)] if script.is_file() else [sys.executable, "-m", "robustkit.cli"]
    env = {**os.environ, "_ROBUSTKIT_COMPLETE": "bash_source"}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0
    assert "_robustkit_completion()" in done.stdout and "complete -o nosort -F _robustkit_completion robustkit" \
        in done.stdout
    # and the completions come from the real command tree (in process: no second interpreter start)
    _add_commands()
    completer = BashComplete(cli, {}, "robustkit", "_ROBUSTKIT_COMPLETE")
    assert [c.value for c in completer.get_completions([], "d")] == ["datasets", "defenses"]
    assert "--dry-run" in [c.value for c in completer.get_completions(["eval"], "--d")]
