"""A one-line progress report: step, loss, images/s and ETA; JSON lines for the record."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, TextIO

from difflab.errors import DifflabError


def format_duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


class Progress:
    """Prints ``step 120/2000 | loss 0.0312 | 312 img/s | ETA 5m12s`` (in place on a terminal)."""

    def __init__(
        self,
        total_steps: int,
        start_step: int = 0,
        stream: TextIO | None = None,
        enabled: bool = True,
    ):
        self.total = total_steps
        self.start_step = start_step
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.start_time = time.perf_counter()
        self.interactive = self.stream.isatty()

    def update(self, step: int, loss: float, images: int) -> dict[str, float]:
        elapsed = time.perf_counter() - self.start_time
        rate = images / elapsed if elapsed > 0 else 0.0
        steps_done = step - self.start_step
        eta = elapsed / steps_done * (self.total - step) if steps_done else 0.0
        if self.enabled:
            line = f"step {step}/{self.total} | loss {loss:.4f} | {rate:.0f} img/s | ETA {format_duration(eta)}"
            self.stream.write(("\r" + line) if self.interactive else line + "\n")
            self.stream.flush()
        return {"images_per_s": rate, "elapsed_s": elapsed}

    def note(self, text: str) -> None:
        """A line of its own (a warning between progress lines)."""
        if self.enabled:
            self.stream.write(("\n" if self.interactive else "") + text + "\n")
            self.stream.flush()

    def close(self) -> None:
        if self.enabled and self.interactive:
            self.stream.write("\n")


class JsonlLog:
    """Appends one JSON object per line, whole or not at all.

    A line goes to the file in one ``write`` of an ``O_APPEND`` descriptor; if the write fails or
    is cut short (a full disk), the file is truncated back to where it was and the failure is one
    sentence that says the run's last checkpoint is intact.
    """

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path

    def write(self, record: dict[str, Any]) -> None:
        line = (json.dumps(record) + "\n").encode()
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            start = os.fstat(fd).st_size
            try:
                written = os.write(fd, line)
                if written != len(line):
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            except OSError as error:
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, start)
                raise DifflabError(
                    f"could not write {self.path} ({error.strerror or error}); the run's last "
                    "checkpoint is intact: free some space, then rerun with --resume."
                ) from None
        finally:
            os.close(fd)
