"""A one-line progress report: step, loss, images/s and ETA; JSON lines for the record."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any, TextIO


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
    """Appends one JSON object per line; each write is flushed."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path

    def write(self, record: dict[str, Any]) -> None:
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")
