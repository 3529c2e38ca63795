"""Finding a card's checkpoint file: local path, weights folder, download cache, or (on request) download.

Order for a card checkpoint given as ``{file, sha256, url}``:

1. ``<weights_dir>/<file>`` where ``weights_dir`` is the argument or ``$ROBUSTKIT_WEIGHTS_DIR``;
2. ``<cache>/checkpoints/<file>`` (a previous download);
3. download from ``url`` into the cache, only when ``download=True``.

Every file found this way must match the card's sha256; a mismatch is an error, never a silent fallback,
because a leaderboard row must be about exactly the weights its card names.
"""
from __future__ import annotations

import os
from pathlib import Path

from robustkit.errors import CheckpointError

from .cards import ModelCard
from .checkpoint import sha256_file
from .download import WEIGHTS_DIR_ENV, checkpoint_cache_dir, download_file


def weights_dir_from(weights_dir: str | os.PathLike | None) -> Path | None:
    """The weights folder to search: the argument, else ``$ROBUSTKIT_WEIGHTS_DIR``, else None."""
    if weights_dir is not None:
        return Path(weights_dir).expanduser()
    env = os.environ.get(WEIGHTS_DIR_ENV)
    return Path(env).expanduser() if env else None


def _verified(path: Path, sha256: str | None, card: ModelCard, where: str) -> Path:
    if sha256 is not None:
        digest = sha256_file(path)
        if digest != sha256:
            raise CheckpointError(
                f"{card.origin}: checkpoint {path} ({where}) has sha256 {digest}, but the card expects {sha256}; "
                f"it is a different file"
            )
    return path


def locate_checkpoint(card: ModelCard, *, weights_dir: str | os.PathLike | None = None,
                      download: bool = False) -> Path | None:
    """The verified local checkpoint file of ``card`` (None when the card has no checkpoint)."""
    spec = card.checkpoint
    if spec is None:
        return None
    if spec.path is not None:
        if not spec.path.is_file():
            raise CheckpointError(f"{card.origin}: checkpoint {spec.path}: file not found")
        return _verified(spec.path, spec.sha256, card, "local path")
    assert spec.file is not None
    wdir = weights_dir_from(weights_dir)
    if wdir is not None and (wdir / spec.file).is_file():
        return _verified(wdir / spec.file, spec.sha256, card, "weights folder")
    cached = checkpoint_cache_dir() / spec.file
    if cached.is_file():
        return _verified(cached, spec.sha256, card, "download cache")
    if download and spec.url:
        assert spec.sha256 is not None
        return download_file(spec.url, cached, spec.sha256)
    looked = f"{wdir / spec.file}, " if wdir is not None else ""
    hint = ("pass download=True (CLI: --download) to fetch it from " + spec.url) if spec.url else "the card has no url"
    raise CheckpointError(
        f"checkpoint of {card.name!r} is not available locally (looked for {looked}{cached}): {hint}, "
        f"or point ${WEIGHTS_DIR_ENV} / weights_dir at a folder holding {spec.file}"
    )


def checkpoint_status(card: ModelCard, *, weights_dir: str | os.PathLike | None = None) -> str:
    """Short availability text for listings: 'yes (weights dir)', 'no (downloadable)', 'no (missing)', ..."""
    spec = card.checkpoint
    if spec is None:
        return "no (random init)"
    if spec.path is not None:
        if not spec.path.is_file():
            return "no (missing)"
        if spec.sha256 is not None and sha256_file(spec.path) != spec.sha256:
            return "no (sha256 mismatch)"
        return "yes (local)"
    assert spec.file is not None
    wdir = weights_dir_from(weights_dir)
    for folder, label in ((wdir, "weights dir"), (checkpoint_cache_dir(), "cached")):
        if folder is not None and (folder / spec.file).is_file():
            if sha256_file(folder / spec.file) != spec.sha256:
                return f"no (sha256 mismatch in {label})"
            return f"yes ({label})"
    return "no (downloadable)" if spec.url else "no (missing)"
