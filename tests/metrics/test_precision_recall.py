"""Improved precision and recall (Kynkäänniemi et al. 2019) against a direct implementation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from difflab.errors import DifflabError
from difflab.metrics.precision_recall import knn_radii, precision_recall


def direct_precision_recall(real: np.ndarray, fake: np.ndarray, k: int) -> tuple[float, float]:
    """Eq. 1–2 written out sample by sample (the batched code must agree)."""

    def radii(points: np.ndarray) -> np.ndarray:
        out = []
        for p in points:
            distances = np.sort(np.linalg.norm(points - p, axis=1))
            out.append(distances[k])  # distances[0] is the point itself
        return np.array(out)

    def inside(query: np.ndarray, points: np.ndarray, r: np.ndarray) -> bool:
        return bool(np.any(np.linalg.norm(points - query, axis=1) <= r))

    real_r, fake_r = radii(real), radii(fake)
    precision = np.mean([inside(f, real, real_r) for f in fake])
    recall = np.mean([inside(r, fake, fake_r) for r in real])
    return float(precision), float(recall)


def test_identical_sets_have_precision_and_recall_one():
    x = torch.randn(200, 8, generator=torch.Generator().manual_seed(0))
    result = precision_recall(x, x.clone())
    assert (result.precision, result.recall) == (1.0, 1.0)
    assert (result.k, result.num_real, result.num_fake) == (3, 200, 200)


def test_duplicated_points_count_as_inside():
    x = torch.randn(20, 4, generator=torch.Generator().manual_seed(1)).repeat(5, 1)  # radii 0
    assert precision_recall(x, x).precision == 1.0


def test_agrees_with_the_direct_definition():
    rng = np.random.default_rng(0)
    real = rng.standard_normal((120, 5))
    fake = rng.standard_normal((90, 5)) * 1.3 + 0.4
    result = precision_recall(real, fake, k=3)
    expected = direct_precision_recall(real, fake, 3)
    assert (result.precision, result.recall) == pytest.approx(expected, abs=1e-12)
    # the block size only changes memory use, not the result
    small_blocks = precision_recall(real, fake, k=3, max_block_elements=100)
    assert (small_blocks.precision, small_blocks.recall) == (result.precision, result.recall)


def test_mode_collapse_keeps_precision_and_loses_recall():
    gen = torch.Generator().manual_seed(2)
    real = torch.randn(300, 6, generator=gen)
    collapsed = torch.randn(300, 6, generator=gen) * 0.05  # all near the mode
    result = precision_recall(real, collapsed)
    assert result.precision > 0.95 and result.recall < 0.2


def test_far_away_samples_have_zero_precision_and_recall():
    gen = torch.Generator().manual_seed(3)
    real = torch.randn(100, 4, generator=gen)
    result = precision_recall(real, torch.randn(100, 4, generator=gen) + 100.0)
    assert (result.precision, result.recall) == (0.0, 0.0)


def test_knn_radii_are_squared_kth_neighbour_distances():
    x = torch.tensor([[0.0], [1.0], [3.0], [6.0]], dtype=torch.float64)
    torch.testing.assert_close(
        knn_radii(x, k=1), torch.tensor([1.0, 1.0, 4.0, 9.0], dtype=torch.float64)
    )


@pytest.mark.parametrize(
    ("real", "fake", "k", "match"),
    [
        (torch.randn(3, 2), torch.randn(10, 2), 3, "too few"),
        (torch.randn(10, 2), torch.randn(10, 3), 3, "dimensions"),
        (torch.randn(10, 2), torch.randn(10, 2), 0, "positive integer"),
        (torch.randn(10), torch.randn(10, 2), 3, r"\(N, D\)"),
        (torch.full((10, 2), float("nan")), torch.randn(10, 2), 3, "NaN"),
    ],
)
def test_bad_inputs_are_clear_errors(real, fake, k, match):
    with pytest.raises(DifflabError, match=match):
        precision_recall(real, fake, k=k)
