"""Improved precision and recall (Kynkäänniemi et al., NeurIPS 2019), k-NN manifolds, k = 3.

A set of feature vectors ``Φ`` approximates its manifold by the union of balls around each
``φ' ∈ Φ`` whose radius is the distance to the k-th nearest neighbour of ``φ'`` within ``Φ``
(Sec. 2, Eq. 1):

    f(φ, Φ) = 1  if  ‖φ − φ'‖₂ ≤ ‖φ' − NN_k(φ', Φ)‖₂  for at least one φ' ∈ Φ,  else 0

and, for real features ``Φ_r`` and generated features ``Φ_g`` (Eq. 2),

    precision(Φ_r, Φ_g) = 1/|Φ_g| Σ_{φ_g ∈ Φ_g} f(φ_g, Φ_r)   (generated samples inside the real manifold)
    recall(Φ_r, Φ_g)    = 1/|Φ_r| Σ_{φ_r ∈ Φ_r} f(φ_r, Φ_g)   (real samples inside the generated manifold)

The paper uses k = 3 and equal set sizes (the radii shrink as a set grows, so compare sets of
one size). Distances are computed in float64 as ``‖a‖² + ‖b‖² − 2 a·b`` one block of query rows
at a time (at most ``max_block_elements`` distances in memory); a query at distance 0 from a
reference point (itself, a duplicate) is always inside its ball.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from difflab.errors import DifflabError

DEFAULT_K = 3
MAX_BLOCK_ELEMENTS = 1 << 24  # float64 distances held at once: 128 MB
_RELATIVE_TIE = 1e-9  # squared distances this close (relative to the squared norms) count as equal


@dataclass(frozen=True)
class PrecisionRecall:
    """The two fractions in [0, 1], with the set sizes and k they were computed with."""

    precision: float
    recall: float
    k: int
    num_real: int
    num_fake: int


def _as_float64(features: torch.Tensor | np.ndarray, name: str) -> torch.Tensor:
    x = torch.as_tensor(features).detach().to(device="cpu", dtype=torch.float64)
    if x.ndim != 2:
        raise DifflabError(
            f"precision/recall: {name} features must be (N, D), got {tuple(x.shape)}."
        )
    if not torch.isfinite(x).all():
        raise DifflabError(f"precision/recall: {name} features contain NaN or infinity.")
    return x


def _squared_distances(
    queries: torch.Tensor, query_norms: torch.Tensor, refs: torch.Tensor, ref_norms: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Squared distances ``(B, N)`` and the tie tolerance ``(B, N)`` for each pair."""
    scale = query_norms[:, None] + ref_norms[None, :]  # (B, N)
    squared = torch.addmm(scale, queries, refs.T, alpha=-2.0).clamp_(min=0.0)  # (B, N)
    return squared, scale.mul_(_RELATIVE_TIE)


def _block_rows(num_refs: int, max_block_elements: int) -> int:
    return max(1, max_block_elements // max(num_refs, 1))


def knn_radii(
    features: torch.Tensor, k: int = DEFAULT_K, max_block_elements: int = MAX_BLOCK_ELEMENTS
) -> torch.Tensor:
    """Squared distance from each row of ``features`` (N, D) to its k-th nearest other row: (N,).

    The row itself (distance 0) is the first of the ``k + 1`` smallest distances, so the
    ``(k + 1)``-th smallest is the k-th neighbour.
    """
    norms = (features * features).sum(1)  # (N,)
    rows = _block_rows(len(features), max_block_elements)
    radii = []
    for start in range(0, len(features), rows):
        block = features[start : start + rows]  # (B, D)
        squared, _ = _squared_distances(block, norms[start : start + rows], features, norms)
        radii.append(squared.topk(k + 1, dim=1, largest=False).values[:, k])  # (B,)
    return torch.cat(radii)


def inside_manifold(
    queries: torch.Tensor,
    refs: torch.Tensor,
    ref_radii: torch.Tensor,
    max_block_elements: int = MAX_BLOCK_ELEMENTS,
) -> torch.Tensor:
    """``f(φ, Φ)`` for every query row: (M,) bool, ``refs`` (N, D) with squared radii (N,)."""
    query_norms = (queries * queries).sum(1)  # (M,)
    ref_norms = (refs * refs).sum(1)  # (N,)
    rows = _block_rows(len(refs), max_block_elements)
    inside = []
    for start in range(0, len(queries), rows):
        squared, tie = _squared_distances(
            queries[start : start + rows], query_norms[start : start + rows], refs, ref_norms
        )
        inside.append((squared <= ref_radii[None, :] + tie).any(dim=1))  # (B,)
    return torch.cat(inside)


def precision_recall(
    real: torch.Tensor | np.ndarray,
    fake: torch.Tensor | np.ndarray,
    k: int = DEFAULT_K,
    max_block_elements: int = MAX_BLOCK_ELEMENTS,
) -> PrecisionRecall:
    """Improved precision and recall of generated features against real ones (Eq. 1–2).

    Args:
        real: ``(N_r, D)`` features of real images.
        fake: ``(N_g, D)`` features of generated images, in the same feature space.
        k: the neighbour that sets each ball's radius (the paper's k = 3).
        max_block_elements: how many pairwise distances to hold in memory at once.

    Returns:
        :class:`PrecisionRecall`: precision (the fraction of ``fake`` inside the real manifold)
        and recall (the fraction of ``real`` inside the generated manifold).
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise DifflabError(f"precision/recall: k must be a positive integer, got {k!r}.")
    real_x, fake_x = _as_float64(real, "real"), _as_float64(fake, "generated")
    if real_x.shape[1] != fake_x.shape[1]:
        raise DifflabError(
            f"precision/recall: real features have {real_x.shape[1]} dimensions but generated "
            f"ones {fake_x.shape[1]}; use one feature space for both."
        )
    for name, x in (("real", real_x), ("generated", fake_x)):
        if len(x) <= k:
            raise DifflabError(
                f"precision/recall: {len(x)} {name} images are too few for k = {k}; give at "
                f"least {k + 1}."
            )
    real_radii = knn_radii(real_x, k, max_block_elements)  # (N_r,)
    fake_radii = knn_radii(fake_x, k, max_block_elements)  # (N_g,)
    precision = inside_manifold(fake_x, real_x, real_radii, max_block_elements)
    recall = inside_manifold(real_x, fake_x, fake_radii, max_block_elements)
    return PrecisionRecall(
        precision=float(precision.double().mean()),
        recall=float(recall.double().mean()),
        k=k,
        num_real=len(real_x),
        num_fake=len(fake_x),
    )
