"""Convolutional building blocks of the ADM U-Net (Dhariwal & Nichol 2021, sec. 3)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def group_norm(channels: int, num_groups: int = 32) -> nn.GroupNorm:
    """GroupNorm with at most ``num_groups`` groups, fewer when ``channels`` is small."""
    groups = min(num_groups, channels)
    while channels % groups:
        groups -= 1
    return nn.GroupNorm(groups, channels)


class Downsample(nn.Module):
    """Stride-2 3x3 convolution: (B, C, H, W) -> (B, C, ceil(H/2), ceil(W/2))."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    """Nearest-neighbour upsampling to an explicit size, then a 3x3 convolution.

    Taking the size of the matching skip connection (not a fixed factor of 2) makes odd sizes
    such as 7 -> 14 -> 28 or 25 -> 13 -> 25 round-trip.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        return self.conv(F.interpolate(x, size=size, mode="nearest"))


class ResBlock(nn.Module):
    """Residual block conditioned on an embedding by scale-shift norm (ADM's AdaGN).

    ``h = conv(silu(norm(x)))``; then ``h = norm(h) * (1 + scale) + shift`` with (scale, shift) a
    linear map of the embedding; ``h = conv(dropout(silu(h)))``; output ``skip(x) + h``. The last
    convolution starts at zero, so the block starts as (a projection of) the identity.

    Shapes: x (B, in_ch, H, W), emb (B, emb_dim) -> (B, out_ch, H, W).
    """

    def __init__(
        self, in_ch: int, out_ch: int, emb_dim: int, dropout: float = 0.0, scale_shift: bool = True
    ) -> None:
        super().__init__()
        self.scale_shift = scale_shift
        self.norm_in = group_norm(in_ch)
        self.conv_in = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.emb_proj = nn.Linear(emb_dim, 2 * out_ch if scale_shift else out_ch)
        self.norm_out = group_norm(out_ch)
        self.dropout = nn.Dropout(dropout)
        self.conv_out = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)
        self.skip = nn.Identity() if in_ch == out_ch else nn.Conv2d(in_ch, out_ch, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(F.silu(self.norm_in(x)))  # (B, out, H, W)
        e = self.emb_proj(F.silu(emb))[:, :, None, None]  # (B, 2*out or out, 1, 1)
        if self.scale_shift:
            scale, shift = e.chunk(2, dim=1)
            h = self.norm_out(h) * (1 + scale) + shift
        else:
            h = self.norm_out(h + e)
        h = self.conv_out(self.dropout(F.silu(h)))
        return self.skip(x) + h
