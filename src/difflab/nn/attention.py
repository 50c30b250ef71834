"""Multi-head attention: one kernel choice for every model, and the U-Net's pixel attention."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from difflab.nn.blocks import group_norm

MATH_ATTENTION_MAX_BYTES = 256 * 2**20
"""Largest (B, heads, T, T) score tensor the low-precision CPU path materialises (256 MiB)."""


def multihead_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    causal: bool = False,
    key_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Multi-head softmax attention ``softmax(q k^T / sqrt(d)) v`` of T queries over S keys.

    The kernel is chosen by what is fastest on the device and dtype (``make bench-attention``,
    ``benchmarks/results/attention_kernels.md``: PyTorch 2.13 on this project's CPU, batch 128,
    4 heads of width 64, forward + backward, one thread):

    * float32 / float64 anywhere, and bf16 / fp16 off the CPU: ``scaled_dot_product_attention`` on
      (B, heads, T, D/heads) views whose head dimension is contiguous, the layout its fused (flash)
      kernels take.
    * bf16 / fp16 on the CPU (autocast): two batched matmuls and a softmax in that dtype, the
      score matrix materialised. PyTorch's fused CPU kernel is slow in bf16 backward (72 ms for 49
      tokens, against 32 ms in float32 and 16 ms here; 196 tokens: 325 / 314 / 216 ms). The
      probabilities are rounded to bf16 before they weight v, as GPU flash kernels do; the error
      against float64 is about 1.6x that of the fused kernel in bf16 (RMS 0.0115 vs 0.0070 for
      N(0, 4) inputs). Above ``MATH_ATTENTION_MAX_BYTES`` of scores the fused kernel runs in
      float32 instead, to bound memory.

    Args:
        q: (B, T, heads, d) queries.
        k, v: (B, S, heads, d) keys and values.
        causal: query i attends only to keys 0..i (an autoregressive model; needs T == S).
        key_mask: (B, S) bool, True where a key takes part (False: padding, weight exactly 0).
            Every query must keep at least one key, else its softmax is over an empty set
            (:class:`~difflab.nn.transformer.CrossAttention` appends a null key for this).

    Returns:
        (B, T, heads, d) in the dtype of ``q``.
    """
    if causal and key_mask is not None:
        raise ValueError("attention: give causal=True or a key_mask, not both.")
    q, k, v = (a.transpose(1, 2) for a in (q, k, v))  # (B, heads, T or S, d)
    mask = None if key_mask is None else key_mask[:, None, None, :]  # (B, 1, 1, S)
    low_precision_cpu = q.device.type == "cpu" and q.dtype in (torch.bfloat16, torch.float16)
    if not low_precision_cpu:
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal)
        return out.transpose(1, 2)
    (B, heads, T, _), S = q.shape, k.shape[2]
    if B * heads * T * S * q.element_size() > MATH_ATTENTION_MAX_BYTES:
        with torch.autocast("cpu", enabled=False):
            out = F.scaled_dot_product_attention(
                q.float(), k.float(), v.float(), attn_mask=mask, is_causal=causal
            )
        return out.transpose(1, 2).to(q.dtype)
    scores = (q * q.shape[-1] ** -0.5) @ k.transpose(-1, -2)  # (B, heads, T, S)
    if causal:
        future = torch.ones(T, S, dtype=torch.bool, device=q.device).triu(1)  # (T, S)
        scores = scores.masked_fill(future, float("-inf"))
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return (scores.softmax(dim=-1) @ v).transpose(1, 2)  # (B, T, heads, d)


def packed_attention(qkv: torch.Tensor, *, causal: bool = False) -> torch.Tensor:
    """Self-attention of packed queries, keys, values: :func:`multihead_attention` on ``qkv``.

    ``causal=True`` lets token i attend only to tokens 0..i (an autoregressive model).

    Shapes: qkv (B, T, 3, heads, D/heads) -> (B, T, heads, D/heads), in the dtype of ``qkv``.
    """
    q, k, v = qkv.unbind(2)  # each (B, T, heads, D/heads)
    return multihead_attention(q, k, v, causal=causal)


class SpatialSelfAttention(nn.Module):
    """Pre-norm multi-head self-attention with a residual connection (ADM's AttentionBlock).

    The pixels become tokens (B, HW, C) and attend through :func:`packed_attention`.
    The output projection starts at zero, so the block starts as the identity.
    """

    def __init__(self, channels: int, num_heads: int = 1, num_groups: int = 32) -> None:
        super().__init__()
        if channels % num_heads:
            raise ValueError(f"attention: {channels} channels do not split into {num_heads} heads.")
        self.num_heads = num_heads
        self.norm = group_norm(channels, num_groups)
        self.qkv = nn.Linear(channels, 3 * channels)
        self.proj = nn.Linear(channels, channels)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        tokens = self.norm(x).flatten(2).transpose(1, 2)  # (B, HW, C)
        qkv = self.qkv(tokens).reshape(B, H * W, 3, self.num_heads, C // self.num_heads)
        out = self.proj(packed_attention(qkv).reshape(B, H * W, C))  # (B, HW, C)
        return x + out.transpose(1, 2).reshape(B, C, H, W)
