"""The Fréchet distance between two feature distributions, and feature statistics files.

Each set of images is summarised by the mean ``mu`` and covariance ``C`` of its features; the two
Gaussians ``N(mu_1, C_1)``, ``N(mu_2, C_2)`` are compared with the Fréchet (2-Wasserstein) distance
(Dowson & Landau 1982), the formula of FID (Heusel et al. 2017, "GANs trained by a two time-scale
update rule ...", Eq. 6 / Sec. "Fréchet Inception Distance"):

    d² = ‖mu_1 − mu_2‖² + Tr(C_1 + C_2 − 2 (C_1 C_2)^{1/2})

The matrix square root is never formed. ``C_1 C_2`` has the same eigenvalues as the symmetric
positive semi-definite ``M = C_1^{1/2} C_2 C_1^{1/2}`` (``AB`` and ``BA`` share eigenvalues, with
``A = C_1^{1/2}``, ``B = C_1^{1/2} C_2``), so ``Tr((C_1 C_2)^{1/2}) = Σ_i sqrt(λ_i(M))``. Two
symmetric eigen-decompositions (``numpy.linalg.eigh``/``eigvalsh``, float64) give it; tiny
negative eigenvalues from rounding are clipped to 0. This is exact for singular covariances
(fewer images than feature dimensions) where ``scipy.linalg.sqrtm`` of the non-symmetric product
returns complex noise.

Statistics files (``.npz``, read without pickle) record the feature space (see
:class:`difflab.metrics.features.FeatureSpace`), the image count and size, where the images came
from, and optionally a subset of the features themselves (for precision/recall).
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from difflab.errors import DifflabError
from difflab.io.atomic import atomic_path
from difflab.io.validation import load_npz_checked

STATS_FORMAT = "difflab-feature-stats-1"
_ARRAY_KEYS = ("format", "feature_space", "mean", "cov", "count", "source", "image_size")
STATS_SCHEMA: dict[str, tuple[str, int]] = {  # entry -> (kind, dimensions), checked before reading
    "format": ("text", 0),
    "feature_space": ("text", 0),
    "mean": ("float", 1),
    "cov": ("float", 2),
    "count": ("int", 0),
    "source": ("text", 0),
    "image_size": ("int", 0),
    "features": ("float", 2),
}


def _as_float64(features: torch.Tensor | np.ndarray) -> np.ndarray:
    if isinstance(features, torch.Tensor):
        features = features.detach().cpu().double().numpy()
    return np.asarray(features, dtype=np.float64)


def feature_moments(
    features: torch.Tensor | np.ndarray, where: str = "features"
) -> tuple[np.ndarray, np.ndarray]:
    """Mean ``(D,)`` and unbiased covariance ``(D, D)`` (divided by N − 1), float64.

    Raises:
        DifflabError: fewer than 2 rows (a covariance needs two), not 2-D, or non-finite values.
    """
    x = _as_float64(features)  # (N, D)
    if x.ndim != 2:
        raise DifflabError(f"{where}: features must be (N, D), got shape {x.shape}.")
    if x.shape[0] < 2:
        raise DifflabError(
            f"{where}: a covariance needs at least 2 images, got {x.shape[0]}; use more images."
        )
    if not np.isfinite(x).all():
        raise DifflabError(
            f"{where}: the features contain NaN or infinity; check the images for NaN values."
        )
    mean = x.mean(axis=0)
    centered = x - mean
    cov = centered.T @ centered / (x.shape[0] - 1)
    return mean, cov


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    """The symmetric square root of a symmetric PSD matrix (negative eigenvalues clipped)."""
    eigenvalues, eigenvectors = np.linalg.eigh(matrix)
    roots = np.sqrt(np.clip(eigenvalues, 0.0, None))
    return (eigenvectors * roots) @ eigenvectors.T  # V diag(sqrt w) V^T


def trace_sqrt_product(cov1: np.ndarray, cov2: np.ndarray) -> float:
    """``Tr((C_1 C_2)^{1/2}) = Σ sqrt(λ(C_1^{1/2} C_2 C_1^{1/2}))`` for symmetric PSD C_1, C_2."""
    root1 = _psd_sqrt((cov1 + cov1.T) / 2)
    middle = root1 @ cov2 @ root1
    eigenvalues = np.linalg.eigvalsh((middle + middle.T) / 2)
    return float(np.sqrt(np.clip(eigenvalues, 0.0, None)).sum())


def frechet_distance(
    mean1: np.ndarray, cov1: np.ndarray, mean2: np.ndarray, cov2: np.ndarray
) -> float:
    """``‖mu_1 − mu_2‖² + Tr(C_1) + Tr(C_2) − 2 Tr((C_1 C_2)^{1/2})`` (Heusel et al. 2017, Eq. 6).

    Args:
        mean1, mean2: feature means ``(D,)``.
        cov1, cov2: feature covariances ``(D, D)``, symmetric positive semi-definite.

    Returns:
        The squared Fréchet distance, ≥ 0 (rounding below 0 is clipped), in squared feature units.
    """
    mean1, mean2 = np.asarray(mean1, np.float64), np.asarray(mean2, np.float64)
    cov1, cov2 = np.asarray(cov1, np.float64), np.asarray(cov2, np.float64)
    dim = mean1.shape[0] if mean1.ndim == 1 else -1
    for name, value, shape in (
        ("mean1", mean1, (dim,)),
        ("mean2", mean2, (dim,)),
        ("cov1", cov1, (dim, dim)),
        ("cov2", cov2, (dim, dim)),
    ):
        if value.shape != shape:
            raise DifflabError(
                f"Fréchet distance: {name} has shape {value.shape}, expected {shape}; both sides "
                "must come from the same feature space."
            )
        if not np.isfinite(value).all():
            raise DifflabError(f"Fréchet distance: {name} contains NaN or infinity.")
    mean_term = float(np.sum((mean1 - mean2) ** 2))
    trace_term = float(np.trace(cov1) + np.trace(cov2)) - 2.0 * trace_sqrt_product(cov1, cov2)
    return max(mean_term + trace_term, 0.0)


@dataclass(frozen=True, eq=False)
class FeatureStats:
    """Feature statistics of one set of images.

    Attributes:
        feature_space: the :attr:`FeatureSpace.id` the features come from.
        mean: ``(D,)`` float64.
        cov: ``(D, D)`` float64, unbiased.
        count: number of images N.
        source: what the images were, e.g. ``"mnist:test"`` or ``"folder:/data/x"``.
        image_size: side of the images in pixels before the extractor resized them (0: unknown).
        features: ``(M, D)`` float32 rows (all, or a seeded subset) for precision/recall; None
            when not kept.
    """

    feature_space: str
    mean: np.ndarray
    cov: np.ndarray
    count: int
    source: str = ""
    image_size: int = 0
    features: np.ndarray | None = field(default=None, repr=False)

    @property
    def dim(self) -> int:
        return int(self.mean.shape[0])

    @classmethod
    def from_features(
        cls,
        features: torch.Tensor | np.ndarray,
        feature_space: str,
        *,
        source: str = "",
        image_size: int = 0,
        keep_features: int | None = 10_000,
    ) -> FeatureStats:
        """Statistics of features ``(N, D)``.

        Args:
            keep_features: keep at most this many feature rows (a seed-0 random subset when N is
                larger; all when None); 0 keeps none.
        """
        mean, cov = feature_moments(features, source or "features")
        kept = None
        if keep_features is None or keep_features > 0:
            rows = _as_float64(features).astype(np.float32)
            if keep_features is not None and len(rows) > keep_features:
                chosen = np.random.default_rng(0).permutation(len(rows))[:keep_features]
                rows = rows[np.sort(chosen)]
            kept = rows
        return cls(feature_space, mean, cov, int(np.shape(features)[0]), source, image_size, kept)

    def check_compatible(self, other: FeatureStats, names: tuple[str, str] = ("A", "B")) -> None:
        """Raise a DifflabError unless both come from one feature space and one image size."""
        if self.feature_space != other.feature_space:
            raise DifflabError(
                f"{names[0]} has statistics in feature space {self.feature_space} but {names[1]} "
                f"in {other.feature_space}; compute both with the same --features (and weights)."
            )
        if self.image_size and other.image_size and self.image_size != other.image_size:
            raise DifflabError(
                f"{names[0]} has {self.image_size}×{self.image_size} images but {names[1]} has "
                f"{other.image_size}×{other.image_size}; the Fréchet distance compares images of "
                "one size: pass --image-size to resize both."
            )

    def frechet_distance(self, other: FeatureStats) -> float:
        """The Fréchet distance to ``other`` (same feature space required)."""
        self.check_compatible(other)
        return frechet_distance(self.mean, self.cov, other.mean, other.cov)

    def save(self, path: str | Path) -> Path:
        """Write an ``.npz`` (no pickled objects) atomically; returns the path."""
        path = Path(path).expanduser()
        if path.suffix != ".npz":
            raise DifflabError(f"statistics file {path} must end in .npz.")
        arrays = {
            "format": np.array(STATS_FORMAT),
            "feature_space": np.array(self.feature_space),
            "mean": self.mean.astype(np.float64),
            "cov": self.cov.astype(np.float64),
            "count": np.array(self.count, dtype=np.int64),
            "source": np.array(self.source),
            "image_size": np.array(self.image_size, dtype=np.int64),
        }
        if self.features is not None:
            arrays["features"] = self.features.astype(np.float32)
        with atomic_path(path) as tmp, open(tmp, "wb") as handle:
            np.savez(handle, **arrays)  # a file object: numpy adds no ".npz" to the name
        return path

    @classmethod
    def load(cls, path: str | Path, feature_space: str | None = None) -> FeatureStats:
        """Read a statistics file; ``feature_space`` (an id), when given, must match it.

        Raises:
            DifflabError: missing or damaged file, not a difflab statistics file, inconsistent
                shapes, or statistics from another feature space.
        """
        path = Path(path).expanduser()
        if not path.is_file():
            raise DifflabError(
                f"statistics file {path} does not exist; make it with `difflab fd-stats DATA "
                f"--out {path}`."
            )
        try:
            arrays = load_npz_checked(path, STATS_SCHEMA)
        except (OSError, ValueError, zipfile.BadZipFile, EOFError) as error:
            raise DifflabError(
                f"{path} cannot be read as a statistics file ({error}); recompute it with "
                "`difflab fd-stats`."
            ) from None
        missing = [key for key in _ARRAY_KEYS if key not in arrays]
        if missing or str(arrays["format"]) != STATS_FORMAT:
            what = f"lacks {missing[0]!r}" if missing else f"has format {arrays['format']}"
            raise DifflabError(
                f"{path} is not a difflab statistics file ({what}); make one with "
                "`difflab fd-stats DATA --out stats.npz`."
            )
        mean, cov = arrays["mean"].astype(np.float64), arrays["cov"].astype(np.float64)
        features = arrays.get("features")
        dim = mean.shape[0] if mean.ndim == 1 else -1
        if (
            cov.shape != (dim, dim)
            or (features is not None and (features.ndim != 2 or features.shape[1] != dim))
            or not (np.isfinite(mean).all() and np.isfinite(cov).all())
        ):
            raise DifflabError(
                f"{path} is damaged (mean {mean.shape}, covariance {cov.shape}); recompute it "
                "with `difflab fd-stats`."
            )
        stats = cls(
            feature_space=str(arrays["feature_space"]),
            mean=mean,
            cov=cov,
            count=int(arrays["count"]),
            source=str(arrays["source"]),
            image_size=int(arrays["image_size"]),
            features=features,
        )
        if feature_space is not None and stats.feature_space != feature_space:
            raise DifflabError(
                f"{path} holds statistics in feature space {stats.feature_space}, not "
                f"{feature_space}; recompute it with `difflab fd-stats --features "
                f"{feature_space.split('/')[0]}` or pick the matching --features."
            )
        return stats
