"""The ADM U-Net (Dhariwal & Nichol 2021, "Diffusion Models Beat GANs", sec. 3).

Residual blocks with scale-shift norm, self-attention at chosen resolutions, stride-2 down and
nearest up sampling, skip connections between mirrored levels, and an optional class embedding
whose extra last row is the reserved "no label" entry used by classifier-free guidance.

The options of the paper's architecture ablation (its Table 1) are config fields:
``resblock_updown`` (BigGAN-style residual blocks that resample inside the block, in place of the
stride-2 convolution and the nearest-neighbour upsampling with its convolution),
``rescale_residual`` (every residual block's output times 1/sqrt(2)), ``head_channels`` (a fixed
width per attention head: 64 in the paper), several ``attention_resolutions`` (32, 16, 8), and
``scale_shift_norm`` (AdaGN, or adding the embedding). The ``adm-*`` presets of
:mod:`difflab.models.registry` are the paper's choices; the defaults build the earlier network.

With ``context_dim > 0`` the attention at those resolutions (and in the middle) becomes Latent
Diffusion's transformer block (Rombach et al. 2022, sec. 3.3): self-attention, cross-attention to
the token sequence ``cond.tokens`` (B, L, context_dim) under ``cond.token_mask``, feed-forward.

Imagen's Efficient U-Net (Saharia et al. 2022, appendix B.1, Figs. A.27-A.30) is two more options:

* ``num_res_blocks`` per level, a tuple with one count n_i per ``channel_mult`` entry (the paper
  moves parameters to low resolution, e.g. 2, 4, 8, 8 blocks per level in its 64 -> 256 U-Net).
  Level i has n_i blocks on the way down and n_i + 1 on the way up; an int means n_i = that int.
* ``resample_first`` (the paper's reversed order): a typical U-Net downsamples after a block's
  convolutions and upsamples before them; the paper reverses both, for a faster forward pass.
  Each level is a DBlock (Fig. A.28) whose stride-2 convolution comes first and each up level a
  UBlock (Fig. A.29) whose upsampling comes last, the first level included (Fig. A.30: every
  DBlock strides 2; only the first convolution and the output layer run at the image size S)::

      standard  (L levels):  conv_in@S; level i: n_i x res@S/2^i, down (i < L-1); middle@S/2^(L-1)
                             up level i: (n_i + 1) x res@S/2^i, up (i > 0); conv_out@S
      resample_first:        conv_in@S; level i: down, n_i x res@S/2^(i+1);    middle@S/2^L
                             up level i: (n_i + 1) x res@S/2^(i+1), up (all i); conv_out@S

  (Here the last upsampler's 3x3 convolution runs at S too, after its nearest-neighbour step.)
  So every residual block of level i runs at half the side (a quarter of the FLOPs) and
  ``attention_resolutions`` name those smaller sides. Skip connections stay ADM's, one per
  encoder activation (each level's downsampled input, then each block's output), popped by the
  n_i + 1 up blocks of the same level at the same side; conv_in's output is not a skip (the
  paper's skips join DBlocks to UBlocks only), where the standard layout keeps it. (The paper
  concatenates one skip per level; here every up block reads one, as in ADM.)
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, NamedTuple, Protocol

import torch
from torch import nn

from difflab.diffusion.conditioning import NULL_LABEL, Conditioning
from difflab.errors import DifflabError
from difflab.models.imagen_inputs import (
    NoiseLevelEmbedding,
    PooledTextEmbedding,
    super_resolution_input,
)
from difflab.nn import (
    Downsample,
    ResBlock,
    SpatialSelfAttention,
    SpatialTransformer,
    TimestepEmbedding,
    Upsample,
    group_norm,
)

if TYPE_CHECKING:
    from difflab.models.control_residuals import ControlResiduals


@dataclass(frozen=True)
class UNetConfig:
    """Sizes of an ADM U-Net.

    Attributes:
        image_size: input height = width, in pixels.
        in_channels / out_channels: image channels (out = in unless a model predicts more).
        base_channels: width of the first level; level i has ``base_channels * channel_mult[i]``.
        channel_mult: one multiplier per resolution level (len - 1 downsamplings).
        num_res_blocks: residual blocks per level on the way down (one more on the way up): one
            count for every level, or a tuple of one count >= 1 per ``channel_mult`` entry
            (Imagen's Efficient U-Net: more blocks at low resolution).
        attention_resolutions: feature-map sizes (pixels) at which self-attention is applied
            (transformer blocks with cross-attention when ``context_dim > 0``).
        num_heads: attention heads (``head_channels`` > 0 overrides it: heads = width / head_channels).
        dropout: dropout probability inside residual blocks.
        num_classes: class-conditional when > 0; the embedding gets ``num_classes + 1`` rows.
        prediction: what the network predicts: "eps", "x0" or "v".
        scale_shift_norm: residual blocks scale and shift their norm by the embedding (ADM) rather
            than add it.
        context_dim: D, the width of the conditioning tokens ``cond.tokens`` (B, L, D); 0 = no
            cross-attention (the plain ADM U-Net, as every checkpoint saved before this field).
        transformer_depth: transformer blocks per attention site when ``context_dim > 0``.
        pooled_text: Imagen: add a projection of the mean of ``cond.tokens`` to the timestep
            embedding (a learned null vector for a prompt without tokens); needs context_dim > 0.
        skip_scale: factor on every skip connection into the up path (Imagen's Efficient U-Net:
            1/sqrt(2)); 1 = ADM.
        low_res_channels: Imagen super-resolution: channels of ``cond.low_res``, upsampled to
            image_size and concatenated to x_t, with ``cond.noise_level`` embedded and added to the
            timestep embedding; 0 = not a super-resolution stage.
        learn_sigma: also output Improved DDPM's learned-variance values (out_channels more output
            channels, read with ``with_variance=True``; see :mod:`difflab.diffusion.vlb`); False
            builds exactly the network of every checkpoint saved before this field.
        resblock_updown: down- and upsample with BigGAN-style residual blocks (ADM, sec. 3:
            :class:`~difflab.nn.ResBlock` with ``resample``) instead of a stride-2 convolution and
            nearest-neighbour upsampling + convolution; False = the network of every checkpoint
            saved before this field.
        rescale_residual: scale every residual block's output by 1/sqrt(2) (ADM's Table 1 ablation,
            which found it hurt); False = as before.
        resample_first: Imagen's Efficient U-Net order (see the module docstring): every level
            downsamples before its residual blocks and upsamples after them, so the blocks run
            at half the side; False = the ADM order of every checkpoint saved before this field.
    """

    image_size: int = 28
    in_channels: int = 1
    out_channels: int = 1
    base_channels: int = 32
    channel_mult: tuple[int, ...] = (1, 2, 2)
    num_res_blocks: int | tuple[int, ...] = 1
    attention_resolutions: tuple[int, ...] = (7,)
    num_heads: int = 1
    head_channels: int = 0
    dropout: float = 0.0
    num_classes: int = 0
    prediction: str = "eps"
    scale_shift_norm: bool = True
    context_dim: int = 0
    transformer_depth: int = 1
    pooled_text: bool = False
    skip_scale: float = 1.0
    low_res_channels: int = 0
    learn_sigma: bool = False
    resblock_updown: bool = False
    rescale_residual: bool = False
    resample_first: bool = False


class EncoderSizes(Protocol):
    """The fields of a config that size the U-Net's downsampling half (UNetConfig has them all)."""

    image_size: int
    in_channels: int
    base_channels: int
    channel_mult: tuple[int, ...]
    num_res_blocks: int | tuple[int, ...]
    attention_resolutions: tuple[int, ...]
    num_heads: int
    head_channels: int
    dropout: float
    scale_shift_norm: bool
    resblock_updown: bool
    rescale_residual: bool
    resample_first: bool


