"""Captioned colour digits: determinism, colours, captions and the held-out triples."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from difflab.data.colour_digits import (
    COLOUR_NAMES,
    COLOUR_RGB,
    COLOUR_SYNONYMS,
    HELD_OUT,
    all_triples,
    load_colour_digits,
)
from tests.data.conftest import write_idx


def write_square_mnist(folder: Path, num_train: int, num_test: int) -> str:
    """Tiny MNIST-style IDX files (a full-intensity block on empty ground, labels 0..9 in turn):
    fast to read, and the block's core is exactly the foreground colour."""
    for prefix, n in (("train", num_train), ("t10k", num_test)):
        images = np.zeros((n, 28, 28), np.uint8)
        images[:, 8:20, 10:18] = 255
        write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", images)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", (np.arange(n) % 10).astype(np.uint8))
    return str(folder)


@pytest.fixture(scope="module")
def mnist_like(tmp_path_factory):
    return write_square_mnist(tmp_path_factory.mktemp("mnist"), 600, 60)


def test_deterministic_sizes_and_colours(mnist_like):
    """Fails if a split is not reproducible or a pixel leaves the fg-bg segment of its colours."""
    a = load_colour_digits("train", size=16, count=24, data_dir=mnist_like)
    b = load_colour_digits("train", size=16, count=24, data_dir=mnist_like)
    assert torch.equal(a.images, b.images) and a.captions == b.captions
    assert a.images.shape == (24, 3, 16, 16)
    for size in (32, 64):
        assert load_colour_digits("test", size=size, count=2, data_dir=mnist_like).images.shape == (
            2,
            3,
            size,
            size,
        )
    palette = torch.tensor([COLOUR_RGB[n] for n in COLOUR_NAMES]) * 2 - 1
    corner = a.images[:, :, 0, 0]  # MNIST corners are empty: the background colour
    torch.testing.assert_close(corner, palette[a.bg])
    brightest = a.images.flatten(2).gather(
        2,
        (a.images - palette[a.bg][..., None, None])
        .abs()
        .sum(1)
        .flatten(1)
        .argmax(1)[:, None, None]
        .expand(-1, 3, 1),
    )[..., 0]  # the pixel farthest from the background: the stroke's core
    torch.testing.assert_close(brightest, palette[a.fg], atol=1e-6, rtol=0)


def test_captions_name_the_digit_and_colours(mnist_like):
    """Fails if a caption can disagree with its image's digit or colours."""
    data = load_colour_digits("train", size=16, count=40, data_dir=mnist_like)
    for caption, d, f, b in zip(data.captions, data.digits, data.fg, data.bg, strict=True):
        words = caption.split()
        assert (
            str(int(d)) in words
            or ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"][
                int(d)
            ]
            in words
        )
        assert any(w in words for w in COLOUR_SYNONYMS[COLOUR_NAMES[int(f)]])
        assert any(w in words for w in COLOUR_SYNONYMS[COLOUR_NAMES[int(b)]])


def test_held_out_triples_never_train(mnist_like):
    """Fails if a held-out (digit, fg, bg) leaks into training, or if held_out draws others."""
    assert len(HELD_OUT) == len(all_triples()) // 10
    train = load_colour_digits("train", size=16, count=600, data_dir=mnist_like)
    seen = set(zip(train.digits.tolist(), train.fg.tolist(), train.bg.tolist(), strict=True))
    assert not seen & HELD_OUT
    held = load_colour_digits("held_out", size=16, count=50, data_dir=mnist_like)
    assert (
        set(zip(held.digits.tolist(), held.fg.tolist(), held.bg.tolist(), strict=True)) <= HELD_OUT
    )
