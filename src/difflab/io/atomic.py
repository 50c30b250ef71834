"""Atomic file writes: a reader sees the old file or the complete new one, never a half-written one.

Every temporary difflab makes is named ``.difflab-tmp.<pid>.<name>.<random>.tmp`` beside the file
it becomes, so that a later run can find exactly the leftovers of a writer that was killed
(``kill -9``, power loss) and remove those alone: :func:`remove_temporaries` takes a file only when
its name has that prefix and the process that made it is gone. A user's own ``*.tmp`` files are
never touched.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

from difflab.errors import DifflabError

TEMP_PREFIX = ".difflab-tmp."
TEMP_SUFFIX = ".tmp"
_TEMP_NAME = re.compile(re.escape(TEMP_PREFIX) + r"(\d+)\.")


def temporary_prefix(name: str) -> str:
    """The start of the name of a temporary that becomes ``name``, made by this process."""
    return f"{TEMP_PREFIX}{os.getpid()}.{name}."


def write_failure(path: Path, error: OSError) -> DifflabError:
    """The sentence for a write that failed (full disk, read-only folder, path under a file)."""
    return DifflabError(
        f"could not write {path} ({error.strerror or error}); any earlier version of it is "
        "intact: free some space or fix the path or its permissions, then rerun (with --resume "
        "for a training run)."
    )


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success fsync it and rename it over ``path``.

    On any exception the temporary file is removed and ``path`` is left untouched; an ``OSError``
    (a full disk, a folder turned read-only) becomes a :class:`DifflabError` that says so.
    """
    path = Path(path)
    tmp: Path | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(
            prefix=temporary_prefix(path.name), suffix=TEMP_SUFFIX, dir=path.parent
        )
        os.close(fd)
        tmp = Path(tmp_name)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give it the permissions open() would
        yield tmp
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except BaseException as error:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
        if isinstance(error, OSError):
            raise write_failure(path, error) from None
        raise


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def process_alive(pid: int) -> bool:
    """Whether a process with this id runs (on this machine)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def remove_temporaries(folder: str | Path, *, recursive: bool = True) -> list[Path]:
    """Delete the temporaries that difflab writers killed mid-write left in ``folder`` (and below
    it when ``recursive``); returns them. Only files and staging folders (``convert``'s) named by
    :func:`temporary_prefix` whose process has ended are taken, so a writer still running
    elsewhere keeps its own."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    pattern = f"{TEMP_PREFIX}*"
    candidates = sorted(folder.rglob(pattern) if recursive else folder.glob(pattern))
    found: list[Path] = []
    for path in candidates:
        match = _TEMP_NAME.match(path.name)
        if match is None or path.is_symlink() or any(path.is_relative_to(gone) for gone in found):
            continue
        pid = int(match.group(1))
        if pid == os.getpid() or process_alive(pid):
            continue
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        elif path.is_file():
            path.unlink(missing_ok=True)
        else:
            continue
        found.append(path)
    return found


def check_output_path(path: str | Path, flag: str, inputs: Sequence[str | Path] = ()) -> Path:
    """Fail before any work if ``path`` cannot become a file: it is a folder, it sits under a file,
    its folder cannot be written, or it is one of the command's ``inputs``. Creates nothing."""
    path = Path(path)
    for given in inputs:
        with contextlib.suppress(OSError):
            if path.resolve() == Path(given).resolve():
                raise DifflabError(
                    f"{flag} {path} is also the input {given}; difflab never overwrites its input: "
                    "give another output path."
                )
    if path.is_dir():
        raise DifflabError(f"{flag} {path} is a folder; give a file path inside it.")
    check_output_folder(path.parent, flag, shown=path)
    return path


def check_output_folder(folder: str | Path, flag: str, shown: str | Path | None = None) -> Path:
    """Fail if ``folder`` (existing or to be made) cannot hold new files: it or a folder above it is
    a file, or the nearest existing one is not writable (probed with a temporary that is removed at
    once). Creates nothing; ``shown`` is the path the error names (default ``folder``)."""
    folder = Path(folder)
    shown = folder if shown is None else Path(shown)
    existing = next((p for p in [folder, *folder.parents] if p.exists()), Path("."))
    if not existing.is_dir():
        where = "is" if existing == shown else f"sits under {existing}, which is"
        raise DifflabError(f"{flag} {shown} {where} a file, not a folder; give another path.")
    try:
        fd, name = tempfile.mkstemp(prefix=temporary_prefix("probe"), dir=existing)
        os.close(fd)
        os.unlink(name)
    except OSError as error:
        raise DifflabError(
            f"{flag}: cannot write in {existing} ({error.strerror or error}); choose a writable "
            "place."
        ) from None
    return folder
