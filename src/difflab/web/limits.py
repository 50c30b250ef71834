"""What one server accepts: sizes of requests, images and the queue (``difflab serve`` flags)."""

from __future__ import annotations

from dataclasses import dataclass

from difflab.errors import DifflabError


@dataclass(frozen=True)
class ServeLimits:
    """The bounds every request is checked against before it is queued.

    Attributes:
        max_steps: the most sampling steps S one request may ask for.
        max_n: the most images one request may ask for.
        queue_size: how many requests may wait behind the running one; one more gets 503.
        max_image_bytes: the largest uploaded image (the decoded file, not its base64 text).
        max_image_side: the largest width or height of an uploaded image, in pixels.
        keep_jobs: how many finished requests (and their images) the server keeps for the gallery.
    """

    max_steps: int = 200
    max_n: int = 16
    queue_size: int = 8
    max_image_bytes: int = 2_000_000
    max_image_side: int = 2048
    keep_jobs: int = 64

    def __post_init__(self) -> None:
        for name in ("max_steps", "max_n", "max_image_bytes", "max_image_side", "keep_jobs"):
            if getattr(self, name) < 1:
                raise DifflabError(f"{name} must be at least 1, got {getattr(self, name)}.")
        if self.queue_size < 0:
            raise DifflabError(f"the queue size must be at least 0, got {self.queue_size}.")

    @property
    def max_body_bytes(self) -> int:
        """The largest request body: a base64 image (4/3 of its bytes) plus the other fields."""
        return self.max_image_bytes * 4 // 3 + 64_000
