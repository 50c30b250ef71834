"""FLOPs of a network's forward pass, counted by ``torch.utils.flop_counter.FlopCounterMode``.

Conventions, stated once: a multiply-add counts as 2 FLOPs (FlopCounterMode's rule). The DiT
paper (Peebles & Xie 2023, Table 4) counts a multiply-add as one, so its "Gflops" are half of
ours: DiT-XL/2 is 118.6 Gflops there and about 237 GFLOPs here. Only matmuls, convolutions and
attention are counted; element-wise work, normalisation and embedding lookups count as 0.

PyTorch has no FLOP formula for its fused CPU attention kernel
(``_scaled_dot_product_flash_attention_for_cpu``), so :func:`flop_counter` adds one; without it
every attention layer run on the CPU would count as 0 FLOPs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

from difflab.diffusion.conditioning import Conditioning
from difflab.models.registry import build_model

aten = torch.ops.aten


def _cpu_attention_flops(
    query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs
) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def _cpu_attention_backward_flops(
    grad_out_shape, query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs
) -> int:
    return sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)


CPU_ATTENTION_FLOPS: dict[Any, Callable[..., int]] = {
    aten._scaled_dot_product_flash_attention_for_cpu: _cpu_attention_flops,
    aten._scaled_dot_product_flash_attention_for_cpu_backward: _cpu_attention_backward_flops,
}


def flop_counter() -> FlopCounterMode:
    """A silent ``FlopCounterMode`` that also counts PyTorch's fused CPU attention kernels."""
    return FlopCounterMode(display=False, custom_mapping=CPU_ATTENTION_FLOPS)


def count_flops(fn: Callable[[], Any]) -> int:
    """FLOPs of one call of ``fn`` (forward and, if ``fn`` runs it, backward)."""
    with flop_counter() as counter:
        fn()
    return int(counter.get_total_flops())


CONTEXT_TOKENS = 16
"""Token sequence length a cross-attending network is counted with (all tokens real)."""


def forward_flops(arch: str, config: Any, batch_size: int = 1) -> int:
    """FLOPs of one forward pass of architecture ``arch`` with ``config`` on ``batch_size`` images.

    The network is built on PyTorch's "meta" device: no memory is allocated and nothing is
    computed, so even DiT-XL/2 is counted in a fraction of a second. The count is taken on the
    unconditional twin of the config (a class embedding is a lookup: 0 FLOPs either way); a
    network that cross-attends to tokens (``context_dim > 0``) reads :data:`CONTEXT_TOKENS` of them.

    Args:
        arch: an entry of :data:`difflab.models.ARCHITECTURES`.
        config: that architecture's config dataclass (needs ``image_size`` and ``in_channels``).
    """
    if hasattr(config, "num_classes"):
        config = dataclasses.replace(config, num_classes=0)
    with torch.device("meta"):
        net = build_model(arch, config).eval()
        x_t = torch.empty(batch_size, config.in_channels, config.image_size, config.image_size)
        t = torch.zeros(batch_size, dtype=torch.long)
        cond = Conditioning()
        if getattr(config, "context_dim", 0):
            cond = Conditioning(
                tokens=torch.empty(batch_size, CONTEXT_TOKENS, config.context_dim),
                token_mask=torch.ones(batch_size, CONTEXT_TOKENS, dtype=torch.bool),
            )
    with torch.no_grad():
        return count_flops(lambda: net(x_t, t, cond))


def forward_gflops(arch: str, config: Any) -> float:
    """GFLOPs (1e9 FLOPs, a multiply-add = 2) of one forward pass on one image."""
    return forward_flops(arch, config) / 1e9
