"""Adaptive layer norm with a gate: the conditioning of DiT blocks (Peebles & Xie 2023, sec. 3.2).

adaLN regresses a shift and a scale of each LayerNorm from the conditioning vector ``c`` instead
of learning them per channel; adaLN-Zero also regresses a gate ``alpha`` that multiplies each
residual branch. Initialised to zero, the gates make every block start as the identity.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``x * (1 + scale) + shift`` per sample, in one fused kernel.

    Shapes: x (B, N, D); shift, scale (B, D) -> (B, N, D).
    """
    return torch.addcmul(shift.unsqueeze(1), x, 1 + scale.unsqueeze(1))


def gated_residual(x: torch.Tensor, gate: torch.Tensor, branch: torch.Tensor) -> torch.Tensor:
    """``x + gate * branch`` per sample (adaLN-Zero's ``alpha``), in one fused kernel.

    Shapes: x, branch (B, N, D); gate (B, D) -> (B, N, D). With ``gate = 0`` this returns ``x``
    exactly.
    """
    return torch.addcmul(x, gate.unsqueeze(1), branch)


def layer_norm(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """LayerNorm over the last dimension without an affine part (adaLN supplies it)."""
    return F.layer_norm(x, x.shape[-1:], eps=eps)


class AdaLNModulation(nn.Module):
    """``SiLU -> Linear``: the conditioning vector regressed to ``chunks`` vectors of width ``dim``.

    Shapes: c (B, cond_dim) -> tuple of ``chunks`` tensors (B, dim).

    The model that owns it initialises the linear layer to zero (adaLN-Zero); see
    :meth:`difflab.models.dit.DiT.init_weights`.
    """

    def __init__(self, cond_dim: int, dim: int, chunks: int) -> None:
        super().__init__()
        self.chunks = chunks
        self.linear = nn.Linear(cond_dim, chunks * dim)

    def forward(self, c: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.linear(F.silu(c)).chunk(self.chunks, dim=1)
