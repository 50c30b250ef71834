"""Heun's 2nd-order method on the probability-flow ODE (Karras et al. 2022, Algorithm 1).

In EDM's unscaled state ``x_hat = x0 + sigma eps`` (see :mod:`difflab.samplers.euler`), each move
from ``sigma_i`` to ``sigma_{i+1}`` takes an Euler step and, unless ``sigma_{i+1} = 0``, corrects
it with the slope at its end (the trapezoidal rule; Algorithm 1, lines 3-8):

    d_i   = (x_hat_i - D(x_hat_i; sigma_i)) / sigma_i
    x'    = x_hat_i + (sigma_{i+1} - sigma_i) d_i
    d'_i  = (x' - D(x'; sigma_{i+1})) / sigma_{i+1}
    x_hat_{i+1} = x_hat_i + (sigma_{i+1} - sigma_i) (d_i + d'_i) / 2

so S timesteps cost 2 S - 1 network evaluations. Both evaluations are at the model's own
discrete timesteps (``t_i`` and ``t_{i+1}`` of the sequence).
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


def heun_nfe(steps: int) -> int:
    """Network evaluations of :func:`heun_sample` over ``steps`` timesteps: ``2 S - 1``."""
    return 2 * steps - 1


def heun_sample(
    denoiser: DenoiserLike,
    x_T: torch.Tensor,
    timesteps: torch.Tensor,
    cond: Conditioning | None = None,
    *,
    callback: Callback | None = None,
) -> torch.Tensor:
    """Generate x_0 (B, C, H, W) from x_T (B, C, H, W) with Heun steps (2 S - 1 NFE).

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
        slope = (x - x0) / sigma  # d_i
        x_euler = x + (sigma_next - sigma) * slope
        if t_prev >= 0:
            x0_end = edm_denoise(denoiser, x_euler, t_prev, sigma_next, cond).x0
            slope_end = (x_euler - x0_end) / sigma_next  # d'_i
            x = x + (sigma_next - sigma) * (slope + slope_end) / 2
        else:
            x = x_euler
        if callback is not None:
            callback(StepInfo(index, len(moves), t, edm_vp_state(x, sigma_next), x0))
    return x
