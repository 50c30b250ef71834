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
        return self.conv(enlarge(x, size))


RESAMPLE_MODES = ("none", "down", "up")


def halve(x: torch.Tensor) -> torch.Tensor:
    """2x2 average pooling, a window cut by an odd edge averaging its pixels inside the image:
    (B, C, H, W) -> (B, C, ceil(H/2), ceil(W/2)), the sizes :class:`Downsample` produces."""
    return F.avg_pool2d(x, 2, ceil_mode=True)


def enlarge(x: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
    """Nearest-neighbour upsampling to ``size`` (default: twice the side), as :class:`Upsample`
    does before its convolution: (B, C, H, W) -> (B, C, *size)."""
    target = size if size is not None else (2 * x.shape[-2], 2 * x.shape[-1])
    return F.interpolate(x, size=tuple(target), mode="nearest")


class ResBlock(nn.Module):
    """Residual block conditioned on an embedding by scale-shift norm (ADM's AdaGN) or addition.

    ``h = conv(silu(norm(x)))``; then ``h = norm(h) * (1 + scale) + shift`` with (scale, shift) a
    linear map of the embedding (``scale_shift=False``: ``h = norm(h + e)``, the addition that
    Dhariwal & Nichol 2021, Table 3, compare AdaGN with); ``h = conv(dropout(silu(h)))``; output
    ``skip(x) + h``. The last convolution starts at zero, so the block starts as (a projection of)
    the identity.

    ``resample="down"`` / ``"up"`` makes it the BigGAN-style block of ADM (Dhariwal & Nichol 2021,
    sec. 3, after Brock et al. 2019): after the first norm + SiLU the hidden path, and the skip
    path x, are halved (2x2 average pooling) or enlarged (nearest neighbour, to ``size``), before
    the first convolution; it replaces a separate :class:`Downsample` / :class:`Upsample` and has
    no parameters of its own for it. ``rescale=True`` divides the output by sqrt(2) (Table 1's
    "rescale resblock").

    Shapes: x (B, in_ch, H, W), emb (B, emb_dim) -> (B, out_ch, H', W'): H' = H, ceil(H/2)
    (down) or ``size`` (up; default 2H).
    """

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        emb_dim: int,
        dropout: float = 0.0,
        scale_shift: bool = True,
        *,
        resample: str = "none",
        rescale: bool = False,
    ) -> None:
        super().__init__()
        if resample not in RESAMPLE_MODES:
            raise ValueError(f"resample must be one of {RESAMPLE_MODES}, got {resample!r}")
        self.scale_shift = scale_shift
        self.resample = resample
        self.rescale = rescale
        self.norm_in = group_norm(in_ch)
        self.conv_in = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.emb_proj = nn.Linear(emb_dim, 2 * out_ch if scale_shift else out_ch)
        self.norm_out = group_norm(out_ch)
        self.dropout = nn.Dropout(dropout)
        self.conv_out = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)
        self.skip = nn.Identity() if in_ch == out_ch else nn.Conv2d(in_ch, out_ch, 1)

    def forward(
        self, x: torch.Tensor, emb: torch.Tensor, size: tuple[int, int] | None = None
    ) -> torch.Tensor:
        """``size``: the output side (H', W') of an ``"up"`` block (the matching skip's)."""
        h = F.silu(self.norm_in(x))  # (B, in, H, W)
        if self.resample == "down":
            h, x = halve(h), halve(x)  # (B, in, ceil(H/2), ceil(W/2))
        elif self.resample == "up":
            h, x = enlarge(h, size), enlarge(x, size)  # (B, in, *size)
        h = self.conv_in(h)  # (B, out, H', W')
        e = self.emb_proj(F.silu(emb))[:, :, None, None]  # (B, 2*out or out, 1, 1)
        if self.scale_shift:
            scale, shift = e.chunk(2, dim=1)
            h = self.norm_out(h) * (1 + scale) + shift
        else:
            h = self.norm_out(h + e)
        h = self.conv_out(self.dropout(F.silu(h)))
        out = self.skip(x) + h
        return out * 2**-0.5 if self.rescale else out
