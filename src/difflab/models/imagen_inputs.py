"""Imagen's extra U-Net inputs (Saharia et al. 2022, sec. 2.1, 2.5 and appendix B/F).

* :class:`PooledTextEmbedding`: the mean of the text tokens, projected and **added to the
  timestep embedding** (Imagen: "pooled embedding vector ... added to the diffusion timestep
  embedding"); a prompt without tokens (the null prompt, CFG's dropped branch) gets a learned
  null vector instead.
* Super-resolution stages read ``cond.low_res`` (B, C, h, w), upsampled bilinearly to the stage's
  size and **concatenated** to x_t (:func:`super_resolution_input`), and ``cond.noise_level``
  (B,) in [0, 1], the level of the **noise-conditioning augmentation** the low-resolution image
  went through, through its own sinusoidal embedding added to the timestep embedding
  (:class:`NoiseLevelEmbedding`).
* :func:`noise_augment`: the augmentation itself, a variance-preserving corruption indexed by a
  continuous level ``a`` in [0, 1] (a cosine schedule: ``cos(πa/2) x + sin(πa/2) ε``). Training
  draws a at random per sample; sampling takes it as a user setting (sec. 2.5).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from difflab.errors import DifflabError
from difflab.models.frozen_text import masked_mean
from difflab.nn import TimestepEmbedding

NOISE_LEVEL_SCALE = 1000.0
"""a in [0, 1] is embedded as ``a * 1000``, the range of the timestep embedding's t."""


def noise_augment(low_res: torch.Tensor, level: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """``cos(πa/2) x + sin(πa/2) ε``: low_res (B, C, h, w), level a (B,) in [0, 1], eps like x."""
    angle = (level.to(low_res.dtype) * (math.pi / 2)).reshape(-1, 1, 1, 1)  # (B, 1, 1, 1)
    return angle.cos() * low_res + angle.sin() * eps  # (B, C, h, w)


class PooledTextEmbedding(nn.Module):
    """tokens (B, L, D) + mask (B, L) -> (B, E): ``Linear(LayerNorm(mean of real tokens))``, or
    the learned null vector for a sample without tokens."""

    def __init__(self, context_dim: int, emb_dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(context_dim)
        self.proj = nn.Linear(context_dim, emb_dim)
        self.null = nn.Parameter(torch.zeros(emb_dim))

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        pooled = self.proj(self.norm(masked_mean(tokens, mask)))  # (B, E)
        return torch.where(mask.any(dim=1, keepdim=True), pooled, self.null.to(pooled.dtype))


class NoiseLevelEmbedding(nn.Module):
    """The augmentation level a (B,) in [0, 1] -> (B, E), a sinusoidal embedding of ``1000 a``."""

    def __init__(self, feature_dim: int, emb_dim: int) -> None:
        super().__init__()
        self.embed = TimestepEmbedding(feature_dim, emb_dim)

    def forward(self, level: torch.Tensor) -> torch.Tensor:
        return self.embed(level.float() * NOISE_LEVEL_SCALE)


def super_resolution_input(
    x_t: torch.Tensor, low_res: torch.Tensor | None, channels: int
) -> torch.Tensor:
    """``[x_t, upsample(low_res)]`` (B, C + channels, H, W), checked: the low-resolution image must
    be given, have ``channels`` channels and be no larger than x_t."""
    if low_res is None:
        raise DifflabError(
            "this U-Net is a super-resolution stage (model.low_res_channels > 0) but the "
            "conditioning has no low_res image; pass Conditioning(low_res=(B, C, h, w))."
        )
    B, _, H, W = x_t.shape
    if low_res.ndim != 4 or low_res.shape[0] != B or low_res.shape[1] != channels:
        raise DifflabError(
            f"the low-resolution image has shape {tuple(low_res.shape)}, but this stage reads "
            f"(B={B}, {channels}, h, w); the stages' channels do not chain."
        )
    if low_res.shape[-2] > H or low_res.shape[-1] > W:
        raise DifflabError(
            f"the low-resolution image is {low_res.shape[-2]}x{low_res.shape[-1]}, larger than "
            f"this stage's {H}x{W}; the stages' resolutions do not chain."
        )
    up = F.interpolate(low_res.to(x_t.dtype), size=(H, W), mode="bilinear", align_corners=False)
    return torch.cat([x_t, up], dim=1)  # (B, C + channels, H, W)
