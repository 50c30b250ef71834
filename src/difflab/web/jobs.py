"""Requests queued behind one worker thread: a bounded queue, progress, cancellation, results.

The worker runs one :class:`~difflab.web.catalog.SamplingRun` at a time (a CPU or one GPU has no
room for two); ``queue_size`` more may wait. One more request is refused at once with 503, so a
client learns that the server is busy instead of hanging. Finished jobs keep their images for the
gallery until ``keep_jobs`` newer ones have finished.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import torch

from difflab.errors import DifflabError
from difflab.web.catalog import SamplingRun
from difflab.web.images import png_bytes, png_data_url
from difflab.web.limits import ServeLimits
from difflab.web.schemas import RequestRefused

LOG = logging.getLogger("difflab.web")

FINISHED = ("done", "failed", "cancelled")


class JobCancelled(Exception):
    """Raised inside the sampler's callback to stop a cancelled job between two steps."""


@dataclass
class Job:
    """One request's life: queued -> running -> done | failed | cancelled."""

    model: str
    run: SamplingRun
    settings: dict[str, Any]
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    status: str = "queued"
    step: int = 0
    total: int = 0  # the sampler's steps (the request's, until the sampler reports its own)
    preview: str | None = None  # data URL of the latest predicted x0 (a grid of the n images)
    images: list[bytes] = field(default_factory=list)  # one PNG per image
    hint_png: bytes | None = None
    error: str | None = None
    seconds: float | None = None
    cancel_requested: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self.total = self.run.total_steps
        if self.run.hint is not None:
            self.hint_png = png_bytes(self.run.hint)

    def on_step(self, step: int, total: int, x0: torch.Tensor) -> None:
        if self.cancel_requested.is_set():
            raise JobCancelled
        self.preview = png_data_url(x0)
        self.step, self.total = step, total

    def execute(self) -> None:
        """Run to the end (the worker's thread); every outcome is recorded, none raised."""
        self.status = "running"
        start = time.perf_counter()
        try:
            images = self.run.run(self.on_step)
            self.images = [png_bytes(image[None]) for image in images]
            self.preview = png_data_url(images)
            self.status = "done"
        except JobCancelled:
            self.status = "cancelled"
        except DifflabError as error:
            self.status, self.error = "failed", str(error)
        except Exception as error:  # the worker must survive any model's failure
            LOG.exception("job %s failed", self.id)
            self.status = "failed"
            self.error = f"generation failed ({type(error).__name__}: {error}); see the server log."
        self.seconds = time.perf_counter() - start

    def state(self, position: int | None) -> dict[str, Any]:
        """The JSON of ``GET /api/jobs/{id}``."""
        return {
            "id": self.id,
            "model": self.model,
            "status": self.status,
            "position": position,
            "step": self.step,
            "total": self.total,
            "preview": self.preview,
            "images": [f"/api/jobs/{self.id}/images/{k}.png" for k in range(len(self.images))],
            "hint": f"/api/jobs/{self.id}/hint.png" if self.hint_png is not None else None,
            "error": self.error,
            "seconds": self.seconds,
            "settings": self.settings,
        }


class JobQueue:
    """One worker thread and the jobs waiting for it (at most ``limits.queue_size``)."""

    def __init__(self, limits: ServeLimits) -> None:
        self.limits = limits
        self._jobs: collections.OrderedDict[str, Job] = collections.OrderedDict()
        self._waiting: collections.deque[Job] = collections.deque()
        self._running: Job | None = None
        self._changed = threading.Condition()
        self._closed = False
        self._worker = threading.Thread(target=self._work, name="difflab-worker", daemon=True)
        self._worker.start()

    def submit(self, job: Job) -> int:
        """Queue ``job``; its position (0: next). A :class:`RequestRefused` (503) when full."""
        with self._changed:
            if self._closed:
                raise RequestRefused(503, "the server is shutting down; try again later.")
            busy = len(self._waiting) + (self._running is not None)
            if busy > self.limits.queue_size:
                raise RequestRefused(
                    503,
                    f"the server is busy ({len(self._waiting)} requests waiting, the most it "
                    "queues); try again in a moment.",
                )
            self._waiting.append(job)
            self._jobs[job.id] = job
            self._changed.notify_all()
            return len(self._waiting) - 1

    def get(self, job_id: str) -> tuple[Job, int | None]:
        """The job and its place in the queue (None once it runs); 404 for an unknown id."""
        with self._changed:
            job = self._jobs.get(job_id)
            if job is None:
                raise RequestRefused(
                    404, f"no job {job_id!r} here; it never existed or is no longer kept."
                )
            position = self._waiting.index(job) if job in self._waiting else None
            return job, position

    def cancel(self, job_id: str) -> Job:
        """Stop a job: a waiting one leaves the queue, a running one stops at its next step."""
        job, _ = self.get(job_id)
        with self._changed:
            if job in self._waiting:
                self._waiting.remove(job)
                job.status = "cancelled"
                self._forget_old()
        job.cancel_requested.set()
        return job

    def close(self, timeout: float = 10.0) -> None:
        """Cancel everything and stop the worker (waits for the running step to end)."""
        with self._changed:
            self._closed = True
            for job in self._waiting:
                job.status = "cancelled"
            self._waiting.clear()
            if self._running is not None:
                self._running.cancel_requested.set()
            self._changed.notify_all()
        self._worker.join(timeout)

    def _work(self) -> None:
        while True:
            with self._changed:
                while not self._waiting and not self._closed:
                    self._changed.wait()
                if self._closed:
                    return
                job = self._running = self._waiting.popleft()
            job.execute()
            with self._changed:
                self._running = None
                self._forget_old()

    def _forget_old(self) -> None:
        """Drop the oldest finished jobs beyond ``keep_jobs`` (caller holds the lock)."""
        finished = [key for key, job in self._jobs.items() if job.status in FINISHED]
        for key in finished[: max(0, len(finished) - self.limits.keep_jobs)]:
            del self._jobs[key]
