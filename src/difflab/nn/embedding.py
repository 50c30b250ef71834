"""Timestep embeddings."""

from __future__ import annotations

import math

import torch
from torch import nn


def sinusoidal_embedding(
    t: torch.Tensor,
    dim: int,
    max_period: float = 10000.0,
    *,
    freq_shift: float = 0.0,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Transformer-style sinusoidal features of the timesteps (DDPM appendix B).

    Args:
        t: (B,) timesteps (int or float).
        dim: even embedding width.
        max_period: the longest period, 10000 as in the Transformer.
        freq_shift: ``s`` in ``w_i = max_period^(-i / (d/2 - s))``: 0 in DDPM's, ADM's and the
            DiT reference code (and difflab's models), 1 in diffusers' ``DiTTransformer2DModel``
            (its ``downscale_freq_shift``, fixed there).
        dtype: dtype of the result; by default float64 when ``t`` is float64, else float32.
            The angles are computed in float64 for a float64 result and in float32 otherwise, so
            a lower-precision request (bf16, fp16) is float32 features rounded once at the end.
    Returns:
        (B, dim) features ``[cos(t w_0), ..., cos(t w_{d/2-1}), sin(t w_0), ...]``.
    """
    if dtype is None:
        dtype = torch.float64 if t.dtype == torch.float64 else torch.float32
    compute = torch.float64 if dtype == torch.float64 else torch.float32
    half = dim // 2
    freqs = torch.exp(
        -math.log(max_period)
        * torch.arange(half, device=t.device, dtype=compute)
        / (half - freq_shift)
    )  # (dim/2,)
    angles = t.to(compute)[:, None] * freqs[None]  # (B, dim/2)
    return torch.cat([angles.cos(), angles.sin()], dim=1).to(dtype)


class TimestepEmbedding(nn.Module):
    """Sinusoidal features followed by a two-layer MLP: (B,) -> (B, out_dim).

    The features take the dtype of the MLP's weights (float64 for a float64 model, bf16 for a
    bf16 one), computed in float32 for everything but float64; under autocast the float32
    weights keep them float32, and autocast casts them for the matmul as before.
    """

    def __init__(self, feature_dim: int, out_dim: int, freq_shift: float = 0.0) -> None:
        super().__init__()
        self.feature_dim = feature_dim
        self.freq_shift = freq_shift
        self.mlp = nn.Sequential(
            nn.Linear(feature_dim, out_dim), nn.SiLU(), nn.Linear(out_dim, out_dim)
        )

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        features = sinusoidal_embedding(
            t, self.feature_dim, freq_shift=self.freq_shift, dtype=self.mlp[0].weight.dtype
        )  # (B, feature_dim)
        return self.mlp(features)
