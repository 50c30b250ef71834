"""The denoising objective (DDPM's L_simple, DDIM eq. 5 with gamma_t = 1) for eps, x0 or v, and
its min-SNR-γ weighting (Hang et al. 2023)."""

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


def min_snr_weight(prediction: str, alpha_bar: torch.Tensor, gamma: float) -> torch.Tensor:
    """Min-SNR-γ loss weights (Hang et al. 2023, "Efficient Diffusion Training via Min-SNR
    Weighting Strategy", sec. 3.4) for a network of type ``prediction``, per sample.

    The paper weights the x0-space loss ``||x0 - x̂0||²`` by ``w_t = min(SNR(t), γ)`` with
    ``SNR(t) = alpha_bar / (1 - alpha_bar)``. The same loss written in the space each network
    predicts in follows from ``x_t = sqrt(alpha_bar) x0 + sqrt(1 - alpha_bar) eps``:

    - x0: ``||x0 - x̂0||²``, weight ``min(SNR, γ)``;
    - eps: ``x0 - x̂0 = -(eps - ε̂) / sqrt(SNR)``, so ``||eps - ε̂||² = SNR ||x0 - x̂0||²`` and the
      weight is ``min(SNR, γ) / SNR = min(1, γ / SNR)`` (the paper's ε-form);
    - v: ``x0 - x̂0 = -sqrt(1 - alpha_bar) (v - v̂)``, so ``||v - v̂||² = (SNR + 1) ||x0 - x̂0||²``
      and the weight is ``min(SNR, γ) / (SNR + 1)``.

    Args:
        alpha_bar: (B, ...) ``alpha_bar[t]`` of each sample (any trailing singleton dims).
        gamma: the clamp γ (the paper uses 5).

    Returns:
        (B, ...) weights, in ``alpha_bar``'s dtype.
    """
    snr = alpha_bar / (1 - alpha_bar)
    clamped = snr.clamp(max=gamma)
    if prediction == "eps":
        return (gamma / snr).clamp(max=1.0)  # = min(SNR, γ) / SNR; 1 where SNR = 0
    if prediction == "x0":
        return clamped
    if prediction == "v":
        return clamped / (snr + 1)
    raise DifflabError(
        f"unknown prediction type {prediction!r}; choose one of {', '.join(PREDICTION_TYPES)}."
    )


def weighted_mse(
    output: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None
) -> torch.Tensor:
    """``mean ||output - target||²`` over all elements, each sample's error times ``weight`` (B,
    1, 1, 1) when given (None: plain ``F.mse_loss``, bit for bit as before weighting existed)."""
    if weight is None:
        return F.mse_loss(output, target)
    return (weight * (output - target).square()).mean()


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
    min_snr_gamma: float | None = None,
) -> torch.Tensor:
    """Mean squared error between the network output and its target at a random t per sample.

    ``t ~ U{0..T-1}``, ``eps ~ N(0, I)``, ``x_t = q_sample(x0, t, eps)``;
    returns ``|| net(x_t, t) - target ||^2`` averaged over all elements (a scalar).

    For a network with learned variances (``learn_sigma``) and ``vlb_weight`` = λ > 0 it returns
    Improved DDPM's ``L_hybrid = L_simple + λ L_vlb`` (sec. 3.1), with ``L_vlb`` estimated as
    ``T · L_t`` at the drawn t (bits/dim, :func:`~difflab.diffusion.vlb.vlb_terms`) and the
    prediction detached in it (the stop-gradient on the mean: L_vlb trains only Σ). With T = 1000
    and λ = 0.001 this is the reference code's ``mse + vb``.

    With ``min_snr_gamma`` = γ each sample's squared error is weighted by
    :func:`min_snr_weight` (Min-SNR-γ, Hang et al. 2023; the L_simple term only, not L_vlb);
    None (the default) keeps the unweighted L_simple.

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
    weight = None
    if min_snr_gamma is not None:
        like = x0.new_empty((1,) * x0.dim(), dtype=torch.float64)  # SNR from the float64 table
        exact = schedule.alpha_bar_at(t, like)  # (B, 1, 1, 1)
        weight = min_snr_weight(net.prediction, exact, min_snr_gamma).float()
    if not learns_variance(net):
        return weighted_mse(net(x_t, t, cond).float(), target.float(), weight)
    output, values = split_variance(net(x_t, t, cond, with_variance=True).float())
    loss = weighted_mse(output, target.float(), weight)
    if vlb_weight == 0:
        return loss
    frozen = prediction_to_eps_x0(output.detach(), net.prediction, x_t.float(), alpha_bar.float())
    terms = vlb_terms(schedule, x0.float(), x_t.float(), t, frozen.x0, variance_fraction(values))
    return loss + vlb_weight * schedule.num_timesteps * terms.mean()
