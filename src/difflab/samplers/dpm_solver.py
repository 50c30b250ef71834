"""DPM-Solver++(2M) and its SDE variant (Lu et al. 2022, "DPM-Solver++", data-prediction form).

With ``alpha_t = sqrt(a_t)``, ``sigma_t = sqrt(1 - a_t)`` and the half log-SNR
``lambda_t = log(alpha_t / sigma_t)``, a step from ``t`` to ``t_next`` of length
``h = lambda_next - lambda_t`` integrates the diffusion ODE exactly for a data prediction ``D``
held constant over the step (their eq. 9-10, first order = DDIM):

    x_next = (sigma_next / sigma_t) x_t - alpha_next (exp(-h) - 1) D

The multistep second order (their Algorithm 2, "2M") reuses the previous step's x0 instead of a
second evaluation: with ``r = h_prev / h``

    D = (1 + 1 / (2 r)) x0_t - 1 / (2 r) x0_prev

and the first step (no history) is first order. The SDE variant (``sde=True``; the authors'
SDE-DPM-Solver++(2M), the exact solution of the reverse VP SDE for a constant ``D``) takes

    x_next = (sigma_next / sigma_t) exp(-h) x_t + alpha_next (1 - exp(-2h)) D
             + sigma_next sqrt(1 - exp(-2h)) z,      z ~ N(0, I)

The last step goes to clean data (``lambda = inf``, ``sigma = 0``) and is taken at first order,
``x_0 = x0_t`` (the "lower-order final step" that Lu et al. recommend for stability at few steps;
diffusers' ``final_sigmas_type="zero"`` does the same). One network evaluation per timestep.
"""

from __future__ import annotations

import torch

from difflab.diffusion.conditioning import Conditioning
from difflab.samplers.common import (
    Callback,
    DenoiserLike,
    StepInfo,
    alpha_bar_pair,
    batch_timestep,
    gaussian_like,
    transitions,
)


def half_log_snr(alpha_bar: torch.Tensor) -> torch.Tensor:
    """``lambda = log(alpha / sigma) = (log a - log(1 - a)) / 2``; broadcasts like its input."""
    return (alpha_bar.log() - (-alpha_bar).log1p()) / 2


def dpm_solver_pp_2m_sample(
    denoiser: DenoiserLike,
    x_T: torch.Tensor,
    timesteps: torch.Tensor,
    cond: Conditioning | None = None,
    *,
    sde: bool = False,
    generator: torch.Generator | None = None,
    callback: Callback | None = None,
) -> torch.Tensor:
    """Generate x_0 (B, C, H, W) from x_T (B, C, H, W) with DPM-Solver++(2M) (S NFE).

    Args:
        denoiser: a Denoiser or any guidance wrapper around one.
        timesteps: (S,) strictly decreasing.
        sde: the stochastic variant (draws noise from ``generator`` on every step but the last).
        callback: called with a :class:`StepInfo` after every step.
    """
    moves = transitions(timesteps)
    x = x_T
    history: tuple[torch.Tensor, torch.Tensor] | None = None  # (x0, h) of the previous step
    for index, (t, t_prev) in enumerate(moves):
        x0 = denoiser(x, batch_timestep(t, x), cond).x0  # (B, C, H, W)
        if t_prev < 0:
            x = x0  # first-order step onto clean data: alpha = 1, sigma = 0
        else:
            a_t, a_next = alpha_bar_pair(denoiser.schedule, t, t_prev, x)  # (B, 1, 1, 1)
            h = half_log_snr(a_next) - half_log_snr(a_t)  # (B, 1, 1, 1)
            data = x0
            if history is not None:
                x0_prev, h_prev = history
                half_over_r = h / (2 * h_prev)  # 1 / (2 r)
                data = (1 + half_over_r) * x0 - half_over_r * x0_prev
            sigma_ratio = ((1 - a_next) / (1 - a_t)).sqrt()  # sigma_next / sigma_t
            if sde:
                kept = -torch.expm1(-2 * h)  # 1 - exp(-2h)
                x = sigma_ratio * torch.exp(-h) * x + a_next.sqrt() * kept * data
                x = x + (1 - a_next).sqrt() * kept.sqrt() * gaussian_like(x, generator)
            else:
                x = sigma_ratio * x - a_next.sqrt() * torch.expm1(-h) * data
            history = (x0, h)
        if callback is not None:
            callback(StepInfo(index, len(moves), t, x, x0))
    return x
