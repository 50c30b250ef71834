"""Spherical interpolation between noises, and decoding the path (DDIM sec. 5.3)."""

from __future__ import annotations

import torch

from difflab.diffusion.conditioning import Conditioning
from difflab.samplers.common import DenoiserLike
from difflab.samplers.ddim import ddim_sample


def slerp(z0: torch.Tensor, z1: torch.Tensor, weight: torch.Tensor | float) -> torch.Tensor:
    """``sin((1 - w) theta) / sin(theta) * z0 + sin(w theta) / sin(theta) * z1`` per sample.

    ``theta`` is the angle between the flattened samples; falls back to linear interpolation when
    they are (nearly) parallel. Shapes: z0, z1 (B, ...); weight scalar or (B,).
    """
    flat0, flat1 = z0.flatten(1).double(), z1.flatten(1).double()
    cos = (flat0 * flat1).sum(1) / (flat0.norm(dim=1) * flat1.norm(dim=1))
    theta = cos.clamp(-1, 1).acos()  # (B,)
    w = torch.as_tensor(weight, dtype=torch.float64).reshape(-1)
    sin = theta.sin()
    parallel = sin.abs() < 1e-6
    safe_sin = torch.where(parallel, torch.ones_like(sin), sin)
    c0 = torch.where(parallel, 1 - w, ((1 - w) * theta).sin() / safe_sin)
    c1 = torch.where(parallel, w.expand_as(theta), (w * theta).sin() / safe_sin)
    shape = (-1,) + (1,) * (z0.ndim - 1)
    return (c0.reshape(shape) * z0.double() + c1.reshape(shape) * z1.double()).to(z0.dtype)


def interpolate(
    denoiser: DenoiserLike,
    z0: torch.Tensor,
    z1: torch.Tensor,
    num_points: int,
    timesteps: torch.Tensor,
    cond: Conditioning | None = None,
) -> torch.Tensor:
    """Decode ``num_points`` noises on the great circle from z0 to z1 (each (1, C, H, W)) with DDIM eta=0.

    Returns:
        (num_points, C, H, W) images; the first decodes z0 and the last z1.
    """
    weights = torch.linspace(0, 1, num_points)
    path = slerp(
        z0.expand(num_points, *z0.shape[1:]), z1.expand(num_points, *z1.shape[1:]), weights
    )
    if cond is not None and cond.batch_size == 1:
        cond = cond[torch.zeros(num_points, dtype=torch.long)]  # one sample's, along the path
    return ddim_sample(denoiser, path, timesteps, cond, eta=0.0)
