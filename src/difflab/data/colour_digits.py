"""Captioned colour digits: MNIST digits drawn in one colour on a background of another.

A text-to-image data set built deterministically from MNIST for Imagen-style experiments
(Saharia et al. 2022) on a CPU. Item i of a split takes MNIST image i, a (foreground, background)
colour pair drawn from a seeded generator, and a caption from templates with synonyms::

    "a red 7 on a blue background", "the digit seven in crimson over navy", ...

The digit's grey level is the blend weight: ``x = bg + m (fg - bg)`` with ``m`` the MNIST image in
[0, 1], resized to the requested size (area averaging to 16, bilinear to 32 and 64).

**Held-out combinations.** A fixed tenth of the (digit, foreground, background) triples
(:data:`HELD_OUT`, chosen once with seed 16, every digit and colour still seen in training) never
appears in the ``train`` split; the ``held_out`` split draws only them, to measure compositional
generalisation. The ``test`` split draws seen triples from MNIST's test images.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from difflab.data.dataset import ImageDataset
from difflab.data.mnist import load_idx_split
from difflab.errors import DifflabError

COLOUR_RGB: dict[str, tuple[float, float, float]] = {
    "red": (1.0, 0.0, 0.0),
    "green": (0.0, 0.8, 0.0),
    "blue": (0.0, 0.0, 1.0),
    "yellow": (1.0, 1.0, 0.0),
    "magenta": (1.0, 0.0, 1.0),
    "cyan": (0.0, 1.0, 1.0),
    "white": (1.0, 1.0, 1.0),
    "black": (0.0, 0.0, 0.0),
}
COLOUR_NAMES: tuple[str, ...] = tuple(COLOUR_RGB)
COLOUR_SYNONYMS: dict[str, tuple[str, ...]] = {
    "red": ("red", "crimson", "scarlet"),
    "green": ("green", "emerald", "lime"),
    "blue": ("blue", "navy", "azure"),
    "yellow": ("yellow", "gold", "lemon"),
    "magenta": ("magenta", "fuchsia", "pink"),
    "cyan": ("cyan", "turquoise", "aqua"),
    "white": ("white", "snow", "ivory"),
    "black": ("black", "ebony", "jet"),
}
DIGIT_WORDS: tuple[str, ...] = (
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine",
)  # fmt: skip
TEMPLATES: tuple[str, ...] = (
    "a {fg} {digit} on a {bg} background",
    "the digit {word} in {fg} over {bg}",
    "a {fg} number {digit} on {bg}",
    "{word} written in {fg} on a {bg} background",
)
SPLITS: tuple[str, ...] = ("train", "test", "held_out")
HELD_OUT_SEED = 16
HELD_OUT_FRACTION = 10  # one triple in ten


def all_triples() -> list[tuple[int, int, int]]:
    """Every (digit, fg, bg) with fg != bg, as indices into :data:`COLOUR_NAMES` (560)."""
    n = len(COLOUR_NAMES)
    return [(d, f, b) for d in range(10) for f in range(n) for b in range(n) if f != b]


def _held_out_triples() -> frozenset[tuple[int, int, int]]:
    triples = all_triples()
    order = np.random.default_rng(HELD_OUT_SEED).permutation(len(triples))
    return frozenset(triples[i] for i in order[: len(triples) // HELD_OUT_FRACTION])


HELD_OUT: frozenset[tuple[int, int, int]] = _held_out_triples()
"""The (digit, fg, bg) triples the train split never shows."""


def split_triples(split: str) -> list[tuple[int, int, int]]:
    """The triples a split draws from: the seen ones (train, test) or :data:`HELD_OUT`."""
    if split not in SPLITS:
        raise DifflabError(
            f"colour digits split must be one of {', '.join(SPLITS)}, got {split!r}."
        )
    if split == "held_out":
        return sorted(HELD_OUT)
    return [t for t in all_triples() if t not in HELD_OUT]


def caption(digit: int, fg: int, bg: int, rng: np.random.Generator) -> str:
    """One caption of a triple: a random template, digit form and colour synonyms."""
    template = TEMPLATES[rng.integers(len(TEMPLATES))]
    fg_words, bg_words = COLOUR_SYNONYMS[COLOUR_NAMES[fg]], COLOUR_SYNONYMS[COLOUR_NAMES[bg]]
    text = template.format(
        fg=fg_words[rng.integers(len(fg_words))],
        bg=bg_words[rng.integers(len(bg_words))],
        digit=digit,
        word=DIGIT_WORDS[digit],
    )
    return re.sub(r"\ba (?=[aeiou8])", "an ", text)  # "an azure", "an 8"


def render(masks: torch.Tensor, fg: torch.Tensor, bg: torch.Tensor, size: int) -> torch.Tensor:
    """masks (N, 28, 28) in [0, 1], fg and bg (N,) colour indices -> (N, 3, size, size) in [-1, 1]."""
    m = masks[:, None].float()  # (N, 1, 28, 28)
    mode = "area" if size <= masks.shape[-1] else "bilinear"
    extra = {} if mode == "area" else {"align_corners": False}
    m = F.interpolate(m, size=(size, size), mode=mode, **extra).clamp(0, 1)  # (N, 1, s, s)
    palette = torch.tensor([COLOUR_RGB[name] for name in COLOUR_NAMES])  # (K, 3)
    fg_rgb, bg_rgb = palette[fg][..., None, None], palette[bg][..., None, None]  # (N, 3, 1, 1)
    return (bg_rgb + m * (fg_rgb - bg_rgb)) * 2 - 1  # (N, 3, s, s)


@lru_cache(maxsize=2)
def _mnist(split: str, data_dir: str | None) -> tuple[np.ndarray, np.ndarray]:
    """MNIST's (N, 28, 28) uint8 images and (N,) labels of a split, read once per process."""
    images, labels, _ = load_idx_split("mnist", split, data_dir)
    return images, labels


