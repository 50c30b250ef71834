"""Latent Diffusion's conditioning mechanism: transformer blocks over feature maps that
cross-attend to a token sequence (Rombach et al. 2022, sec. 3.3 and appendix, "SpatialTransformer").

A U-Net feature map φ(z) (B, C, H, W) becomes HW tokens of width C; each
:class:`TransformerBlock` runs self-attention over them, cross-attention from them to the
conditioning tokens τ(y) (B, L, D) (a caption's word embeddings, a frozen text encoder's output),
and a GEGLU feed-forward. The whole :class:`SpatialTransformer` is a residual branch whose output
projection starts at zero, so a U-Net gains it as the identity.

A dropped caption (classifier-free guidance) arrives as an all-False mask. Softmax over an empty
key set is undefined, so every :class:`CrossAttention` appends one learned **null token** (a key
and a value per layer) that every query may always attend to: with no real token the output is
that layer's null value, the same for every query and every pixel; with real tokens the null key
competes with them like any other (an "attend to nothing" option). The null key and value start
at zero, so the null token first scores 0 against every query.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from difflab.nn.attention import multihead_attention, packed_attention
from difflab.nn.blocks import group_norm


def _heads_split(width: int, num_heads: int) -> int:
    """The width of one head, or a ValueError when ``width`` does not split evenly."""
    if num_heads < 1 or width % num_heads:
        raise ValueError(f"attention: {width} channels do not split into {num_heads} heads.")
    return width // num_heads


class SelfAttention(nn.Module):
    """Multi-head self-attention over tokens (B, T, C) -> (B, T, C); q, k, v without bias (LDM)."""

    def __init__(self, width: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = _heads_split(width, num_heads)
        self.qkv = nn.Linear(width, 3 * width, bias=False)
        self.out = nn.Linear(width, width)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        B, T, C = h.shape
        qkv = self.qkv(h).reshape(B, T, 3, self.num_heads, self.head_dim)
        return self.out(packed_attention(qkv).reshape(B, T, C))  # (B, T, C)


class CrossAttention(nn.Module):
    """Multi-head attention from tokens (B, T, C) to a context (B, L, D) with its key-padding mask.

    ``Attention(Q, K, V) = softmax(Q K^T / sqrt(d)) V`` with ``Q = W_Q φ(z)``, ``K = W_K τ(y)``,
    ``V = W_V τ(y)`` (Rombach et al. 2022, sec. 3.3; here per head), plus the learned null token:
    ``K`` and ``V`` get one extra row, ``null_key`` and ``null_value``, that is never masked.

    Args:
        width: C, the query tokens' width (and the attention's inner width).
        context_dim: D, the width of the context tokens.
        num_heads: heads; ``width`` must divide by it.
    """

    def __init__(self, width: int, context_dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = _heads_split(width, num_heads)
        self.to_q = nn.Linear(width, width, bias=False)
        self.to_k = nn.Linear(context_dim, width, bias=False)
        self.to_v = nn.Linear(context_dim, width, bias=False)
        self.null_key = nn.Parameter(torch.zeros(width))
        self.null_value = nn.Parameter(torch.zeros(width))
        self.out = nn.Linear(width, width)

    def forward(
        self, h: torch.Tensor, context: torch.Tensor, context_mask: torch.Tensor
    ) -> torch.Tensor:
        """h (B, T, C), context (B, L, D), context_mask (B, L) bool (True = real) -> (B, T, C)."""
        B, T, C = h.shape
        L = context.shape[1]
        q = self.to_q(h).reshape(B, T, self.num_heads, self.head_dim)
        k, v = self.to_k(context), self.to_v(context)  # (B, L, C) each
        k = torch.cat([k, self.null_key.to(k.dtype).expand(B, 1, C)], dim=1)  # (B, L+1, C)
        v = torch.cat([v, self.null_value.to(v.dtype).expand(B, 1, C)], dim=1)  # (B, L+1, C)
        always = torch.ones(B, 1, dtype=torch.bool, device=context_mask.device)
        mask = torch.cat([context_mask, always], dim=1)  # (B, L+1)
        out = multihead_attention(
            q,
            k.reshape(B, L + 1, self.num_heads, self.head_dim),
            v.reshape(B, L + 1, self.num_heads, self.head_dim),
            key_mask=mask,
        )  # (B, T, heads, C/heads)
        return self.out(out.reshape(B, T, C))  # (B, T, C)


class GegluFeedForward(nn.Module):
    """LDM's feed-forward: ``W_2 (a ⊙ GELU(g))`` with ``[a, g] = W_1 h`` (GEGLU, Shazeer 2020).

    (B, T, C) -> (B, T, C) through an inner width of ``mult * C``.
    """

    def __init__(self, width: int, mult: int = 4) -> None:
        super().__init__()
        self.proj_in = nn.Linear(width, 2 * mult * width)
        self.proj_out = nn.Linear(mult * width, width)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        a, gate = self.proj_in(h).chunk(2, dim=-1)  # (B, T, mult * C) each
        return self.proj_out(a * F.gelu(gate))  # (B, T, C)


class TransformerBlock(nn.Module):
    """Pre-norm self-attention, cross-attention and GEGLU feed-forward, each residual (LDM's
    BasicTransformerBlock): (B, T, C) -> (B, T, C)."""

    def __init__(self, width: int, context_dim: int, num_heads: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(width)
        self.self_attention = SelfAttention(width, num_heads)
        self.norm2 = nn.LayerNorm(width)
        self.cross_attention = CrossAttention(width, context_dim, num_heads)
        self.norm3 = nn.LayerNorm(width)
        self.feed_forward = GegluFeedForward(width)

    def forward(
        self, h: torch.Tensor, context: torch.Tensor, context_mask: torch.Tensor
    ) -> torch.Tensor:
        h = h + self.self_attention(self.norm1(h))  # (B, T, C)
        h = h + self.cross_attention(self.norm2(h), context, context_mask)
        return h + self.feed_forward(self.norm3(h))


class SpatialTransformer(nn.Module):
    """Transformer blocks over the pixels of a feature map, conditioned on a token sequence.

    ``x + proj_out(blocks(proj_in(GroupNorm(x))))`` with the pixels as tokens (LDM's
    SpatialTransformer with linear projections, as Stable Diffusion 2 has them). ``proj_out``
    starts at zero, so the block starts as the identity.

    Args:
        channels: C, the feature map's channels (also the blocks' width).
        context_dim: D, the width of the conditioning tokens.
        num_heads: attention heads of every block; ``channels`` must divide by it.
        depth: how many :class:`TransformerBlock` run in sequence.
    """

    def __init__(self, channels: int, context_dim: int, num_heads: int = 1, depth: int = 1) -> None:
        super().__init__()
        if context_dim < 1:
            raise ValueError(f"spatial transformer: context_dim must be >= 1, got {context_dim}.")
        _heads_split(channels, num_heads)
        self.norm = group_norm(channels)
        self.proj_in = nn.Linear(channels, channels)
        self.blocks = nn.ModuleList(
            TransformerBlock(channels, context_dim, num_heads) for _ in range(depth)
        )
        self.proj_out = nn.Linear(channels, channels)
        nn.init.zeros_(self.proj_out.weight)
        nn.init.zeros_(self.proj_out.bias)

    def forward(
        self, x: torch.Tensor, context: torch.Tensor, context_mask: torch.Tensor
    ) -> torch.Tensor:
        """x (B, C, H, W), context (B, L, D), context_mask (B, L) bool -> (B, C, H, W).

        ``context_mask`` is True where ``context`` holds a real token; padded tokens get weight
        exactly zero, and a row of all False (a dropped caption) attends to the null token only.
        L may be 0.
        """
        B, C, H, W = x.shape
        h = self.proj_in(self.norm(x).flatten(2).transpose(1, 2))  # (B, HW, C)
        for block in self.blocks:
            h = block(h, context, context_mask)  # (B, HW, C)
        h = self.proj_out(h)  # (B, HW, C)
        return x + h.transpose(1, 2).reshape(B, C, H, W)
