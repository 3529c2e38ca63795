"""Fetching one file over HTTP(S) so that a half-finished or tampered download can never be mistaken for data.

The guarantees, in order of importance:

* the final file appears only after its checksum matched (it is written to ``<name>.part`` and moved into
  place with ``os.replace``, which is atomic on one filesystem); a mismatch removes the partial file;
* an interrupted transfer resumes from the ``.part`` file with an HTTP ``Range`` request, both on the next
  call and automatically (``retries``) when a connection drops mid-way; a server that ignores ``Range``
  makes us start over rather than append the wrong bytes;
* every request has a timeout, so a stalled server gives a clear error instead of a hang.

Only the standard library's ``urllib`` is used (no extra dependency for users).
"""
from __future__ import annotations

import hashlib
import http.client
import os
import re
import socket
import time
import urllib.error
import urllib.request
from pathlib import Path

from tqdm import tqdm

from robustkit import __version__
from robustkit.errors import DataError

CHUNK = 1 << 20
ALLOWED_SCHEMES = ("http", "https", "file")
_CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)")


def file_digest(path: Path, algorithm: str) -> str:
    """Hex digest of a file, read in chunks (archives can be gigabytes)."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def _checksums(md5: str | None, sha256: str | None) -> dict[str, str]:
    return {alg: value.lower() for alg, value in (("md5", md5), ("sha256", sha256)) if value}


def _mismatch(path: Path, expected: dict[str, str]) -> str | None:
    """None if every expected digest matches, else a description of the first mismatch."""
    for alg, want in expected.items():
        got = file_digest(path, alg)
        if got != want:
            return f"expected {alg} {want}, got {got}"
    return None


class _Interrupted(Exception):
    """The connection ended before the announced length: resume from what we have."""


def _stream(url: str, part: Path, *, timeout: float, progress: bool, label: str) -> None:
    """Append the rest of ``url`` to ``part`` (or rewrite it when the server does not honour Range)."""
    offset = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"User-Agent": f"robustkit/{__version__}"})
    if offset:
        request.add_header("Range", f"bytes={offset}-")
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and offset:  # nothing left to send: the part file may already be complete
            return
        raise DataError(f"download of {url} failed: HTTP {exc.code} {exc.reason}") from exc
    with response:
        status = getattr(response, "status", None) or 200
        start = 0
        if status == 206:
            match = _CONTENT_RANGE.match(response.headers.get("Content-Range", ""))
            start = int(match.group(1)) if match else -1
            if start != offset:  # cannot splice safely: discard the partial file and start over
                part.unlink()
                raise _Interrupted(f"server answered a range request for byte {offset} from byte {start}")
        elif status != 200:
            raise DataError(f"download of {url} failed: HTTP {status}")
        length = response.headers.get("Content-Length")
        total = start + int(length) if length is not None and length.isdigit() else None
        mode = "ab" if status == 206 else "wb"
        written = start
        with open(part, mode) as f, tqdm(total=total, initial=start, unit="B", unit_scale=True,
                                          unit_divisor=1024, desc=label, disable=not progress,
                                          leave=False) as bar:
            try:
                while True:
                    block = response.read(CHUNK)
                    if not block:
                        break
                    f.write(block)
                    written += len(block)
                    bar.update(len(block))
            finally:
                f.flush()
                os.fsync(f.fileno())
        if total is not None and written < total:
            raise _Interrupted(f"connection closed after {written} of {total} bytes")


def download_url(url: str, dest: Path | str, *, md5: str | None = None, sha256: str | None = None,
                 timeout: float = 60.0, retries: int = 3, progress: bool = True) -> Path:
    """Download ``url`` to ``dest`` and verify it; return ``dest``.

    An existing ``dest`` whose checksum matches is kept (no request is made); one that does not match is
    replaced only once a verified copy has been downloaded. Without a checksum an existing ``dest`` is
    trusted, so pass one whenever it is known. Raises :class:`DataError` (one line) on HTTP errors,
    timeouts after ``retries`` resumed attempts, and checksum mismatches.
    """
    dest = Path(dest)
    scheme = url.split(":", 1)[0].lower()
    if scheme not in ALLOWED_SCHEMES:
        raise DataError(f"download of {url}: only {', '.join(ALLOWED_SCHEMES)} URLs are supported")
    expected = _checksums(md5, sha256)
    if dest.is_file() and (not expected or _mismatch(dest, expected) is None):
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    resumed = part.exists() and part.stat().st_size > 0
    restarted = False
    attempt = 0
    while True:
        try:
            _stream(url, part, timeout=timeout, progress=progress, label=dest.name)
        except (_Interrupted, http.client.IncompleteRead, ConnectionError, socket.timeout, TimeoutError,
                urllib.error.URLError) as exc:
            attempt += 1
            if attempt > retries:
                reason = getattr(exc, "reason", exc)
                raise DataError(f"download of {url} failed after {attempt} attempts: {reason}; "
                                f"run again to resume from {part}") from exc
            resumed = resumed or part.exists()
            time.sleep(min(attempt, 4) * 0.25)
            continue
        if not part.exists():
            raise DataError(f"download of {url} produced no data")
        problem = _mismatch(part, expected) if expected else None
        if problem is None:
            break
        part.unlink()
        if resumed and not restarted:  # the old partial file may belong to another version: start over once
            restarted, resumed = True, False
            continue
        raise DataError(f"checksum mismatch for {url}: {problem}; the download was removed "
                        f"(the file is corrupted or the mirror serves a different version)")
    os.replace(part, dest)
    return dest
