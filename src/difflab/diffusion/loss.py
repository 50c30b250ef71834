"""The denoising objective (DDPM's L_simple, DDIM eq. 5 with gamma_t = 1) for eps, x0 or v."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from difflab.diffusion.conditioning import Conditioning
from difflab.diffusion.denoiser import (
    PREDICTION_TYPES,
    Network,
    learns_variance,
    prediction_to_eps_x0,
    split_variance,
    variance_fraction,
)
from difflab.diffusion.schedule import NoiseSchedule
from difflab.diffusion.vlb import vlb_terms
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
    vlb_weight: float = 0.0,
) -> torch.Tensor:
    """Mean squared error between the network output and its target at a random t per sample.

    ``t ~ U{0..T-1}``, ``eps ~ N(0, I)``, ``x_t = q_sample(x0, t, eps)``;
    returns ``|| net(x_t, t) - target ||^2`` averaged over all elements (a scalar).

    For a network with learned variances (``learn_sigma``) and ``vlb_weight`` = λ > 0 it returns
    Improved DDPM's ``L_hybrid = L_simple + λ L_vlb`` (sec. 3.1), with ``L_vlb`` estimated as
    ``T · L_t`` at the drawn t (bits/dim, :func:`~difflab.diffusion.vlb.vlb_terms`) and the
    prediction detached in it (the stop-gradient on the mean: L_vlb trains only Σ). With T = 1000
    and λ = 0.001 this is the reference code's ``mse + vb``.

    Args:
        x0: (B, C, H, W) clean data in [-1, 1].
        generator: draws t and eps (see :func:`draw_noise`), so that a run is reproducible.
        noise: ``(t (B,), eps (B, C, H, W))`` drawn beforehand, instead of from ``generator``.
    """
    if noise is None:
        noise = draw_noise(schedule, tuple(x0.shape), generator, x0.device)
    t, eps = (value.to(x0.device) for value in noise)
    x_t = schedule.q_sample(x0, t, eps.to(x0.dtype))
    cond = cond if cond is not None else Conditioning()
    alpha_bar = schedule.alpha_bar_at(t, x0)  # (B, 1, 1, 1)
    target = prediction_target(net.prediction, x0, eps, alpha_bar)
    if not learns_variance(net):
        return F.mse_loss(net(x_t, t, cond).float(), target.float())
    output, values = split_variance(net(x_t, t, cond, with_variance=True).float())
    loss = F.mse_loss(output, target.float())
    if vlb_weight == 0:
        return loss
    frozen = prediction_to_eps_x0(output.detach(), net.prediction, x_t.float(), alpha_bar.float())
    terms = vlb_terms(schedule, x0.float(), x_t.float(), t, frozen.x0, variance_fraction(values))
    return loss + vlb_weight * schedule.num_timesteps * terms.mean()
