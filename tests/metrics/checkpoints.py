"""Untrained diffusion checkpoints for evaluation tests: built in milliseconds, no training."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from difflab.io.checkpoint import save_checkpoint, with_prefix
from difflab.models import build_model, model_config


def untrained_checkpoint(
    path: Path, data: str, image_size: int, num_classes: int = 0, seed: int = 0
) -> Path:
    """A ``unet-tiny`` checkpoint (random weights) that claims to be trained on ``data``."""
    import torch

    torch.manual_seed(seed)
    arch, config = model_config("unet-tiny", image_size=image_size, num_classes=num_classes)
    net = build_model(arch, config)
    meta = {
        "kind": "diffusion",
        "arch": arch,
        "model": dataclasses.asdict(config),
        "diffusion": {"schedule": "linear", "num_timesteps": 100},
        "data": {"name": data, "image_size": image_size, "channels": 1},
        "experiment": {"data": {"name": data, "image_size": None, "pad_to_32": False}},
    }
    return save_checkpoint(path, with_prefix(net.state_dict(), "ema"), meta)