def blocks_per_level(c: EncoderSizes) -> tuple[int, ...]:
    """The residual blocks n_i of every level on the way down (n_i + 1 on the way up), checked."""
    levels = len(c.channel_mult)
    counts = c.num_res_blocks
    counts = (counts,) * levels if isinstance(counts, int) else tuple(counts)
    if len(counts) != levels or not all(isinstance(n, int) and n >= 1 for n in counts):
        raise DifflabError(
            f"model.num_res_blocks={c.num_res_blocks!r} must be a count >= 1 or a list of "
            f"{levels} counts >= 1, one per channel_mult level {tuple(c.channel_mult)}."
        )
    return counts


def residual_block(
    c: EncoderSizes, in_ch: int, out_ch: int, emb_dim: int, resample: str = "none"
) -> ResBlock:
    """A residual block with the config's dropout, norm conditioning and residual scale;
    ``resample`` "down" / "up" makes it a BigGAN-style resampling block."""
    return ResBlock(
        in_ch,
        out_ch,
        emb_dim,
        c.dropout,
        c.scale_shift_norm,
        resample=resample,
        rescale=c.rescale_residual,
    )


def downsampler(c: EncoderSizes, channels: int, emb_dim: int) -> ResBlock | Downsample:
    """The layer between two levels on the way down: (B, C, H, W) -> (B, C, ceil(H/2), ceil(W/2))."""
    if c.resblock_updown:
        return residual_block(c, channels, channels, emb_dim, resample="down")
    return Downsample(channels)


