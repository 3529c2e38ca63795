"""The README's two tutorials, run exactly as written, so they cannot rot.

The code blocks between ``<!-- tutorial:NAME -->`` and ``<!-- /tutorial:NAME -->`` are extracted from
README.md: Python blocks are executed in one namespace, bash blocks line by line in a shell with this
environment's ``robustkit`` on the PATH, all in a temporary working folder (the tutorials write to
``runs/``). They use the bundled digits data and the digits zoo (100 images), so they need no download.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCK = re.compile(r"```(python|bash)\n(.*?)```", re.S)


def tutorial_blocks(name: str) -> list[tuple[str, str]]:
    text = README.read_text(encoding="utf-8")
    start, end = f"<!-- tutorial:{name} -->", f"<!-- /tutorial:{name} -->"
    assert text.count(start) == 1 and text.count(end) == 1, f"README.md: tutorial {name} markers"
    blocks = BLOCK.findall(text.split(start, 1)[1].split(end, 1)[0])
    assert blocks, f"README.md: tutorial {name} has no code block"
    return blocks


def run_tutorial(name: str, cwd: Path, namespace: dict) -> list[str]:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    outputs = []
    for language, code in tutorial_blocks(name):
        if language == "python":
            exec(compile(code, f"README.md tutorial {name}", "exec"), namespace)
            continue
        for line in code.splitlines():
            if line.strip() and not line.lstrip().startswith("#"):
                done = subprocess.run(line, shell=True, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
                assert done.returncode == 0, f"{line}\n{done.stderr}"
                outputs.append(done.stdout)
    return outputs


def test_readme_tutorials_run_as_written(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ns: dict = {"__name__": "readme_tutorial"}
    run_tutorial("evaluate", tmp_path, ns)
    model_dir = tmp_path / "runs" / "my-model"
    board = pd.read_csv(model_dir / "leaderboard.csv")
    assert board["model"].tolist() == ["digits-cnn", "digits-cnn"] and board["n_examples"].eq(100).all()
    assert (model_dir / "report.html").stat().st_size > 10_000 and (model_dir / "plots" / "cascade.svg").is_file()

    outputs = run_tutorial("own-defense", tmp_path, ns)
    defense_dir = tmp_path / "runs" / "my-defense"
    board = pd.read_csv(defense_dir / "leaderboard.csv")
    assert set(board["model"]) == {"digits-cnn", "digits-cnn+blur"}
    assert set(board.loc[board["model"] == "digits-cnn+blur", "defense"]) == {"my-blur(kernel=3)"}
    assert list(board.columns[board.columns.str.startswith("acc_")]) == ["acc_sign-noise", "acc_fgsm", "acc_pgd"]
    assert (board["acc_sign-noise"] >= board["acc_fgsm"]).all() and (board["acc_pgd"] == board["robust_acc"]).all()
    html = (defense_dir / "report.html").read_text()
    assert "digits-cnn+blur" in html and "sign-noise" in html
    compare, export = outputs
    assert "| digits-cnn | 0.1 |" in compare  # the one (model, eps) both runs have
    written = sorted(tmp_path / p for p in export.split())
    assert [p.name for p in written] == ["digits-cnn+blur.json", "digits-cnn.json"]
    info = json.loads(written[0].read_text())
    assert info["name"] == "digits-cnn+blur" and info["eps"] == "0.2" and info["defense"] == "my-blur(kernel=3)"
