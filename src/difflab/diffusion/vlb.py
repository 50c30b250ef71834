"""Learned variances and the variational bound (Nichol & Dhariwal 2021, "Improved DDPM").

A network with a learned variance outputs, besides its prediction, values ``v`` per pixel. The
reference code (improved-diffusion / guided-diffusion, ``learned_range``) reads the raw output
``v`` in [-1, 1] and maps it to the paper's interpolation fraction ``f = (v + 1) / 2``
(:func:`~difflab.diffusion.denoiser.variance_fraction`), so eq. 15,
written with that fraction, is::

    Sigma_theta(x_t, t) = exp(f log beta_t + (1 - f) log beta_tilde_t)            (eq. 15)

with, on any timestep sub-sequence t -> t_prev (Improved DDPM sec. 4, respacing)::

    beta_t = 1 - alpha_bar_t / alpha_bar_prev,   beta_tilde_t = beta_t (1 - alpha_bar_prev) / (1 - alpha_bar_t)

The variational bound (DDPM eq. 5; Improved DDPM eqs. 4-7) is ``L_vlb = L_0 + ... + L_T`` with

    L_{t-1} = KL(q(x_{t-1} | x_t, x_0) || p_theta(x_{t-1} | x_t))     (eq. 6; Gaussians: :func:`normal_kl`)
    L_0     = -log p_theta(x_0 | x_1)                                  (eq. 5; :func:`discretized_gaussian_nll`)
    L_T     = KL(q(x_T | x_0) || N(0, I))                              (eq. 7; no parameters)

Everything here is in bits per dimension (nats / ln 2, averaged over C, H, W). difflab's time index
runs 0 .. T-1, so its step ``t`` is the paper's ``t + 1``: the term at ``t = 0`` is the decoder.
"""

from __future__ import annotations

import math

import torch

from difflab.diffusion.denoiser import Denoiser
from difflab.diffusion.schedule import NoiseSchedule

# the smallest posterior variance used in a logarithm (the step into clean data has beta_tilde = 0)
MIN_VARIANCE = 1e-20


