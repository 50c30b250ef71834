"""Euler's method on the probability-flow ODE in the EDM formulation (Karras et al. 2022).

EDM writes every diffusion model as ``x = s(t) x_hat`` with ``x_hat = x0 + sigma eps``; for a
variance-preserving schedule ``s = sqrt(a_t)`` and ``sigma = sqrt((1 - a_t) / a_t)`` (their
Table 1, "VP"). In ``x_hat`` the probability-flow ODE is (their eq. 3 with ``sigma(t) = t``,
``s = 1``)

    d x_hat / d sigma = (x_hat - D(x_hat; sigma)) / sigma

with ``D`` the denoiser's x0. One Euler step from ``sigma_i`` to ``sigma_{i+1}`` (their
Algorithm 1, lines 3-5, without the second-order correction):

    d_i = (x_hat_i - D(x_hat_i; sigma_i)) / sigma_i
    x_hat_{i+1} = x_hat_i + (sigma_{i+1} - sigma_i) d_i

The sigmas are the model's own, at its discrete timesteps (any spacing, e.g. ``"karras"``), and
the last step goes to ``sigma = 0``. On a VP model this is algebraically DDIM with eta = 0
(DDIM sec. 4.3: DDIM is Euler's method in ``(x_hat, sigma)``); ``tests/samplers`` checks it.
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
    transitions,
)


def euler_sample(
    denoiser: DenoiserLike,
    x_T: torch.Tensor,
    timesteps: torch.Tensor,
    cond: Conditioning | None = None,
    *,
    callback: Callback | None = None,
) -> torch.Tensor:
    """Generate x_0 (B, C, H, W) from x_T (B, C, H, W) with one Euler step per timestep (S NFE).

    Args:
        denoiser: a Denoiser or any guidance wrapper around one.
        timesteps: (S,) strictly decreasing.
        callback: called with a :class:`StepInfo` (VP state) after every step.
    """
    moves = transitions(timesteps)
    x = edm_start(denoiser.schedule, timesteps, x_T)  # (B, C, H, W) x_hat
    for index, (t, t_prev) in enumerate(moves):
        sigma, sigma_next = edm_sigma_pair(denoiser.schedule, t, t_prev, x)  # (B, 1, 1, 1)
        x0 = edm_denoise(denoiser, x, t, sigma, cond).x0
        x = x + (sigma_next - sigma) * (x - x0) / sigma
        if callback is not None:
            callback(StepInfo(index, len(moves), t, edm_vp_state(x, sigma_next), x0))
    return x  # sigma = 0 after the last step: x_hat = x0
