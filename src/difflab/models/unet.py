"""The ADM U-Net (Dhariwal & Nichol 2021, "Diffusion Models Beat GANs", sec. 3).

Residual blocks with scale-shift norm, self-attention at chosen resolutions, stride-2 down and
nearest up sampling, skip connections between mirrored levels, and an optional class embedding
whose extra last row is the reserved "no label" entry used by classifier-free guidance.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple, Protocol

import torch
from torch import nn

from difflab.diffusion.conditioning import NULL_LABEL, Conditioning
from difflab.errors import DifflabError
from difflab.nn import (
    Downsample,
    ResBlock,
    SpatialSelfAttention,
    TimestepEmbedding,
    Upsample,
    group_norm,
)


@dataclass(frozen=True)
class UNetConfig:
    """Sizes of an ADM U-Net.

    Attributes:
        image_size: input height = width, in pixels.
        in_channels / out_channels: image channels (out = in unless a model predicts more).
        base_channels: width of the first level; level i has ``base_channels * channel_mult[i]``.
        channel_mult: one multiplier per resolution level (len - 1 downsamplings).
        num_res_blocks: residual blocks per level on the way down (one more on the way up).
        attention_resolutions: feature-map sizes (pixels) at which self-attention is applied.
        num_heads: attention heads (``head_channels`` > 0 overrides it: heads = width / head_channels).
        dropout: dropout probability inside residual blocks.
        num_classes: class-conditional when > 0; the embedding gets ``num_classes + 1`` rows.
        prediction: what the network predicts: "eps", "x0" or "v".
    """

    image_size: int = 28
    in_channels: int = 1
    out_channels: int = 1
    base_channels: int = 32
    channel_mult: tuple[int, ...] = (1, 2, 2)
    num_res_blocks: int = 1
    attention_resolutions: tuple[int, ...] = (7,)
    num_heads: int = 1
    head_channels: int = 0
    dropout: float = 0.0
    num_classes: int = 0
    prediction: str = "eps"
    scale_shift_norm: bool = True


class EncoderSizes(Protocol):
    """The fields of a config that size the U-Net's downsampling half (UNetConfig has them all)."""

    image_size: int
    in_channels: int
    base_channels: int
    channel_mult: tuple[int, ...]
    num_res_blocks: int
    attention_resolutions: tuple[int, ...]
    num_heads: int
    head_channels: int
    dropout: float
    scale_shift_norm: bool


def residual_block(c: EncoderSizes, in_ch: int, out_ch: int, emb_dim: int) -> ResBlock:
    """A scale-shift residual block with the config's dropout."""
    return ResBlock(in_ch, out_ch, emb_dim, c.dropout, c.scale_shift_norm)


def attention_heads(c: EncoderSizes, channels: int) -> int:
    """Heads of an attention layer of ``channels`` width: ``channels / head_channels`` or ``num_heads``."""
    return channels // c.head_channels if c.head_channels > 0 else c.num_heads


def attention_at(c: EncoderSizes, channels: int, size: int) -> nn.Module:
    """Self-attention if ``size`` (pixels) is one of the config's attention resolutions, else identity."""
    if size not in c.attention_resolutions:
        return nn.Identity()
    return SpatialSelfAttention(channels, attention_heads(c, channels))


class EncoderLayers(NamedTuple):
    """The downsampling half of an ADM U-Net, shared by :class:`UNet` and the noisy classifier."""

    conv_in: nn.Conv2d
    down_blocks: nn.ModuleList  # each item: ModuleList([ResBlock, attention]) or Downsample
    skip_channels: list[int]  # width of every activation the down path keeps (conv_in's first)
    channels: int  # width at the bottom
    size: int  # side (pixels) at the bottom


def build_encoder(c: EncoderSizes, emb_dim: int) -> EncoderLayers:
    """conv_in, then per level ``num_res_blocks`` x (ResBlock, attention) and a stride-2 Downsample."""
    conv_in = nn.Conv2d(c.in_channels, c.base_channels, 3, padding=1)
    down_blocks = nn.ModuleList()
    skip_channels = [c.base_channels]
    ch, size = c.base_channels, c.image_size
    for level, mult in enumerate(c.channel_mult):
        for _ in range(c.num_res_blocks):
            out_ch = c.base_channels * mult
            down_blocks.append(
                nn.ModuleList(
                    [residual_block(c, ch, out_ch, emb_dim), attention_at(c, out_ch, size)]
                )
            )
            ch = out_ch
            skip_channels.append(ch)
        if level < len(c.channel_mult) - 1:
            down_blocks.append(Downsample(ch))
            skip_channels.append(ch)
            size = (size + 1) // 2
    return EncoderLayers(conv_in, down_blocks, skip_channels, ch, size)


