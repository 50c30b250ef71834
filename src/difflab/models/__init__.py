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
from difflab.models.unet import UNet, UNetConfig

__all__ = [
    "ARCHITECTURES",
    "PRESETS",
    "DiT",
    "DiTConfig",
    "UNet",
    "UNetConfig",
    "build_model",
    "config_from_dict",
    "count_flops",
    "forward_flops",
    "forward_gflops",
    "model_config",
]
