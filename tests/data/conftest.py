"""Fixtures for the data tests: tiny IDX files and image folders written into tmp_path."""

from __future__ import annotations

import gzip
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from difflab.data.idx import IMAGES_MAGIC, LABELS_MAGIC


def idx_bytes(array: np.ndarray, magic: int | None = None) -> bytes:
    """An IDX file's bytes for a uint8 array: magic, big-endian dims, then the data."""
    if magic is None:
        magic = IMAGES_MAGIC if array.ndim == 3 else LABELS_MAGIC
    dims = b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return magic.to_bytes(4, "big") + dims + np.ascontiguousarray(array, np.uint8).tobytes()


def write_idx(path: Path, array: np.ndarray, *, gz: bool = True, magic: int | None = None) -> Path:
    """Write ``array`` as an IDX file (gzipped when ``gz``); returns the path."""
    data = idx_bytes(array, magic)
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def write_idx_folder(
    folder: Path, *, num_train: int = 12, num_test: int = 5, size: int = 28, gz: bool = True
) -> Path:
    """A folder with the four MNIST-style IDX files of random images and labels 0..9."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    suffix = ".gz" if gz else ""
    for prefix, n in (("train", num_train), ("t10k", num_test)):
        images = rng.integers(0, 256, size=(n, size, size), dtype=np.uint8)
        labels = (np.arange(n) % 10).astype(np.uint8)
        write_idx(folder / f"{prefix}-images-idx3-ubyte{suffix}", images, gz=gz)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte{suffix}", labels, gz=gz)
    return folder


def write_image(path: Path, size: tuple[int, int], mode: str = "RGB", color=None, fmt=None) -> Path:
    """Write a solid-colour image of ``size`` (width, height) and PIL ``mode``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if color is None:
        color = {"L": 128, "LA": (128, 255), "RGBA": (10, 200, 30, 255)}.get(mode, (10, 200, 30))
    Image.new(mode, size, color).save(path, format=fmt)
    return path


@pytest.fixture
def idx_folder(tmp_path: Path) -> Callable[..., Path]:
    """Factory: ``idx_folder(name="idx", **kwargs)`` writes a tiny MNIST-style IDX folder."""

    def make(name: str = "idx", **kwargs) -> Path:
        return write_idx_folder(tmp_path / name, **kwargs)

    return make


@pytest.fixture
def idx_writer() -> Callable[..., Path]:
    """The :func:`write_idx` helper: ``idx_writer(path, array, gz=True, magic=None)``."""
    return write_idx


@pytest.fixture
def image_writer() -> Callable[..., Path]:
    """The :func:`write_image` helper: ``image_writer(path, (w, h), mode, color, fmt)``."""
    return write_image
