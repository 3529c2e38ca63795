"""Where downloaded and locally trained weights live, and how they get there.

The cache folder is ``$ROBUSTKIT_CACHE`` or ``~/.cache/robustkit``. Downloads are written to a temporary
file next to their destination, hashed while streaming, and moved into place only when the sha256 matches
the model card, so a half-finished or tampered download is never mistaken for the real checkpoint.
"""
from __future__ import annotations

import hashlib
import os
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from robustkit.errors import CheckpointError

CACHE_ENV = "ROBUSTKIT_CACHE"
WEIGHTS_DIR_ENV = "ROBUSTKIT_WEIGHTS_DIR"
DOWNLOAD_TIMEOUT_S = 60.0


def cache_root() -> Path:
    """The user's robustkit cache folder (not created here)."""
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "robustkit"


def checkpoint_cache_dir() -> Path:
    """Folder for downloaded checkpoints, laid out as ``<cache>/checkpoints/<card file>``."""
    return cache_root() / "checkpoints"


def download_file(url: str, dest: Path, sha256: str, *, timeout: float = DOWNLOAD_TIMEOUT_S) -> Path:
    """Fetch ``url`` into ``dest`` atomically, refusing it unless its sha256 equals ``sha256``."""
    if not url.lower().startswith(("https://", "http://", "file://")):
        raise CheckpointError(f"checkpoint url {url!r}: only http(s):// and file:// URLs are supported")
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    tmp = Path(tmp_name)
    h = hashlib.sha256()
    try:
        with os.fdopen(fd, "wb") as out:
            try:
                with urllib.request.urlopen(url, timeout=timeout) as resp:
                    for chunk in iter(lambda: resp.read(1 << 20), b""):
                        h.update(chunk)
                        out.write(chunk)
            except (urllib.error.URLError, OSError, ValueError) as exc:
                reason = getattr(exc, "reason", None) or exc
                raise CheckpointError(f"checkpoint download from {url} failed: {reason}") from exc
        digest = h.hexdigest()
        if digest != sha256.lower():
            raise CheckpointError(
                f"checkpoint download from {url}: sha256 {digest} does not match the expected {sha256}; "
                f"the file was discarded"
            )
        os.replace(tmp, dest)
    finally:
        if tmp.exists():
            tmp.unlink()
    return dest
