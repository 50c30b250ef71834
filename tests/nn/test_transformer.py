"""Latent Diffusion's transformer block: identity at init, masked cross-attention, the null token."""

from __future__ import annotations

import pytest
import torch

from difflab.diffusion import Conditioning
from difflab.nn import CrossAttention, SpatialTransformer, multihead_attention
from difflab.nn import attention as attention_module

CHANNELS, CONTEXT, HEADS = 8, 6, 2


def block(depth: int = 1) -> SpatialTransformer:
    """A block with random weights everywhere (its zero-initialised parts included)."""
    torch.manual_seed(0)
    net = SpatialTransformer(CHANNELS, CONTEXT, HEADS, depth)
    with torch.no_grad():
        for parameter in net.parameters():
            if not parameter.any():
                parameter.normal_(std=0.3)
    return net.eval()


def inputs(batch: int = 3, length: int = 4, seed: int = 1):
    """x (B, C, 3, 5), tokens (B, L, D), mask (B, L) with 4, 2 and 0 (a dropped caption) real."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, CHANNELS, 3, 5, generator=generator)
    tokens = torch.randn(batch, length, CONTEXT, generator=generator)
    real = torch.tensor([length, 2, 0, 1][:batch])
    mask = torch.arange(length)[None, :] < real[:, None]  # (B, L)
    return x, tokens, mask


def reference_attention(q, k, v, key_mask):
    """softmax(q k^T / sqrt(d)) v in float64; q (B, T, h, d), k, v (B, S, h, d), key_mask (B, S)."""
    q, k, v = q.double(), k.double(), v.double()
    scores = torch.einsum("bthd,bshd->bhts", q, k) / q.shape[-1] ** 0.5
    scores = scores.masked_fill(~key_mask[:, None, None, :], float("-inf"))
    return torch.einsum("bhts,bshd->bthd", scores.softmax(-1), v)


def split_heads(a: torch.Tensor) -> torch.Tensor:
    """(B, T, C) -> (B, T, heads, C/heads)."""
    return a.reshape(*a.shape[:2], HEADS, CHANNELS // HEADS)


def masked_qkv(seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    q = torch.randn(3, 7, 2, 4, generator=generator)
    k, v = torch.randn(2, 3, 5, 2, 4, generator=generator)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 0, 1, 0, 0], [0, 0, 0, 0, 1]], dtype=torch.bool)
    return q, k, v, mask


def test_masked_attention_matches_a_float64_reference_on_every_kernel_path(monkeypatch):
    q, k, v, mask = masked_qkv()
    expected = reference_attention(q, k, v, mask)
    full = multihead_attention(q, k, v, key_mask=mask)  # fused kernel
    assert full.dtype == torch.float32 and torch.allclose(full.double(), expected, atol=1e-5)
    low = multihead_attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), key_mask=mask)  # matmuls
    assert low.dtype == torch.bfloat16 and (low.double() - expected).abs().max() < 0.05
    monkeypatch.setattr(attention_module, "MATH_ATTENTION_MAX_BYTES", 0)  # fused in float32
    capped = multihead_attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), key_mask=mask)
    assert capped.dtype == torch.bfloat16 and (capped.double() - expected).abs().max() < 0.05
    with pytest.raises(ValueError, match="not both"):
        multihead_attention(q, q, q, causal=True, key_mask=mask[:, :1].expand(3, 7))


def test_the_block_starts_as_the_identity():
    x, tokens, mask = inputs()
    assert torch.equal(SpatialTransformer(CHANNELS, CONTEXT, HEADS, depth=2)(x, tokens, mask), x)


def test_cross_attention_reads_the_tokens_and_ignores_padding():
    net = block()
    x, tokens, mask = inputs()
    out = net(x, tokens, mask)
    changed_real = tokens.clone()
    changed_real[1, 0] += 1.0  # sample 1's first token is real
    moved = net(x, changed_real, mask)
    assert not torch.allclose(moved[1], out[1], atol=1e-4)
    assert torch.equal(moved[[0, 2]], out[[0, 2]])
    changed_padding = tokens.clone()
    changed_padding[1, 2:] = torch.randn(2, CONTEXT) * 100  # sample 1's padded tokens
    changed_padding[2] = torch.randn(4, CONTEXT)  # sample 2 has no real token
    assert torch.allclose(net(x, changed_padding, mask), out, atol=1e-6)


def test_a_dropped_caption_attends_to_the_null_token_only():
    """All-False mask = an empty sequence = the null value for every query: finite, and the same
    whatever the (ignored) tokens are."""
    net = block()
    x, tokens, _ = inputs(batch=2)
    none = torch.zeros(2, 4, dtype=torch.bool)
    dropped = net(x, tokens, none)
    assert torch.isfinite(dropped).all()
    assert torch.allclose(dropped, net(x, torch.randn(2, 4, CONTEXT), none), atol=1e-6)
    empty = net(x, torch.zeros(2, 0, CONTEXT), torch.zeros(2, 0, dtype=torch.bool))
    assert torch.allclose(dropped, empty, atol=1e-6)
    attention = net.blocks[0].cross_attention
    h = torch.randn(2, 15, CHANNELS)
    null_path = attention.out(attention.null_value).expand(2, 15, CHANNELS)
    assert torch.allclose(attention(h, tokens, none), null_path, atol=1e-6)


def test_cross_attention_is_the_papers_equation_with_a_null_token():
    """softmax(Q K^T / sqrt(d)) V, Q = W_Q φ(z), K = W_K τ(y), V = W_V τ(y), null row appended."""
    attention = block().blocks[0].cross_attention
    assert isinstance(attention, CrossAttention)
    _, tokens, mask = inputs()
    h = torch.randn(3, 15, CHANNELS)
    k = torch.cat([attention.to_k(tokens), attention.null_key.expand(3, 1, -1)], 1)  # (B, L+1, C)
    v = torch.cat([attention.to_v(tokens), attention.null_value.expand(3, 1, -1)], 1)
    keep = torch.cat([mask, torch.ones(3, 1, dtype=torch.bool)], 1)  # (B, L+1)
    heads = reference_attention(*(split_heads(a) for a in (attention.to_q(h), k, v)), keep)
    expected = attention.out(heads.reshape(3, 15, CHANNELS).float())
    assert torch.allclose(attention(h, tokens, mask), expected, atol=1e-5)


def test_each_sample_is_independent_of_the_batch_and_of_padding():
    """Captions of unequal length padded by Conditioning.cat give each sample its own output."""
    net = block(depth=2)
    x, tokens, _ = inputs(batch=2)
    short = Conditioning(tokens=tokens[:1, :2], token_mask=torch.ones(1, 2, dtype=torch.bool))
    long = Conditioning(tokens=tokens[1:], token_mask=torch.ones(1, 4, dtype=torch.bool))
    both = Conditioning.cat([short, long])  # the short caption padded to L = 4
    batched = net(x, both.tokens, both.token_mask)
    assert torch.allclose(batched[:1], net(x[:1], short.tokens, short.token_mask), atol=1e-5)
    assert torch.allclose(batched[1:], net(x[1:], long.tokens, long.token_mask), atol=1e-5)


def test_float64_runs_and_agrees_with_float32():
    net = block()
    x, tokens, mask = inputs()
    single = net(x, tokens, mask)
    double = net.double()(x.double(), tokens.double(), mask)
    assert double.dtype == torch.float64 and torch.allclose(double.float(), single, atol=1e-5)


def test_bf16_autocast_runs_stays_close_and_backpropagates():
    net = block()
    x, tokens, mask = inputs()
    reference = net(x, tokens, mask)
    x.requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = net(x, tokens, mask)
    low.float().square().sum().backward()
    assert torch.isfinite(low).all()
    assert (low.float() - reference).abs().max() < 0.05 * reference.abs().max()
    grads = [x.grad, *(p.grad for p in net.parameters())]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


def test_width_and_heads_are_checked():
    with pytest.raises(ValueError, match="heads"):
        SpatialTransformer(CHANNELS, CONTEXT, num_heads=3)
    with pytest.raises(ValueError, match="context_dim"):
        SpatialTransformer(CHANNELS, 0)
