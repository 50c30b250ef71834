"""The second stage of VQ-VAE: an autoregressive prior p(c_1, ..., c_L) over the code grid.

The paper fits a gated PixelCNN over the latent grid. difflab uses a small causal transformer
instead (as VQ-VAE-2's PixelSNAIL and VQGAN moved to attention), for three reasons: a 7x7 or 14x14
grid is only 49-196 tokens, so full causal attention is cheap; every code sees *all* codes before
it in raster order, with no blind spot (the PixelCNN needs two stacks to avoid one); and causality
is a single mask, so it is easy to test (changing a later code never changes an earlier logit).

The codes of an image are read in raster order, c_1 .. c_L (L = h * w). The input sequence is
``[start, c_1, ..., c_{L-1}]`` and position i predicts c_i, so that

    log p(c) = Σ_i log p(c_i | c_<i, y),

with the start token the class embedding of y (one extra row, :data:`NULL_LABEL` mapped to it, for
"no label": the unconditional model, and label dropout for classifier-free use) or a learned start
vector when the prior is unconditional. Blocks are pre-LayerNorm causal self-attention and a GELU
MLP, attention through :func:`difflab.nn.packed_attention`.

Negative log-likelihood is reported in bits: per code (``log2 K`` for a uniform prior) and per
image dimension (total bits of the grid / (C * H * W) of the image it decodes to).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from difflab.config import dataclass_from_dict
from difflab.diffusion.conditioning import NULL_LABEL
from difflab.errors import DifflabError
from difflab.nn import packed_attention

PRIOR_KIND = "vqvae_prior"
PRIOR_ARCH = "code_transformer"


@dataclass
class CodePriorConfig:
    """Sizes of the causal transformer prior over a ``grid_size`` x ``grid_size`` code grid."""

    num_codes: int = 512
    grid_size: int = 7
    width: int = 256
    depth: int = 6
    num_heads: int = 8
    mlp_ratio: float = 4.0
    num_classes: int = 0
    dropout: float = 0.0

    @property
    def length(self) -> int:
        """Number of codes L of one image."""
        return self.grid_size * self.grid_size

    def check(self) -> None:
        for name in ("num_codes", "grid_size", "width", "depth", "num_heads"):
            if getattr(self, name) < 1:
                raise DifflabError(f"model.{name} must be at least 1, got {getattr(self, name)}.")
        if self.width % self.num_heads:
            raise DifflabError(
                f"model.width {self.width} must be divisible by model.num_heads {self.num_heads}."
            )
        if self.num_classes < 0 or not 0 <= self.dropout < 1:
            raise DifflabError("model.num_classes must be >= 0 and model.dropout in [0, 1).")


PRIOR_PRESETS: dict[str, dict[str, Any]] = {
    "prior-tiny": dict(width=32, depth=2, num_heads=2),  # for tests
    "prior-mnist": dict(width=128, depth=4, num_heads=4),
}


def prior_config(preset: str, **overrides: Any) -> CodePriorConfig:
    """The :class:`CodePriorConfig` of ``preset`` with ``overrides`` applied."""
    if preset not in PRIOR_PRESETS:
        raise DifflabError(
            f"unknown prior preset {preset!r}; choose one of {', '.join(PRIOR_PRESETS)}."
        )
    config = dataclass_from_dict(CodePriorConfig, {**PRIOR_PRESETS[preset], **overrides}, "model")
    config.check()
    return config


class CausalBlock(nn.Module):
    """Pre-LN causal self-attention and MLP. Shapes: (B, T, D) -> (B, T, D)."""

    def __init__(self, width: int, num_heads: int, mlp_ratio: float, dropout: float) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.norm1 = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.norm2 = nn.LayerNorm(width)
        hidden = int(width * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, width))
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, D = x.shape
        qkv = self.qkv(self.norm1(x)).view(B, T, 3, self.num_heads, D // self.num_heads)
        x = x + self.dropout(self.proj(packed_attention(qkv, causal=True).reshape(B, T, D)))
        return x + self.dropout(self.mlp(self.norm2(x)))


class CodePrior(nn.Module):
    """p(c | y) over code grids; ``forward`` gives the logits of every position at once."""

    def __init__(self, config: CodePriorConfig) -> None:
        super().__init__()
        config.check()
        self.config = config
        width = config.width
        self.code_embedding = nn.Embedding(config.num_codes, width)
        # row num_classes is "no label"; an unconditional prior has only that row (its start token)
        self.start_embedding = nn.Embedding(config.num_classes + 1, width)
        self.position_embedding = nn.Parameter(torch.zeros(config.length, width))  # (L, D)
        self.blocks = nn.ModuleList(
            CausalBlock(width, config.num_heads, config.mlp_ratio, config.dropout)
            for _ in range(config.depth)
        )
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, config.num_codes)
        nn.init.normal_(self.position_embedding, std=0.02)
        nn.init.normal_(self.code_embedding.weight, std=0.02)
        nn.init.normal_(self.start_embedding.weight, std=0.02)

    def _start_rows(
        self, labels: torch.Tensor | None, batch: int, device: torch.device
    ) -> torch.Tensor:
        null = self.config.num_classes
        if labels is None:
            return torch.full((batch,), null, dtype=torch.long, device=device)
        labels = labels.to(device=device, dtype=torch.long)
        if labels.shape != (batch,):
            raise DifflabError(f"expected {batch} labels, got shape {tuple(labels.shape)}.")
        bad = (labels != NULL_LABEL) & ((labels < 0) | (labels >= null))
        if bad.any():
            raise DifflabError(
                f"label {int(labels[bad][0])} is out of range for a prior with {null} classes "
                f"(0..{null - 1}, or {NULL_LABEL} for none)."
            )
        return torch.where(labels == NULL_LABEL, null, labels)

    def forward(self, codes: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Logits of p(c_i | c_<i, y) for every position.

        Args:
            codes: (B, T) int64 codes in raster order, T <= L (the first T codes of the grid).
            labels: (B,) int64 classes, :data:`NULL_LABEL` for none; None: all unconditional.

        Returns:
            (B, T, K) logits; position i depends only on ``codes[:, :i]`` and the label.
        """
        batch, length = codes.shape
        if length > self.config.length:
            raise DifflabError(f"a prior over {self.config.length} codes got {length}.")
        start = self.start_embedding(self._start_rows(labels, batch, codes.device))  # (B, D)
        tokens = torch.cat([start[:, None], self.code_embedding(codes[:, :-1])], 1)  # (B, T, D)
        x = tokens + self.position_embedding[:length]
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x))  # (B, T, K)

    @torch.no_grad()
    def sample(
        self,
        count: int,
        labels: torch.Tensor | None = None,
        *,
        temperature: float = 1.0,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Draw ``count`` code grids, one code at a time in raster order -> (count, h, w) int64."""
        if not temperature > 0:
            raise DifflabError(f"the sampling temperature must be > 0, got {temperature}.")
        device = self.position_embedding.device
        codes = torch.zeros(count, 1, dtype=torch.long, device=device)  # a placeholder slot
        for position in range(self.config.length):
            logits = self(codes, labels)[:, position].float() / temperature  # (count, K)
            probs = torch.softmax(logits, dim=-1).cpu()  # drawn on the CPU: any device, same codes
            codes[:, position] = (
                torch.multinomial(probs, 1, generator=generator).squeeze(1).to(device)
            )
            if position + 1 < self.config.length:
                codes = torch.cat([codes, codes.new_zeros(count, 1)], 1)
        side = self.config.grid_size
        return codes.view(count, side, side)


def code_nll(
    prior: CodePrior, codes: torch.Tensor, labels: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean negative log-likelihood in nats per code of grids ``codes`` (B, h, w) -> scalar."""
    flat = codes.flatten(1)  # (B, L)
    logits = prior(flat, labels)  # (B, L, K)
    return F.cross_entropy(logits.float().flatten(0, 1), flat.flatten())


def bits_per_code(nats_per_code: float) -> float:
    """nats -> bits (÷ ln 2)."""
    return nats_per_code / math.log(2)


def bits_per_image_dim(nats_per_code: float, codes_per_image: int, image_dims: int) -> float:
    """Bits of a whole code grid divided by the number of image dimensions C * H * W it encodes."""
    return bits_per_code(nats_per_code) * codes_per_image / image_dims
