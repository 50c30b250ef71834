"""The denoising objective (DDPM's L_simple, DDIM eq. 5 with gamma_t = 1) for eps, x0 or v."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from difflab.diffusion.conditioning import Conditioning
from difflab.diffusion.denoiser import PREDICTION_TYPES, Network
from difflab.diffusion.schedule import NoiseSchedule
from difflab.errors import DifflabError


def prediction_target(
    prediction: str, x0: torch.Tensor, eps: torch.Tensor, alpha_bar: torch.Tensor
) -> torch.Tensor:
    """What a network of type ``prediction`` should output for the pair (x0, eps)."""
    if prediction == "eps":
        return eps
    if prediction == "x0":
        return x0
    if prediction == "v":
        return alpha_bar.sqrt() * eps - (1 - alpha_bar).sqrt() * x0
    raise DifflabError(
        f"unknown prediction type {prediction!r}; choose one of {', '.join(PREDICTION_TYPES)}."
    )


def denoising_loss(
    net: Network,
    schedule: NoiseSchedule,
    x0: torch.Tensor,
    cond: Conditioning | None = None,
    *,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Mean squared error between the network output and its target at a random t per sample.

    ``t ~ U{0..T-1}``, ``eps ~ N(0, I)``, ``x_t = q_sample(x0, t, eps)``;
    returns ``|| net(x_t, t) - target ||^2`` averaged over all elements (a scalar).

    Args:
        x0: (B, C, H, W) clean data in [-1, 1].
        generator: draws t and eps, so that a run is reproducible.
    """
    batch = x0.shape[0]
    t = torch.randint(0, schedule.num_timesteps, (batch,), generator=generator, device=x0.device)
    eps = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
    x_t = schedule.q_sample(x0, t, eps)
    output = net(x_t, t, cond if cond is not None else Conditioning())
    target = prediction_target(net.prediction, x0, eps, schedule.alpha_bar_at(t, x0))
    return F.mse_loss(output.float(), target.float())