def upsampler(c: EncoderSizes, channels: int, emb_dim: int) -> ResBlock | Upsample:
    """The layer between two levels on the way up: (B, C, h, w) -> (B, C, skip's H, W)."""
    if c.resblock_updown:
        return residual_block(c, channels, channels, emb_dim, resample="up")
    return Upsample(channels)


def run_resampler(
    layer: nn.Module, h: torch.Tensor, emb: torch.Tensor, size: tuple[int, int] | None = None
) -> torch.Tensor:
    """Run a :func:`downsampler` or :func:`upsampler` layer (``size``: an upsampler's output side)."""
    if isinstance(layer, ResBlock):
        return layer(h, emb, size)
    if isinstance(layer, Upsample):
        return layer(h, size)
    return layer(h)


def attention_heads(c: EncoderSizes, channels: int) -> int:
    """Heads of an attention layer of ``channels`` width: ``channels / head_channels`` or ``num_heads``."""
    if c.head_channels > channels:
        raise DifflabError(
            f"model.head_channels={c.head_channels} is wider than an attention site of {channels} "
            "channels; use head_channels <= the narrowest attended width (or num_heads instead)."
        )
    return channels // c.head_channels if c.head_channels > 0 else c.num_heads


def attention_block(
    c: EncoderSizes, channels: int, context_dim: int = 0, depth: int = 1
) -> nn.Module:
    """Self-attention, or a transformer block cross-attending to width-``context_dim`` tokens."""
    heads = attention_heads(c, channels)
    if context_dim > 0:
        return SpatialTransformer(channels, context_dim, heads, depth)
    return SpatialSelfAttention(channels, heads)


def attention_at(
    c: EncoderSizes, channels: int, size: int, context_dim: int = 0, depth: int = 1
) -> nn.Module:
    """:func:`attention_block` if ``size`` (pixels) is one of the config's attention resolutions,
    else the identity."""
    if size not in c.attention_resolutions:
        return nn.Identity()
    return attention_block(c, channels, context_dim, depth)


def attend(
    attention: nn.Module, h: torch.Tensor, tokens: torch.Tensor | None, mask: torch.Tensor | None
) -> torch.Tensor:
    """Run an attention site on h (B, C, H, W): a transformer block also reads the tokens."""
    if isinstance(attention, SpatialTransformer):
        return attention(h, tokens, mask)
    return attention(h)