@dataclass(frozen=True)
class ColourDigits:
    """A split of captioned colour digits.

    Attributes:
        images: (N, 3, S, S) float32 in [-1, 1].
        digits, fg, bg: (N,) int64: the digit and the colour indices (into :data:`COLOUR_NAMES`).
        captions: one caption per image.
    """

    images: torch.Tensor
    digits: torch.Tensor
    fg: torch.Tensor
    bg: torch.Tensor
    captions: tuple[str, ...]

    def as_image_dataset(self) -> ImageDataset:
        """The split as an :class:`ImageDataset` labelled by digit, with the captions."""
        return ImageDataset("colour-digits", self.images, self.digits, DIGIT_WORDS, self.captions)


def load_colour_digits(
    split: str,
    size: int = 16,
    count: int = 1000,
    seed: int = 0,
    data_dir: str | Path | None = None,
) -> ColourDigits:
    """``count`` captioned colour digits of ``split`` (``train``, ``test`` or ``held_out``).

    Deterministic: the same arguments give the same images and captions. ``train`` reads MNIST's
    training images, the other splits its test images.
    """
    if size < 8:
        raise DifflabError(f"colour digits need at least 8 pixels a side, got size={size}.")
    triples = split_triples(split)
    mnist_split = "train" if split == "train" else "test"
    images, labels = _mnist(mnist_split, None if data_dir is None else str(data_dir))
    rng = np.random.default_rng([seed, SPLITS.index(split)])
    # pick MNIST images whose digit has a triple in this split (held_out covers a subset)
    by_digit = {d: [t for t in triples if t[0] == d] for d in range(10)}
    usable = np.flatnonzero([bool(by_digit[int(d)]) for d in labels])
    if count > len(usable):
        raise DifflabError(
            f"colour digits {split} holds at most {len(usable)} images; lower count={count}."
        )
    index = usable[:count]
    chosen = [by_digit[int(labels[i])][rng.integers(len(by_digit[int(labels[i])]))] for i in index]
    digits, fg, bg = (torch.tensor([t[k] for t in chosen], dtype=torch.int64) for k in range(3))
    masks = torch.from_numpy(images[index].astype(np.float32) / 255.0)  # (N, 28, 28)
    captions = tuple(caption(*t, rng) for t in chosen)
    return ColourDigits(render(masks, fg, bg, size).contiguous(), digits, fg, bg, captions)
