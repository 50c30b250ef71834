"""The user cache folder under which difflab keeps what it can rebuild (statistics, converted
weights, data stores, text embeddings, latents)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """``$DIFFLAB_CACHE`` when set, else ``~/.cache/difflab``."""
    configured = os.environ.get("DIFFLAB_CACHE")
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "difflab"
