"""Run-folder ownership: one process at a time writes a run folder.

:func:`lock_folder` takes an exclusive ``fcntl.flock`` on ``<folder>/.difflab.lock``. The kernel
drops the lock when its process ends in any way, ``kill -9`` included, so a lock is never stale;
the file holds the owner's process id only so that a second run can say who holds it. A process
that already holds a folder's lock gets it again at no cost (sequential runs in one Python
process); :func:`release_folder` and :func:`release_all` hand locks back before the process ends.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
from pathlib import Path

from difflab.errors import DifflabError

LOCK_FILE = ".difflab.lock"

_held: dict[Path, int] = {}  # resolved folder -> the open descriptor holding its lock


def lock_folder(folder: str | Path, what: str = "train.out_dir") -> Path:
    """Take the exclusive lock of ``folder`` (which must exist) for this process.

    Raises:
        DifflabError: another process holds it (named by its process id); ``what`` is the option
            to change.
    """
    key = Path(folder).resolve()
    if key in _held:
        return key
    path = key / LOCK_FILE
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            os.close(fd)
            if error.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            raise DifflabError(
                f"{folder} is in use by another difflab run ({_holder(path)}); wait for it to "
                f"end or choose another {what}."
            ) from None
        try:  # the holder before us may have removed the file we opened: lock the new one
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    _held[key] = fd
    return key


def _holder(path: Path) -> str:
    with contextlib.suppress(OSError, ValueError):
        return f"process {int(path.read_text().strip())}"
    return "a process that is starting"


def release_folder(folder: str | Path) -> None:
    """Give up the lock of ``folder`` if this process holds it, removing the lock file."""
    fd = _held.pop(Path(folder).resolve(), None)
    if fd is None:
        return
    with contextlib.suppress(OSError):  # removed while still locked: a waiter re-opens the path
        os.unlink(Path(folder).resolve() / LOCK_FILE)
    os.close(fd)


def release_all() -> None:
    """Give up every run-folder lock this process holds."""
    for folder in list(_held):
        release_folder(folder)
