"""Backbones (every one follows the network contract ``net(x_t, t, cond)``) and their registry."""

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
    "UNet",
    "UNetConfig",
    "build_model",
    "config_from_dict",
    "model_config",
]
