"""Self-attention over the pixels of a feature map, through ``scaled_dot_product_attention``."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from difflab.nn.blocks import group_norm


def fused_attention(qkv: torch.Tensor, *, causal: bool = False) -> torch.Tensor:
    """Softmax attention of packed queries, keys and values through ``scaled_dot_product_attention``.

    q, k and v are (B, heads, T, D/heads) views of ``qkv`` whose head dimension is contiguous, the
    layout PyTorch's fused CPU kernel (``_scaled_dot_product_flash_attention_for_cpu``) takes.
    On the CPU that kernel's forward is as fast in float32 as in bf16, and its bf16 backward is
    several times slower (PyTorch 2.13 on this project's CPU, batch 32, 4 heads: 2.3x for 49
    tokens of head width 64, 10x for 16 tokens of width 32), so there a bf16 input (bf16
    autocast) is attended in float32 and the result cast back.

    ``causal=True`` lets token i attend only to tokens 0..i (an autoregressive model).

    Shapes: qkv (B, T, 3, heads, D/heads) -> (B, T, heads, D/heads), in the dtype of ``qkv``.
    """
    if qkv.device.type == "cpu" and qkv.dtype != torch.float32:
        q, k, v = qkv.float().permute(2, 0, 3, 1, 4).unbind(0)  # each (B, heads, T, D/heads)
        with torch.autocast("cpu", enabled=False):
            out = F.scaled_dot_product_attention(
                q, k, v, is_causal=causal
            )  # (B, heads, T, D/heads)
        return out.transpose(1, 2).to(qkv.dtype)
    q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, heads, T, D/heads)
    return F.scaled_dot_product_attention(q, k, v, is_causal=causal).transpose(1, 2)


class SpatialSelfAttention(nn.Module):
    """Pre-norm multi-head self-attention with a residual connection (ADM's AttentionBlock).

    The pixels become tokens (B, HW, C) so that q, k and v have a contiguous head dimension: that
    is what lets PyTorch pick its fused (flash) CPU kernel instead of the unfused math fallback.
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
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(
            0
        )  # each (B, heads, HW, C/heads), last dim contiguous
        out = F.scaled_dot_product_attention(q, k, v)  # (B, heads, HW, C/heads)
        out = self.proj(out.transpose(1, 2).reshape(B, H * W, C))  # (B, HW, C)
        return x + out.transpose(1, 2).reshape(B, C, H, W)
