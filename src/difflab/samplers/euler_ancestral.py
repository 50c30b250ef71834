"""Euler-ancestral sampling in the EDM formulation (Karras et al. 2022; Song et al. 2021's
ancestral step split into a deterministic and a noise part).

In EDM's unscaled state ``x_hat = x0 + sigma eps`` (see :mod:`difflab.samplers.euler`), the move
from ``sigma`` to ``sigma_next`` is split into an Euler step down to ``sigma_down`` and fresh
noise of standard deviation ``sigma_up`` such that ``sigma_down^2 + sigma_up^2 = sigma_next^2``,
with ``sigma_up`` the standard deviation of the ancestral (posterior) step:

    sigma_up   = sigma_next * sqrt(sigma^2 - sigma_next^2) / sigma
    sigma_down = sqrt(sigma_next^2 - sigma_up^2)
    x_hat <- x_hat + (sigma_down - sigma) (x_hat - D(x_hat; sigma)) / sigma + sigma_up z

No noise is added on the last step (``sigma_next = 0``). On a VP model this is algebraically DDIM
with eta = 1, the DDPM posterior (``a_prev sigma_up^2`` is DDIM eq. 16's ``sigma_t(1)^2``);
``tests/samplers`` checks both that and diffusers' EulerAncestralDiscreteScheduler.
"""

from __future__ import annotations

import torch

from difflab.diffusion.conditioning import Conditioning
from difflab.samplers.common import (
    Callback,
    DenoiserLike,
    StepInfo,
    edm_denoise,
    edm_sigma_pair,
    edm_start,
    edm_vp_state,
    gaussian_like,
    transitions,
)


def euler_ancestral_sample(
    denoiser: DenoiserLike,
    x_T: torch.Tensor,
    timesteps: torch.Tensor,
    cond: Conditioning | None = None,
    *,
    generator: torch.Generator | None = None,
    callback: Callback | None = None,
) -> torch.Tensor:
    """Generate x_0 (B, C, H, W) from x_T (B, C, H, W); S NFE, one noise draw per step but the last.

    Args:
        denoiser: a Denoiser or any guidance wrapper around one.
        timesteps: (S,) strictly decreasing.
        generator: draws the noise ``z``.
        callback: called with a :class:`StepInfo` (VP state) after every step.
    """
    moves = transitions(timesteps)
    x = edm_start(denoiser.schedule, timesteps, x_T)  # (B, C, H, W) x_hat
    for index, (t, t_prev) in enumerate(moves):
        sigma, sigma_next = edm_sigma_pair(denoiser.schedule, t, t_prev, x)  # (B, 1, 1, 1)
        x0 = edm_denoise(denoiser, x, t, sigma, cond).x0
        sigma_up = sigma_next * (sigma**2 - sigma_next**2).sqrt() / sigma
        sigma_down = (sigma_next**2 - sigma_up**2).clamp(min=0).sqrt()
        x = x + (sigma_down - sigma) * (x - x0) / sigma
        if t_prev >= 0:
            x = x + sigma_up * gaussian_like(x, generator)
        if callback is not None:
            callback(StepInfo(index, len(moves), t, edm_vp_state(x, sigma_next), x0))
    return x