def run_encoder(
    conv_in: nn.Module, down_blocks: nn.ModuleList, x: torch.Tensor, emb: torch.Tensor
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """x (B, C_in, H, W), emb (B, E) -> (bottom activation (B, C, h, w), every skip activation)."""
    h = conv_in(x)  # (B, C0, H, W)
    skips = [h]
    for layer in down_blocks:
        if isinstance(layer, Downsample):
            h = layer(h)  # (B, C, ceil(H/2), ceil(W/2))
        else:
            res, attn = layer
            h = attn(res(h, emb))
        skips.append(h)
    return h, skips


class UNet(nn.Module):
    """``net(x_t, t, cond) -> (B, out_channels, H, W)``; x_t (B, in_channels, H, W), t (B,)."""

    def __init__(self, config: UNetConfig) -> None:
        super().__init__()
        self.config = config
        self.prediction = config.prediction
        c = config
        emb_dim = 4 * c.base_channels
        self.time_embed = TimestepEmbedding(c.base_channels, emb_dim)
        # rows 0..num_classes-1 are classes, row num_classes is "no label"
        self.label_embed = nn.Embedding(c.num_classes + 1, emb_dim) if c.num_classes > 0 else None
        encoder = build_encoder(c, emb_dim)
        self.conv_in = encoder.conv_in
        self.down_blocks = encoder.down_blocks
        skip_channels, ch, size = list(encoder.skip_channels), encoder.channels, encoder.size
        self.mid_block1 = residual_block(c, ch, ch, emb_dim)
        self.mid_attention = SpatialSelfAttention(ch, attention_heads(c, ch))
        self.mid_block2 = residual_block(c, ch, ch, emb_dim)
        self.up_blocks = (
            nn.ModuleList()
        )  # each item: ModuleList([ResBlock, attention, Upsample | Identity])
        for level, mult in reversed(list(enumerate(c.channel_mult))):
            for i in range(c.num_res_blocks + 1):
                out_ch = c.base_channels * mult
                upsample = (
                    Upsample(out_ch) if level > 0 and i == c.num_res_blocks else nn.Identity()
                )
                self.up_blocks.append(
                    nn.ModuleList(
                        [
                            residual_block(c, ch + skip_channels.pop(), out_ch, emb_dim),
                            attention_at(c, out_ch, size),
                            upsample,
                        ]
                    )
                )
                ch = out_ch
            size = size * 2 if level > 0 else size  # nominal; Upsample uses the skip's real size
        self.norm_out = group_norm(ch)
        self.conv_out = nn.Conv2d(ch, c.out_channels, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    def embed(self, t: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        """Timestep (+ class) embedding, (B, 4 * base_channels)."""
        emb = self.time_embed(t)
        if self.label_embed is not None:
            labels = cond.labels
            if labels is None:
                labels = torch.full_like(t, NULL_LABEL)
            if bool(((labels < NULL_LABEL) | (labels >= self.config.num_classes)).any()):
                raise DifflabError(
                    f"class labels must lie in 0..{self.config.num_classes - 1} (or {NULL_LABEL} for none)."
                )
            rows = torch.where(labels == NULL_LABEL, self.config.num_classes, labels)
            emb = emb + self.label_embed(rows)
        return emb

    def forward(
        self, x_t: torch.Tensor, t: torch.Tensor, cond: Conditioning | None = None
    ) -> torch.Tensor:
        emb = self.embed(t, cond if cond is not None else Conditioning())  # (B, E)
        h, skips = run_encoder(self.conv_in, self.down_blocks, x_t, emb)  # (B, C, h, w)
        h = self.mid_block2(self.mid_attention(self.mid_block1(h, emb)), emb)
        for res, attn, upsample in self.up_blocks:
            h = attn(res(torch.cat([h, skips.pop()], dim=1), emb))  # (B, C, H', W')
            if isinstance(upsample, Upsample):
                h = upsample(h, skips[-1].shape[-2:])
        return self.conv_out(torch.nn.functional.silu(self.norm_out(h)))  # (B, out_channels, H, W)
