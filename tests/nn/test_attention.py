"""packed_attention: the same softmax attention on every kernel path it picks."""

from __future__ import annotations

import pytest
import torch

from difflab.nn import attention
from difflab.nn.attention import packed_attention

FLASH_KERNEL = "aten::_scaled_dot_product_flash_attention_for_cpu"


def reference(qkv: torch.Tensor, causal: bool) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) v in float64 with einsum; qkv (B, T, 3, heads, d)."""
    q, k, v = qkv.double().unbind(2)  # each (B, T, heads, d)
    scores = torch.einsum("bthd,bshd->bhts", q, k) / q.shape[-1] ** 0.5
    if causal:
        T = qkv.shape[1]
        scores = scores.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf"))
    return torch.einsum("bhts,bshd->bthd", scores.softmax(-1), v)


def kernels(fn) -> dict[str, int]:
    with torch.profiler.profile() as profile:
        fn()
    return {event.key: event.count for event in profile.key_averages()}


@pytest.mark.parametrize("causal", [False, True])
def test_float32_and_bf16_match_a_float64_reference(causal):
    torch.manual_seed(0)
    qkv = torch.randn(3, 7, 3, 2, 8)
    expected = reference(qkv, causal)
    full = packed_attention(qkv, causal=causal)
    assert full.dtype == torch.float32
    assert torch.allclose(full.double(), expected, atol=1e-5)
    low = packed_attention(qkv.bfloat16(), causal=causal)
    assert low.dtype == torch.bfloat16
    assert (low.double() - expected).abs().max() < 0.05


def test_bf16_gradients_follow_float32():
    torch.manual_seed(1)
    qkv = torch.randn(2, 9, 3, 2, 8, requires_grad=True)
    target = torch.randn(2, 9, 2, 8)
    (packed_attention(qkv) * target).sum().backward()
    full_grad = qkv.grad.clone()
    qkv.grad = None
    (packed_attention(qkv.bfloat16()).float() * target).sum().backward()
    error = (qkv.grad - full_grad).norm() / full_grad.norm()
    assert error < 0.03


def test_bf16_on_the_cpu_takes_the_matmul_path_and_float32_the_fused_kernel():
    qkv = torch.randn(2, 5, 3, 2, 4)
    assert kernels(lambda: packed_attention(qkv)).get(FLASH_KERNEL) == 1
    low = kernels(lambda: packed_attention(qkv.bfloat16()))
    assert FLASH_KERNEL not in low and low.get("aten::_softmax") == 1


def test_large_score_matrices_fall_back_to_the_fused_kernel_in_float32(monkeypatch):
    torch.manual_seed(2)
    qkv = torch.randn(2, 6, 3, 2, 4)
    monkeypatch.setattr(attention, "MATH_ATTENTION_MAX_BYTES", 2 * 2 * 6 * 6 * 2 - 1)
    calls = kernels(lambda: packed_attention(qkv.bfloat16(), causal=True))
    assert calls.get(FLASH_KERNEL) == 1 and "aten::_softmax" not in calls
    out = packed_attention(qkv.bfloat16(), causal=True)
    assert out.dtype == torch.bfloat16
    assert (out.double() - reference(qkv, causal=True)).abs().max() < 0.05
