"""The noisy classifier p_φ(y | x_t) of classifier guidance (Dhariwal & Nichol 2021, sec. 4).

ADM's classifier is "the downsampling trunk of the UNet model with an attention pool at the
8×8 layer to produce the final output". Here: the U-Net's encoder (:func:`build_encoder`, the
same layers as :class:`~difflab.models.unet.UNet`'s down path), its middle block, then
GroupNorm, SiLU and attention pooling to ``num_classes`` logits::

    x_t (B, C, S, S), t (B,) -> down path -> (B, C', s, s) -> middle -> norm, SiLU
                             -> attention pool -> (B, num_classes) logits

Unlike a diffusion backbone it is called ``clf(x_t, t)`` (no conditioning) and predicts no noise,
so it has its own small preset table instead of an entry in the diffusion model registry. It is
trained on ``x_t ~ q(x_t | x_0)`` at uniformly random ``t`` by
:func:`difflab.training.classifier_loop.train_classifier` and stored as a ``kind: classifier``
checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from difflab.config import dataclass_from_dict
from difflab.errors import DifflabError
from difflab.models.unet import (
    attention_heads,
    build_encoder,
    residual_block,
    run_encoder,
)
from difflab.nn import SpatialSelfAttention, TimestepEmbedding, group_norm

CLASSIFIER_KIND = "classifier"  # the ``kind`` of its checkpoints
CLASSIFIER_ARCH = "noisy-classifier"  # the ``arch`` of its checkpoints


@dataclass(frozen=True)
class NoisyClassifierConfig:
    """Sizes of a :class:`NoisyClassifier`; the encoder fields mean what they mean for a U-Net.

    Attributes:
        image_size: input height = width, in pixels (the attention pool is built for it).
        in_channels: image channels.
        base_channels: width of the first level; level i has ``base_channels * channel_mult[i]``.
        channel_mult: one multiplier per resolution level (len - 1 downsamplings).
        num_res_blocks: residual blocks per level: one count, or one per ``channel_mult`` entry.
        attention_resolutions: feature-map sizes (pixels) with self-attention.
        num_heads / head_channels: attention heads (head_channels > 0: heads = width / head_channels),
            also for the attention pool.
        dropout: dropout probability inside residual blocks.
        scale_shift_norm: condition the residual blocks on t by scale-shift norm (ADM's AdaGN).
        resblock_updown / rescale_residual: BigGAN-style resampling residual blocks and residual
            outputs times 1/sqrt(2), as for the U-Net (both off: the classifiers shipped before).
        resample_first: Imagen's Efficient U-Net order, as for the U-Net: every level downsamples
            before its blocks (the first too, so the pool sits at image_size / 2^levels).
        num_classes: number of logits K.
    """

    image_size: int = 28
    in_channels: int = 1
    base_channels: int = 32
    channel_mult: tuple[int, ...] = (1, 2, 2)
    num_res_blocks: int | tuple[int, ...] = 1
    attention_resolutions: tuple[int, ...] = (7,)
    num_heads: int = 1
    head_channels: int = 0
    dropout: float = 0.0
    scale_shift_norm: bool = True
    resblock_updown: bool = False
    rescale_residual: bool = False
    resample_first: bool = False
    num_classes: int = 10


CLASSIFIER_PRESETS: dict[str, dict[str, Any]] = {
    # for tests: a few thousand parameters
    "classifier-tiny": dict(
        base_channels=8, channel_mult=(1, 2), num_res_blocks=1, attention_resolutions=(4,)
    ),
    # the encoder half of unet-mnist: 28x28 -> 14 -> 7, attention (and the pool) at 7x7
    "classifier-mnist": dict(
        base_channels=32, channel_mult=(1, 2, 2), num_res_blocks=1, attention_resolutions=(7,)
    ),
}


def classifier_config(preset: str, **overrides: Any) -> NoisyClassifierConfig:
    """The config of a classifier preset with some fields overridden (type-checked by name)."""
    if preset not in CLASSIFIER_PRESETS:
        raise DifflabError(
            f"unknown classifier preset {preset!r}; choose one of {', '.join(CLASSIFIER_PRESETS)}."
        )
    values = {**CLASSIFIER_PRESETS[preset], **overrides}
    return classifier_config_from_dict(values, "model")


def classifier_config_from_dict(values: dict[str, Any], where: str) -> NoisyClassifierConfig:
    """Rebuild a config from its JSON form (a checkpoint's ``model`` entry); checks every key."""
    config = dataclass_from_dict(NoisyClassifierConfig, dict(values), where)
    if config.num_classes < 2:
        raise DifflabError(f"{where}.num_classes must be at least 2, got {config.num_classes}.")
    return config


class AttentionPool(nn.Module):
    """ADM's AttentionPool2d: the mean of the feature map, as a query, attends over all pixels.

    Tokens are ``[mean, pixel_1, ..., pixel_HW]`` plus a learned positional embedding; only the
    mean token's output is kept and projected to ``out_dim``. The embedding fixes ``H * W``.
    Shapes: (B, C, H, W) -> (B, out_dim).
    """

    def __init__(self, channels: int, num_pixels: int, num_heads: int, out_dim: int) -> None:
        super().__init__()
        if channels % num_heads:
            raise DifflabError(
                f"attention pool: {channels} channels do not split into {num_heads} heads."
            )
        self.num_heads = num_heads
        self.positional = nn.Parameter(torch.randn(num_pixels + 1, channels) / channels**0.5)
        self.qkv = nn.Linear(channels, 3 * channels)
        self.proj = nn.Linear(channels, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        tokens = x.flatten(2).transpose(1, 2)  # (B, HW, C)
        tokens = torch.cat([tokens.mean(1, keepdim=True), tokens], dim=1) + self.positional
        qkv = self.qkv(tokens).reshape(B, H * W + 1, 3, self.num_heads, C // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, heads, HW + 1, C / heads)
        pooled = F.scaled_dot_product_attention(q[:, :, :1], k, v)  # (B, heads, 1, C / heads)
        return self.proj(pooled.reshape(B, C))  # (B, out_dim)


class NoisyClassifier(nn.Module):
    """``clf(x_t, t) -> (B, num_classes)`` logits of p_φ(y | x_t); x_t (B, C, S, S), t (B,)."""

    def __init__(self, config: NoisyClassifierConfig) -> None:
        super().__init__()
        self.config = c = config
        self.meta: dict[str, Any] = {}  # the checkpoint's description, when loaded from one
        emb_dim = 4 * c.base_channels
        self.time_embed = TimestepEmbedding(c.base_channels, emb_dim)
        encoder = build_encoder(c, emb_dim)
        self.conv_in = encoder.conv_in
        self.down_blocks = encoder.down_blocks
        ch, size = encoder.channels, encoder.size
        self.mid_block1 = residual_block(c, ch, ch, emb_dim)
        self.mid_attention = SpatialSelfAttention(ch, attention_heads(c, ch))
        self.mid_block2 = residual_block(c, ch, ch, emb_dim)
        self.norm_out = group_norm(ch)
        self.pool = AttentionPool(ch, size * size, attention_heads(c, ch), c.num_classes)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        c = self.config
        if x_t.ndim != 4 or x_t.shape[1:] != (c.in_channels, c.image_size, c.image_size):
            raise DifflabError(
                f"this noisy classifier takes {c.in_channels}×{c.image_size}×{c.image_size} "
                f"images, got {tuple(x_t.shape[1:])}; use a classifier trained on the model's data."
            )
        t = torch.as_tensor(t, device=x_t.device).long().expand(x_t.shape[0])  # (B,)
        emb = self.time_embed(t)  # (B, E)
        h, _ = run_encoder(self.conv_in, self.down_blocks, x_t, emb)  # (B, C', s, s)
        h = self.mid_block2(self.mid_attention(self.mid_block1(h, emb)), emb)
        return self.pool(F.silu(self.norm_out(h)))  # (B, num_classes)


def check_classifier_fits(
    classifier: NoisyClassifier, sample_shape: tuple[int, int, int], labels: torch.Tensor
) -> None:
    """A DifflabError unless ``classifier`` reads x_t of ``sample_shape`` (C, H, W) and knows
    every one of ``labels``."""
    config = classifier.config
    channels, size, _ = sample_shape
    if (config.in_channels, config.image_size) != (channels, size):
        raise DifflabError(
            f"the classifier takes {config.in_channels}×{config.image_size}×{config.image_size} "
            f"images but the model makes {channels}×{size}×{size} ones; use a classifier trained "
            "on the model's data."
        )
    if bool(((labels < 0) | (labels >= config.num_classes)).any()):
        raise DifflabError(
            f"labels must lie in 0..{config.num_classes - 1} for the classifier's "
            f"{config.num_classes} classes."
        )
