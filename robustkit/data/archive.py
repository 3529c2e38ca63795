"""Safe tar extraction for downloaded dataset archives.

Archives come from the internet, so a member must never write outside the destination (``../`` or
absolute names, links pointing elsewhere) nor create device files. Python's ``tarfile`` ``"data"``
filter (3.10.12+/3.11.4+) enforces exactly that; older interpreters get an equivalent member check here.
Extraction goes to a temporary folder next to the destination and is moved into place only when it
completed, so an interrupted extraction never looks like a complete dataset.
"""
from __future__ import annotations

import gzip
import lzma
import os
import shutil
import tarfile
import tempfile
import zlib
from pathlib import Path, PurePosixPath

from robustkit.errors import DataError


def _check_member(member: tarfile.TarInfo, archive: Path) -> None:
    """Fallback for interpreters without tarfile's data filter: plain files and folders, inside dest only."""
    name = PurePosixPath(member.name)
    if name.is_absolute() or ".." in name.parts or member.name.startswith(("/", "\\")):
        raise DataError(f"{archive}: refusing unsafe archive member {member.name!r} (path outside the destination)")
    if not (member.isfile() or member.isdir()):
        raise DataError(f"{archive}: refusing unsafe archive member {member.name!r} "
                        f"(links and special files are not allowed)")


def _extract_all(tar: tarfile.TarFile, dest: Path, archive: Path) -> None:
    if hasattr(tarfile, "data_filter"):
        try:
            tar.extractall(dest, filter="data")
        except tarfile.FilterError as exc:
            raise DataError(f"{archive}: refusing unsafe archive member ({exc})") from exc
        return
    members = tar.getmembers()
    for member in members:
        _check_member(member, archive)
    tar.extractall(dest, members=members)  # noqa: S202 -- every member was checked above


def _merge(src: Path, dest: Path) -> None:
    """Move the extracted tree into ``dest``, replacing same-named files, keeping anything else there."""
    for dirpath, _dirnames, filenames in os.walk(src):
        rel = Path(dirpath).relative_to(src)
        (dest / rel).mkdir(parents=True, exist_ok=True)
        for filename in filenames:
            os.replace(Path(dirpath) / filename, dest / rel / filename)


def extract_tar(archive: Path | str, dest: Path | str) -> Path:
    """Extract a (possibly compressed) tar archive into ``dest`` safely; return ``dest``."""
    archive, dest = Path(archive), Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".extract-", dir=dest))
    try:
        try:
            with tarfile.open(archive, "r:*") as tar:
                _extract_all(tar, tmp, archive)
        except (tarfile.TarError, EOFError, gzip.BadGzipFile, zlib.error, lzma.LZMAError) as exc:
            raise DataError(f"{archive}: corrupted or truncated archive ({exc}); delete it and download again") from exc
        _merge(tmp, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest
