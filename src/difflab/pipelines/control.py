"""ControlNet pipelines: a locked base model, checked by its SHA-256, plus ControlNets.

A ControlNet checkpoint (``kind: controlnet``) holds the control branch only and records the base
it was trained on: ``base: {path, sha256}``. Loading finds the base (the recorded path, then beside
the checkpoint, then a shipped name), refuses a file whose SHA-256 differs (another base's
features would not match the copy's), and returns a :class:`DiffusionPipeline` whose network is a
:class:`~difflab.models.controlnet.ControlledNetwork`: ``pipe.generate(n, Conditioning(control=
hint), control_scale=1.0)``. Several ControlNets of one base run together
(:func:`~difflab.pipelines.load_control_pipeline` with several paths; their hints are stacked
along the channels).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from difflab.config import dataclass_from_dict
from difflab.errors import DifflabError
from difflab.io.checkpoint import load_checkpoint, split_prefix
from difflab.io.weights import resolve_checkpoint
from difflab.models.controlnet import (
    CONTROL_KIND,
    ControlledNetwork,
    ControlNetConfig,
    DiTControlNet,
    UNetControlNet,
)
from difflab.pipelines.diffusion import DiffusionPipeline
from difflab.pipelines.recorded import recorded_file


def recorded_base_path(recorded: dict[str, Any], checkpoint: Path) -> Path:
    """The base file a ControlNet checkpoint names, found and checked against its SHA-256."""
    found, _ = recorded_file(
        recorded,
        checkpoint,
        entry="base",
        role="the base model",
        mismatch="a ControlNet only fits the base it was copied from",
    )
    return found


def read_controlnet(
    checkpoint: str | Path,
) -> tuple[Path, ControlNetConfig, dict[str, torch.Tensor], dict[str, Any]]:
    """(path, config, weights, JSON) of a ``kind: controlnet`` checkpoint."""
    path = resolve_checkpoint(checkpoint)
    tensors, meta = load_checkpoint(path, kind=CONTROL_KIND)
    if not isinstance(meta.get("model"), dict) or not isinstance(meta.get("base"), dict):
        raise DifflabError(
            f"{path} lacks the 'model' or 'base' entry of a ControlNet checkpoint; retrain it."
        )
    config = dataclass_from_dict(ControlNetConfig, meta["model"], f"{path}: model")
    weights = split_prefix(tensors, "ema") or split_prefix(tensors, "model")
    return path, config, weights, meta


def controlled_pipeline(
    base: DiffusionPipeline, controls: Sequence[UNetControlNet | DiTControlNet], source: str
) -> DiffusionPipeline:
    """``base`` with its network locked and wrapped with ``controls`` (hint = ``cond.control``)."""
    base.net.requires_grad_(False)
    net = ControlledNetwork(base.net, list(controls)).to(base.device).eval()
    fields = (*base.description.conditioning_fields, "control")
    description = dataclasses.replace(base.description, conditioning_fields=fields, source=source)
    return DiffusionPipeline(net, base.schedule, description, base.autoencoder, base.precision)
