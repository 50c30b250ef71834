"""The ADM U-Net (Dhariwal & Nichol 2021, "Diffusion Models Beat GANs", sec. 3).

Residual blocks with scale-shift norm, self-attention at chosen resolutions, stride-2 down and
nearest up sampling, skip connections between mirrored levels, and an optional class embedding
whose extra last row is the reserved "no label" entry used by classifier-free guidance.
"""

from __future__ import annotations

from dataclasses import dataclass

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

        def block(in_ch: int, out_ch: int) -> ResBlock:
            return ResBlock(in_ch, out_ch, emb_dim, c.dropout, c.scale_shift_norm)

        def attention(ch: int, size: int) -> nn.Module:
            if size not in c.attention_resolutions:
                return nn.Identity()
            heads = ch // c.head_channels if c.head_channels > 0 else c.num_heads
            return SpatialSelfAttention(ch, heads)

        self.conv_in = nn.Conv2d(c.in_channels, c.base_channels, 3, padding=1)
        self.down_blocks = (
            nn.ModuleList()
        )  # each item: ModuleList([ResBlock, attention]) or Downsample
        skip_channels = [c.base_channels]
        ch, size = c.base_channels, c.image_size
        for level, mult in enumerate(c.channel_mult):
            for _ in range(c.num_res_blocks):
                self.down_blocks.append(
                    nn.ModuleList(
                        [block(ch, c.base_channels * mult), attention(c.base_channels * mult, size)]
                    )
                )
                ch = c.base_channels * mult
                skip_channels.append(ch)
            if level < len(c.channel_mult) - 1:
                self.down_blocks.append(Downsample(ch))
                skip_channels.append(ch)
                size = (size + 1) // 2
        self.mid_block1 = block(ch, ch)
        self.mid_attention = SpatialSelfAttention(
            ch, ch // c.head_channels if c.head_channels > 0 else c.num_heads
        )
        self.mid_block2 = block(ch, ch)
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
                        [block(ch + skip_channels.pop(), out_ch), attention(out_ch, size), upsample]
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
        h = self.conv_in(x_t)  # (B, C0, H, W)
        skips = [h]
        for layer in self.down_blocks:
            if isinstance(layer, Downsample):
                h = layer(h)  # (B, C, ceil(H/2), ceil(W/2))
            else:
                res, attn = layer
                h = attn(res(h, emb))
            skips.append(h)
        h = self.mid_block2(self.mid_attention(self.mid_block1(h, emb)), emb)
        for res, attn, upsample in self.up_blocks:
            h = attn(res(torch.cat([h, skips.pop()], dim=1), emb))  # (B, C, H', W')
            if isinstance(upsample, Upsample):
                h = upsample(h, skips[-1].shape[-2:])
        return self.conv_out(torch.nn.functional.silu(self.norm_out(h)))  # (B, out_channels, H, W)