class EncoderLayers(NamedTuple):
    """The downsampling half of an ADM U-Net, shared by :class:`UNet` and the noisy classifier."""

    conv_in: nn.Conv2d
    down_blocks: nn.ModuleList  # each item: ModuleList([ResBlock, attention]) or a downsampler
    skip_channels: list[int]  # width of every activation the down path keeps (conv_in's first,
    # except with resample_first)
    channels: int  # width at the bottom
    size: int  # side (pixels) at the bottom
    level_sizes: list[int]  # side (pixels) at which each level's residual blocks run


def build_encoder(
    c: EncoderSizes, emb_dim: int, context_dim: int = 0, transformer_depth: int = 1
) -> EncoderLayers:
    """conv_in, then per level n_i x (ResBlock, attention) and a :func:`downsampler` (after the
    blocks, the last level excepted; with ``resample_first`` before them, every level).

    ``context_dim > 0`` makes the attention sites transformer blocks of ``transformer_depth``
    blocks that cross-attend to tokens of that width.
    """
    counts = blocks_per_level(c)
    conv_in = nn.Conv2d(c.in_channels, c.base_channels, 3, padding=1)
    down_blocks = nn.ModuleList()
    skip_channels = [] if c.resample_first else [c.base_channels]
    ch, size = c.base_channels, c.image_size
    level_sizes = []
    for level, mult in enumerate(c.channel_mult):
        if c.resample_first:  # a DBlock: stride-2 first (the paper's Fig. A.29)
            down_blocks.append(downsampler(c, ch, emb_dim))
            skip_channels.append(ch)
            size = (size + 1) // 2
        level_sizes.append(size)
        for _ in range(counts[level]):
            out_ch = c.base_channels * mult
            down_blocks.append(
                nn.ModuleList(
                    [
                        residual_block(c, ch, out_ch, emb_dim),
                        attention_at(c, out_ch, size, context_dim, transformer_depth),
                    ]
                )
            )
            ch = out_ch
            skip_channels.append(ch)
        if not c.resample_first and level < len(c.channel_mult) - 1:
            down_blocks.append(downsampler(c, ch, emb_dim))
            skip_channels.append(ch)
            size = (size + 1) // 2
    return EncoderLayers(conv_in, down_blocks, skip_channels, ch, size, level_sizes)


