"""Diff the installed pyautoattack's component files against the official fra31/auto-attack, file by file.

    git clone https://github.com/fra31/auto-attack /tmp/auto-attack
    python benchmarks/check_pyautoattack.py --git-dir /tmp/auto-attack --commit a392200

For each component file it prints every line that differs (whitespace-only changes ignored) and whether it is
an import or logging line; it exits 1 if any other line differs. It also prints the sha256 of each installed
file next to the hash recorded in ``robustkit.attacks._aa_official.PYAUTOATTACK_CHECKED`` (which the test
suite checks), so a new pyautoattack release is noticed and re-checked before it is relied on.
"""
from __future__ import annotations

import argparse
import difflib
import re
import subprocess
import sys
from pathlib import Path

import pyautoattack

from robustkit.attacks._aa_official import COMPONENT_FILES, PYAUTOATTACK_CHECKED, file_hashes

# what a packaging change may touch: imports (absolute -> relative) and the logger calls of checks.py
ALLOWED = re.compile(r"^\s*(from \S+ import |import \S+|logger\.(log|warning)\(|$)")


def official_text(git_dir: Path, commit: str, name: str) -> str:
    return subprocess.run(["git", "-C", str(git_dir), "show", f"{commit}:autoattack/{name}"], check=True,
                          capture_output=True, text=True).stdout


def changed_lines(official: str, packaged: str) -> list[str]:
    """The +/- lines of a diff that ignores trailing whitespace and blank lines."""
    norm = lambda text: [line.rstrip() for line in text.splitlines() if line.strip()]  # noqa: E731
    return [line for line in difflib.unified_diff(norm(official), norm(packaged), lineterm="", n=0)
            if line[:1] in "+-" and not line.startswith(("+++", "---"))]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--git-dir", type=Path, required=True, help="a clone of github.com/fra31/auto-attack")
    ap.add_argument("--commit", default="a392200")
    args = ap.parse_args()
    folder = Path(pyautoattack.__file__).parent
    print(f"pyautoattack {pyautoattack.__version__} at {folder} vs fra31/auto-attack {args.commit}\n")
    bad = 0
    for name in COMPONENT_FILES:
        lines = changed_lines(official_text(args.git_dir, args.commit, name), (folder / name).read_text())
        other = [line for line in lines if not ALLOWED.match(line[1:])]
        bad += len(other)
        print(f"{name}: {len(lines)} changed lines, {len(other)} that are not import/logging lines")
        for line in lines:
            print(f"    {line}")
    hashes = file_hashes(folder)
    print(f"\nsha256 (recorded for pyautoattack {PYAUTOATTACK_CHECKED['version']}):")
    for name, digest in hashes.items():
        same = "same" if digest == PYAUTOATTACK_CHECKED["files"][name] else "DIFFERENT"
        print(f"    {name}: {digest} ({same})")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
