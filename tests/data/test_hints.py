"""Control hints from real images: Canny, Sobel, scribbles, colour segmentation, ``difflab hint``."""

import numpy as np
import pytest
import torch
from PIL import Image

from difflab.cli import main
from difflab.data.hints import (
    canny_hint,
    make_hint,
    read_hint_image,
    scribble_hint,
    segmentation_hint,
    sobel_hint,
)
from difflab.errors import DifflabError


def square(size: int = 28) -> np.ndarray:
    """A bright filled square on black: its edges are the square's outline."""
    pixels = np.zeros((size, size), np.uint8)
    pixels[8:20, 8:20] = 255
    return pixels


def test_canny_marks_the_outline_of_a_square_and_nothing_far_from_it():
    """Fails if edges are inverted, shifted by more than a pixel, or the range is not [-1, 1]."""
    hint = canny_hint(square())  # (1, 28, 28)
    assert hint.shape == (1, 28, 28) and set(hint.unique().tolist()) == {-1.0, 1.0}
    rows, cols = torch.nonzero(hint[0] > 0, as_tuple=True)
    near = ((rows - 7).abs() <= 1) | ((rows - 19).abs() <= 1) | ((cols - 7).abs() <= 1)
    near |= (cols - 19).abs() <= 1
    assert bool(near.all()) and len(rows) >= 40
    as_float = torch.from_numpy(square()).float()[None] / 127.5 - 1  # the same image in [-1, 1]
    assert torch.equal(canny_hint(as_float), hint)
    assert canny_hint(as_float[None].repeat(3, 1, 1, 1)).shape == (3, 1, 28, 28)


def test_soft_edges_scribbles_and_segmentation_shapes_and_ranges():
    """Fails if a maker loses the batch, the range, or (segmentation) the colours' count."""
    colour = np.zeros((2, 16, 16, 3), np.uint8)
    colour[:, :8] = (255, 0, 0)
    colour[:, 8:] = (0, 0, 255)
    colour[:, :, :4] = (0, 255, 0)
    soft = sobel_hint(colour)
    assert soft.shape == (2, 1, 16, 16) and soft.max() == 1 and soft.min() == -1
    scribbles = scribble_hint(np.stack([square()] * 2), seed=3)
    assert scribbles.shape == (2, 1, 28, 28) and (scribbles > 0).sum() > 10
    assert torch.equal(scribbles, scribble_hint(np.stack([square()] * 2), seed=3))
    regions = segmentation_hint(colour, regions=3)  # (2, 3, 16, 16)
    assert regions.shape == (2, 3, 16, 16)
    assert len(torch.unique(regions[0].flatten(1), dim=1)) <= 3
    with pytest.raises(DifflabError, match="unknown hint"):
        make_hint("depth", square())


def test_difflab_hint_writes_an_editable_png_of_the_image_size(tmp_path, capsys):
    source = tmp_path / "digit.png"
    Image.fromarray(square()).save(source)
    out = tmp_path / "edges.png"
    assert main(["hint", "canny", str(source), "--out", str(out)]) == 0
    written = read_hint_image(out)
    assert written.shape == (1, 28, 28) and torch.equal(written, canny_hint(square()))
    assert main(["hint", "canny", str(tmp_path / "missing.png"), "--out", str(out)]) == 2
    assert "does not exist" in capsys.readouterr().err
