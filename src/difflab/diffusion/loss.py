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


def draw_noise(
    schedule: NoiseSchedule,
    shape: tuple[int, ...],
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> tuple[torch.Tensor, torch.Tensor]:
    """``t ~ U{0..T-1}`` (B,) int64 and ``eps ~ N(0, I)`` of ``shape`` (B, C, H, W), in that order.

    Drawn on ``device`` from ``generator``; training draws them on the CPU for a whole global batch
    so that every process (and any device) sees the same numbers.
    """
    t = torch.randint(0, schedule.num_timesteps, (shape[0],), generator=generator, device=device)
    eps = torch.randn(shape, generator=generator, device=device)
    return t, eps


def denoising_loss(
    net: Network,
    schedule: NoiseSchedule,
    x0: torch.Tensor,
    cond: Conditioning | None = None,
    *,
    generator: torch.Generator | None = None,
    noise: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """Mean squared error between the network output and its target at a random t per sample.

    ``t ~ U{0..T-1}``, ``eps ~ N(0, I)``, ``x_t = q_sample(x0, t, eps)``;
    returns ``|| net(x_t, t) - target ||^2`` averaged over all elements (a scalar).

    Args:
        x0: (B, C, H, W) clean data in [-1, 1].
        generator: draws t and eps (see :func:`draw_noise`), so that a run is reproducible.
        noise: ``(t (B,), eps (B, C, H, W))`` drawn beforehand, instead of from ``generator``.
    """
    if noise is None:
        noise = draw_noise(schedule, tuple(x0.shape), generator, x0.device)
    t, eps = (value.to(x0.device) for value in noise)
    x_t = schedule.q_sample(x0, t, eps.to(x0.dtype))
    output = net(x_t, t, cond if cond is not None else Conditioning())
    target = prediction_target(net.prediction, x0, eps, schedule.alpha_bar_at(t, x0))
    return F.mse_loss(output.float(), target.float())
