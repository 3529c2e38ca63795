"""Everything robustkit writes into an output folder goes through this module.

Three promises (docs/security.md) live here, in one place, so that every output -- CSVs, markdown, the
report, certificate caches, plots, and whatever is added later -- keeps them:

* **atomic writes, never through a symlink**: a file is written whole to a fresh temporary name made by
  ``tempfile.mkstemp(dir=<its folder>)`` (``O_CREAT | O_EXCL``: it cannot already exist, so it cannot be a
  planted symlink, and two writers never share it), then renamed over the target with ``os.replace``. The
  rename replaces a symlink at the target *itself*; it never writes to what the link points at.
* **one writer per output folder**: :class:`OutputLock` holds an advisory ``fcntl.flock`` on
  ``<out>/.robustkit.lock`` (which names the holder: pid, host, command) for the whole run; a second run on
  the same folder fails with one line naming the holder, or waits for it with ``wait=True``.
* **one-line errors**: an unwritable, read-only or non-folder output path is a :class:`RobustkitError` that
  says so, never an ``OSError`` traceback and never advice to delete results.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator

from robustkit.errors import RobustkitError, short_repr

LOCK_NAME = ".robustkit.lock"


def _current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# mkstemp creates files readable by the owner only; outputs get the permissions a plain open() would give
FILE_MODE = 0o666 & ~_current_umask()


def _oserror_text(exc: OSError) -> str:
    return exc.strerror or type(exc).__name__


def output_dir(path: str | os.PathLike, what: str = "output folder") -> Path:
    """Create (if needed) and return the output folder, or a one-line error saying why it cannot be used."""
    out = Path(path)
    probe = out
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        where = "is" if probe == out else f"is inside {probe}, which is"
        raise RobustkitError(f"{what} {out} {where} a file, not a folder; choose another output folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RobustkitError(f"{what} {out}: cannot create it ({_oserror_text(exc)}); "
                             f"choose another output folder") from None
    if not out.is_dir():
        raise RobustkitError(f"{what} {out} is not a folder; choose another output folder")
    return out


def _tmp_name(path: Path) -> tuple[int, str]:
    return tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a fresh temporary path next to ``path``; on success it is renamed over ``path`` (atomic).

    For writers that want a file name (``fig.savefig``, ``DataFrame.to_csv``). On an exception the
    temporary file is removed and ``path`` is untouched.
    """
    target = Path(path)
    try:
        fd, tmp = _tmp_name(target)
    except OSError as exc:
        raise RobustkitError(f"cannot write {target} ({_oserror_text(exc)}); "
                             f"the output folder must be writable") from None
    try:
        os.fchmod(fd, FILE_MODE)
    finally:
        os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, target)
    except OSError as exc:
        _unlink_quietly(tmp)
        raise RobustkitError(f"cannot write {target} ({_oserror_text(exc)})") from None
    except BaseException:
        _unlink_quietly(tmp)
        raise


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (temporary file from mkstemp, fsync, ``os.replace``)."""
    target = Path(path)
    with atomic_path(target) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    return target


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically (see :func:`write_bytes`)."""
    return write_bytes(path, text.encode("utf-8"))


def write_with(path: str | os.PathLike, writer: Callable[[Path], Any]) -> Path:
    """Call ``writer(tmp_path)`` and rename the result over ``path`` (e.g. ``lambda p: fig.savefig(p)``)."""
    target = Path(path)
    with atomic_path(target) as tmp:
        writer(tmp)
    return target


def _unlink_quietly(path: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)


def _holder_text(out: Path) -> str:
    try:
        with open(out / LOCK_NAME, encoding="utf-8") as f:
            info = json.loads(f.read(4096) or "{}")
    except (OSError, ValueError):
        info = {}
    if not isinstance(info, dict) or not info:
        return "another robustkit process"
    command = short_repr(str(info.get("command", "?")), 120)
    return f"pid {info.get('pid', '?')} on {info.get('host', '?')} ({command})"


class OutputLock:
    """Advisory lock on an output folder for the duration of a run (``with OutputLock(out): ...``).

    ``flock`` locks are released by the kernel when the holder exits, even on ``kill -9``, so a stale lock
    file never blocks a later run; its content (pid, host, command) only serves the error message.
    On a filesystem without ``flock`` support (some network mounts) the run proceeds unlocked.
    """

    def __init__(self, out: str | os.PathLike, *, wait: bool = False, command: str | None = None) -> None:
        self.out = Path(out)
        self.wait = wait
        self.command = command if command is not None else " ".join(sys.argv)
        self.fd: int | None = None

    def __enter__(self) -> "OutputLock":
        path = self.out / LOCK_NAME
        flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
        try:
            fd = os.open(path, flags, 0o644)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise RobustkitError(f"{path} is a symlink; robustkit does not follow links in its output "
                                     f"folder") from None
            raise RobustkitError(f"output folder {self.out} is not writable ({_oserror_text(exc)}); "
                                 f"choose another output folder (robustkit report reads read-only folders)"
                                 ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if self.wait else fcntl.LOCK_NB))
        except BlockingIOError:
            os.close(fd)
            raise RobustkitError(f"output folder {self.out} is in use by {_holder_text(self.out)}; wait for it "
                                 f"to finish, pass --wait, or choose another output folder") from None
        except OSError as exc:
            if exc.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL):
                os.close(fd)
                raise RobustkitError(f"output folder {self.out}: cannot lock it ({_oserror_text(exc)})") from None
        info = {"pid": os.getpid(), "host": socket.gethostname(), "command": self.command[:500],
                "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(info).encode("utf-8"), 0)
        self.fd = fd
        return self

    def __exit__(self, *exc: object) -> None:
        if self.fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(self.fd, 0)
            os.close(self.fd)  # closing the descriptor releases the flock
            self.fd = None
