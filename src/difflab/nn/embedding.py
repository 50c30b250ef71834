"""Timestep embeddings."""

from __future__ import annotations

import math

import torch
from torch import nn


def sinusoidal_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Transformer-style sinusoidal features of the timesteps (DDPM appendix B).

    Args:
        t: (B,) timesteps (int or float).
        dim: even embedding width.
    Returns:
        (B, dim) float32: ``[cos(t w_0), ..., cos(t w_{d/2-1}), sin(t w_0), ...]`` with
        ``w_i = max_period^(-i / (d/2))``.
    """
    half = dim // 2
    freqs = torch.exp(
        -math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half
    )
    angles = t.float()[:, None] * freqs[None]  # (B, dim/2)
    return torch.cat([angles.cos(), angles.sin()], dim=1)


class TimestepEmbedding(nn.Module):
    """Sinusoidal features followed by a two-layer MLP: (B,) -> (B, out_dim)."""

    def __init__(self, feature_dim: int, out_dim: int) -> None:
        super().__init__()
        self.feature_dim = feature_dim
        self.mlp = nn.Sequential(
            nn.Linear(feature_dim, out_dim), nn.SiLU(), nn.Linear(out_dim, out_dim)
        )

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.mlp(sinusoidal_embedding(t, self.feature_dim))