def step_log_variances(
    alpha_bar_t: torch.Tensor, alpha_bar_prev: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(log beta_t, log beta_tilde_t)`` of the step t -> t_prev, with the respaced
    ``beta_t = 1 - alpha_bar_t / alpha_bar_prev`` (Improved DDPM sec. 4); beta_tilde (DDPM eq. 7)
    is floored at :data:`MIN_VARIANCE` before its logarithm."""
    beta = 1 - alpha_bar_t / alpha_bar_prev
    beta_tilde = beta * (1 - alpha_bar_prev) / (1 - alpha_bar_t)
    return beta.log(), beta_tilde.clamp(min=MIN_VARIANCE).log()


def learned_log_variance(
    fraction: torch.Tensor, log_beta: torch.Tensor, log_beta_tilde: torch.Tensor
) -> torch.Tensor:
    """``log Sigma_theta = f log beta_t + (1 - f) log beta_tilde_t`` (Improved DDPM eq. 15)."""
    return fraction * log_beta + (1 - fraction) * log_beta_tilde


def posterior_mean(
    x0: torch.Tensor, x_t: torch.Tensor, alpha_bar_t: torch.Tensor, alpha_bar_prev: torch.Tensor
) -> torch.Tensor:
    """Mean of q(x_{t-1} | x_t, x_0) (DDPM eq. 7) on a (respaced) step t -> t_prev."""
    beta = 1 - alpha_bar_t / alpha_bar_prev
    return (alpha_bar_prev.sqrt() * beta * x0 + (1 - beta).sqrt() * (1 - alpha_bar_prev) * x_t) / (
        1 - alpha_bar_t
    )


def normal_kl(
    mean1: torch.Tensor, log_var1: torch.Tensor, mean2: torch.Tensor, log_var2: torch.Tensor
) -> torch.Tensor:
    """Elementwise KL(N(mean1, e^log_var1) || N(mean2, e^log_var2)) in nats::

    0.5 (log_var2 - log_var1 + e^(log_var1 - log_var2) + (mean1 - mean2)^2 e^(-log_var2) - 1)
    """
    return 0.5 * (
        log_var2
        - log_var1
        + torch.exp(log_var1 - log_var2)
        + (mean1 - mean2) ** 2 * torch.exp(-log_var2)
        - 1
    )


def discretized_gaussian_nll(
    x0: torch.Tensor, mean: torch.Tensor, log_var: torch.Tensor, bins: int = 256
) -> torch.Tensor:
    """Elementwise ``-log p(x0)`` in nats of DDPM's discretised Gaussian decoder (DDPM eq. 13).

    ``x0`` lies on ``bins`` levels spread over [-1, 1]; each level gets the mass of N(mean, e^log_var)
    over ``[x0 - 1/(bins-1), x0 + 1/(bins-1)]``, widened to -inf at -1 and to +inf at 1. The CDF is
    the exact one (``torch.special.ndtr``), and each probability is floored at 1e-12.
    """
    half_bin = 1.0 / (bins - 1)
    std = torch.exp(0.5 * log_var)
    upper = torch.special.ndtr((x0 - mean + half_bin) / std)
    lower = torch.special.ndtr((x0 - mean - half_bin) / std)
    mass = torch.where(x0 < -1 + half_bin / 2, upper, upper - lower)
    mass = torch.where(x0 > 1 - half_bin / 2, 1 - lower, mass)
    return -mass.clamp(min=1e-12).log()


def mean_bits(nats: torch.Tensor) -> torch.Tensor:
    """(B, ...) nats -> (B,) bits per dimension."""
    return nats.flatten(1).mean(dim=1) / math.log(2.0)


def vlb_terms(
    schedule: NoiseSchedule,
    x0: torch.Tensor,
    x_t: torch.Tensor,
    t: torch.Tensor,
    x0_pred: torch.Tensor,
    fraction: torch.Tensor,
) -> torch.Tensor:
    """(B,) the bound's term at each sample's ``t`` in bits/dim, for the model's x0 prediction and
    variance fraction: ``L_{t-1}`` (KL, eq. 6) for ``t > 0`` and the decoder NLL ``L_0`` at ``t = 0``.

    ``log beta_tilde`` at t = 0 (zero there) is replaced by its value at t = 1, as the reference
    code clips it, so the decoder's variance stays finite. x0 (B, C, H, W) is data in [-1, 1].
    """
    a_t = schedule.alpha_bar_at(t, x0)  # (B, 1, 1, 1)
    a_prev = schedule.alpha_bar_at(t - 1, x0)
    log_beta, log_beta_tilde = step_log_variances(a_t, a_prev)
    one = torch.ones_like(t)
    _, log_beta_tilde_1 = step_log_variances(
        schedule.alpha_bar_at(one, x0), schedule.alpha_bar_at(one - 1, x0)
    )
    first = (t == 0).reshape(-1, 1, 1, 1)
    log_beta_tilde = torch.where(first, log_beta_tilde_1, log_beta_tilde)
    model_log_var = learned_log_variance(fraction, log_beta, log_beta_tilde)  # (B, C, H, W)
    model_mean = posterior_mean(x0_pred, x_t, a_t, a_prev)
    true_mean = posterior_mean(x0, x_t, a_t, a_prev)
    kl = normal_kl(true_mean, log_beta_tilde, model_mean, model_log_var)
    decoder = discretized_gaussian_nll(x0, model_mean, model_log_var)
    return torch.where(t == 0, mean_bits(decoder), mean_bits(kl))


def prior_bits(schedule: NoiseSchedule, x0: torch.Tensor) -> torch.Tensor:
    """(B,) ``L_T = KL(q(x_T | x_0) || N(0, I))`` in bits/dim (Improved DDPM eq. 7)."""
    last = torch.full((x0.shape[0],), schedule.num_timesteps - 1, device=x0.device)
    a_T = schedule.alpha_bar_at(last, x0)  # (B, 1, 1, 1)
    zero = torch.zeros_like(x0)
    return mean_bits(normal_kl(a_T.sqrt() * x0, (1 - a_T).log().expand_as(x0), zero, zero))


@torch.no_grad()
def bits_per_dim(
    denoiser: Denoiser, x0: torch.Tensor, generator: torch.Generator | None = None
) -> torch.Tensor:
    """(B,) the negative log-likelihood bound ``L_vlb`` (all T terms plus L_T) in bits/dim.

    Each term uses its own ``x_t ~ q(x_t | x0)`` (noise from ``generator``), as Improved DDPM's
    evaluation does; a network without learned variances is scored with ``Sigma = beta_tilde``
    (fraction 0). Costs T network evaluations per image: use it on small T or few images.
    """
    schedule = denoiser.schedule
    total = prior_bits(schedule, x0)
    for step in range(schedule.num_timesteps):
        t = torch.full((x0.shape[0],), step, dtype=torch.long, device=x0.device)  # (B,)
        eps = torch.randn(x0.shape, generator=generator).to(x0)
        x_t = schedule.q_sample(x0, t, eps)
        pred = denoiser(x_t, t)
        fraction = pred.variance_fraction
        fraction = torch.zeros_like(x0) if fraction is None else fraction
        total = total + vlb_terms(schedule, x0, x_t, t, pred.x0, fraction)
    return total