def run_encoder(
    conv_in: nn.Module,
    down_blocks: nn.ModuleList,
    x: torch.Tensor,
    emb: torch.Tensor,
    tokens: torch.Tensor | None = None,
    token_mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """x (B, C_in, H, W), emb (B, E) -> (bottom activation (B, C, h, w), every skip activation).

    tokens (B, L, D) and token_mask (B, L) feed the transformer blocks, if the encoder has any.
    conv_in's output is a skip when the encoder starts with a residual block (the ADM order); a
    ``resample_first`` encoder starts with its downsampler and keeps no such skip (build_encoder).
    """
    h = conv_in(x)  # (B, C0, H, W)
    skips = [h] if isinstance(down_blocks[0], nn.ModuleList) else []
    for layer in down_blocks:
        if isinstance(layer, nn.ModuleList):
            res, attn = layer
            h = attend(attn, res(h, emb), tokens, token_mask)
        else:
            h = run_resampler(layer, h, emb)  # (B, C, ceil(H/2), ceil(W/2))
        skips.append(h)
    return h, skips


class UNet(nn.Module):
    """``net(x_t, t, cond) -> (B, out_channels, H, W)``; x_t (B, in_channels, H, W), t (B,)."""

    def __init__(self, config: UNetConfig) -> None:
        super().__init__()
        self.config = config
        self.prediction = config.prediction
        self.learn_sigma = config.learn_sigma
        c = config
        if c.context_dim < 0:
            raise DifflabError(
                f"model.context_dim must be >= 0 (0 = no cross-attention), got {c.context_dim}."
            )
        if c.transformer_depth < 1 or (c.transformer_depth != 1 and c.context_dim == 0):
            raise DifflabError(
                f"model.transformer_depth={c.transformer_depth}: it must be >= 1 and applies only "
                "with cross-attention; set context_dim > 0 or leave transformer_depth at 1."
            )
        if (c.pooled_text and c.context_dim == 0) or c.low_res_channels < 0 or c.skip_scale <= 0:
            raise DifflabError(
                f"model: pooled_text needs context_dim > 0, low_res_channels must be >= 0 and "
                f"skip_scale > 0 (got {c.pooled_text}, {c.context_dim}, {c.low_res_channels}, "
                f"{c.skip_scale})."
            )
        emb_dim = 4 * c.base_channels
        self.time_embed = TimestepEmbedding(c.base_channels, emb_dim)
        # rows 0..num_classes-1 are classes, row num_classes is "no label"
        self.label_embed = nn.Embedding(c.num_classes + 1, emb_dim) if c.num_classes > 0 else None
        self.text_pool = PooledTextEmbedding(c.context_dim, emb_dim) if c.pooled_text else None
        self.noise_level_embed = (
            NoiseLevelEmbedding(c.base_channels, emb_dim) if c.low_res_channels > 0 else None
        )
        input_sizes = replace(c, in_channels=c.in_channels + c.low_res_channels)  # SR: + low_res
        encoder = build_encoder(input_sizes, emb_dim, c.context_dim, c.transformer_depth)
        counts = blocks_per_level(c)
        self.conv_in = encoder.conv_in
        self.down_blocks = encoder.down_blocks
        skip_channels, ch, size = list(encoder.skip_channels), encoder.channels, encoder.size
        self.mid_block1 = residual_block(c, ch, ch, emb_dim)
        self.mid_attention = attention_block(c, ch, c.context_dim, c.transformer_depth)
        self.mid_block2 = residual_block(c, ch, ch, emb_dim)
        self.up_blocks = nn.ModuleList()  # items: [ResBlock, attention, upsampler or Identity]
        for level, mult in reversed(list(enumerate(c.channel_mult))):
            # a decoder level runs at its encoder level's side (for odd sides, e.g. 13 -> 7 -> 4,
            # not the doubled 4 -> 8 -> 16), so attention_resolutions name the same levels both ways
            size = encoder.level_sizes[level]
            for i in range(counts[level] + 1):
                out_ch = c.base_channels * mult
                upsample = (
                    upsampler(c, out_ch, emb_dim)
                    if i == counts[level] and (level > 0 or c.resample_first)
                    else nn.Identity()
                )
                self.up_blocks.append(
                    nn.ModuleList(
                        [
                            residual_block(c, ch + skip_channels.pop(), out_ch, emb_dim),
                            attention_at(c, out_ch, size, c.context_dim, c.transformer_depth),
                            upsample,
                        ]
                    )
                )
                ch = out_ch
        self.norm_out = group_norm(ch)
        self.conv_out = nn.Conv2d(ch, c.out_channels * (2 if c.learn_sigma else 1), 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    @property
    def conditioning_fields(self) -> tuple[str, ...]:
        """The :class:`~difflab.diffusion.Conditioning` fields this network reads."""
        fields = ("labels",) if self.config.num_classes > 0 else ()
        fields += ("tokens", "token_mask") if self.config.context_dim > 0 else ()
        return fields + (("low_res", "noise_level") if self.config.low_res_channels > 0 else ())

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

    def context(
        self, cond: Conditioning, x_t: torch.Tensor
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """(tokens (B, L, D) in x_t's dtype, token_mask (B, L) bool), checked; (None, None) when
        the network has no cross-attention (tokens given to it are ignored)."""
        D = self.config.context_dim
        if D == 0:
            return None, None
        tokens, mask = cond.tokens, cond.token_mask
        if tokens is None or mask is None:
            raise DifflabError(
                f"this U-Net cross-attends to tokens of width {D} (context_dim={D}), but the "
                f"conditioning has none; pass Conditioning(tokens=(B, L, {D}) floats, "
                "token_mask=(B, L) bools), all-False masks for no caption."
            )
        B = x_t.shape[0]
        if tokens.ndim != 3 or tokens.shape[0] != B or tokens.shape[2] != D:
            raise DifflabError(
                f"conditioning tokens have shape {tuple(tokens.shape)}, but this U-Net reads "
                f"(B={B}, L, {D}) (context_dim={D}); give one sequence per sample, of width {D}."
            )
        if mask.shape != tokens.shape[:2]:
            raise DifflabError(
                f"token_mask has shape {tuple(mask.shape)}; it must be {tuple(tokens.shape[:2])}, "
                "one bool per token."
            )
        return tokens.to(x_t.dtype), mask.to(torch.bool)

    def imagen_inputs(
        self,
        emb: torch.Tensor,
        x_t: torch.Tensor,
        cond: Conditioning,
        tokens: torch.Tensor | None,
        mask: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Imagen's additions (:mod:`difflab.models.imagen_inputs`): the pooled text and the
        augmentation level join the embedding (B, E); a super-resolution stage's input is x_t
        with the upsampled ``cond.low_res`` concatenated. Unchanged for other configs."""
        if self.text_pool is not None and tokens is not None and mask is not None:
            emb = emb + self.text_pool(tokens, mask)
        if self.noise_level_embed is None:
            return emb, x_t
        level = cond.noise_level
        if level is None:
            level = torch.zeros(x_t.shape[0], device=x_t.device)  # a clean low-res image
        emb = emb + self.noise_level_embed(level.reshape(-1)).to(emb.dtype)
        return emb, super_resolution_input(x_t, cond.low_res, self.config.low_res_channels)

    def forward(
        self,
        x_t: torch.Tensor,
        t: torch.Tensor,
        cond: Conditioning | None = None,
        control: ControlResiduals | None = None,
        *,
        with_variance: bool = False,
    ) -> torch.Tensor:
        """``control``: a ControlNet's zero-conv outputs, added to the skips and the middle output.

        With ``learn_sigma`` the output is (B, out_channels, H, W), the prediction, or with
        ``with_variance`` (B, 2 out_channels, H, W): the prediction, then the variance values.
        """
        cond = cond if cond is not None else Conditioning()
        emb = self.embed(t, cond)  # (B, E)
        tokens, mask = self.context(cond, x_t)  # (B, L, D), (B, L) or None
        emb, x_in = self.imagen_inputs(emb, x_t, cond, tokens, mask)  # (B, E), (B, C_in', H, W)
        h, skips = run_encoder(
            self.conv_in, self.down_blocks, x_in, emb, tokens, mask
        )  # (B, C, h, w)
        if self.config.skip_scale != 1:
            skips = [skip * self.config.skip_scale for skip in skips]
        h = attend(self.mid_attention, self.mid_block1(h, emb), tokens, mask)
        h = self.mid_block2(h, emb)
        if control is not None:
            skips = [skip + extra for skip, extra in zip(skips, control.features, strict=True)]
            h = h + control.middle
        for res, attn, upsample in self.up_blocks:
            h = attend(attn, res(torch.cat([h, skips.pop()], dim=1), emb), tokens, mask)
            if not isinstance(upsample, nn.Identity):  # to the next skip's side, or the input's
                side = skips[-1].shape[-2:] if skips else x_t.shape[-2:]
                h = run_resampler(upsample, h, emb, side)  # (B, C, H', W')
        out = self.conv_out(torch.nn.functional.silu(self.norm_out(h)))  # (B, C_out, H, W)
        return out if with_variance or not self.learn_sigma else out[:, : self.config.out_channels]
