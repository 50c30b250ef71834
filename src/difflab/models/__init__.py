"""Backbones (every one follows the network contract ``net(x_t, t, cond)``) and their registry."""

from difflab.models.dit import DiT, DiTConfig
from difflab.models.flops import count_flops, forward_flops, forward_gflops
from difflab.models.registry import (
    ARCHITECTURES,
    PRESETS,
    build_model,
    config_from_dict,
    model_config,
)
from difflab.models.text import (
    CaptionEncoder,
    TextEncoderConfig,
    WordTokenizer,
    attach_caption_encoder,
    build_caption_encoder,
    caption_encoder_from_meta,
    caption_encoder_meta,
    caption_encoder_of,
    dataset_captions,
)
from difflab.models.unet import UNet, UNetConfig

__all__ = [
    "ARCHITECTURES",
    "PRESETS",
    "CaptionEncoder",
    "DiT",
    "DiTConfig",
    "TextEncoderConfig",
    "UNet",
    "UNetConfig",
    "WordTokenizer",
    "attach_caption_encoder",
    "build_caption_encoder",
    "build_model",
    "caption_encoder_from_meta",
    "caption_encoder_meta",
    "caption_encoder_of",
    "config_from_dict",
    "count_flops",
    "dataset_captions",
    "forward_flops",
    "forward_gflops",
    "model_config",
]
