"""DDIM (Song, Meng & Ermon 2021): the generalized step, sampling, inversion and reconstruction.

With ``a_t = alpha_bar_t`` and ``tau`` a decreasing sub-sequence of timesteps, one step is eq. 12:

    x_prev = sqrt(a_prev) * x0                       "predicted x0"
           + sqrt(1 - a_prev - step_std^2) * eps     "direction pointing to x_t"
           + step_std * z                            "random noise", z ~ N(0, I)

    step_std(eta) = eta * sqrt((1 - a_prev) / (1 - a_t)) * sqrt(1 - a_t / a_prev)     (eq. 16)

``eta = 0`` is the deterministic DDIM, ``eta = 1`` the DDPM posterior. The paper's ``sigma_hat``
variant (Table 1) keeps the ``eta = 1`` mean and uses the larger DDPM variance
``sigma_hat^2 = 1 - a_t / a_prev`` for the noise.

Inversion (:func:`ddim_invert`) runs the eta = 0 step backwards, data to noise, with eps taken at
the move's source or destination timestep (``eps_at``).
"""

from __future__ import annotations

import torch

from difflab.diffusion.conditioning import Conditioning
from difflab.errors import DifflabError
from difflab.samplers.common import (
    Callback,
    DenoiserLike,
    StepInfo,
    alpha_bar_pair,
    batch_timestep,
    gaussian_like,
    transitions,
)

EPS_AT: tuple[str, ...] = ("source", "destination")  # where ddim_invert evaluates eps


def ddim_step_std(
    alpha_bar_t: torch.Tensor, alpha_bar_prev: torch.Tensor, eta: float
) -> torch.Tensor:
    """sigma_t(eta) of eq. 16; broadcasts like its inputs."""
    return (
        eta * ((1 - alpha_bar_prev) / (1 - alpha_bar_t) * (1 - alpha_bar_t / alpha_bar_prev)).sqrt()
    )


def ddim_step(
    x_t: torch.Tensor,
    eps: torch.Tensor,
    x0: torch.Tensor,
    alpha_bar_t: torch.Tensor,
    alpha_bar_prev: torch.Tensor,
    *,
    eta: float = 0.0,
    sigma_hat: bool = False,
    noise: torch.Tensor | None = None,
) -> torch.Tensor:
    """One generalized DDIM step x_t -> x_prev (eq. 12). ``noise`` is required when the step is random.

    Args:
        x_t: (B, C, H, W) current state (used only through eps and x0, kept for clarity of the API).
        eps, x0: (B, C, H, W) the denoiser's predictions at (x_t, t).
        alpha_bar_t, alpha_bar_prev: (B, 1, 1, 1); ``alpha_bar_prev = 1`` for the final step.
        eta: 0 deterministic, 1 DDPM; any value >= 0.
        sigma_hat: use the larger variance ``1 - a_t / a_prev`` with the eta = 1 mean.
    """
    direction_std = ddim_step_std(alpha_bar_t, alpha_bar_prev, 1.0 if sigma_hat else eta)
    noise_std = (1 - alpha_bar_t / alpha_bar_prev).sqrt() if sigma_hat else direction_std
    noise_std = torch.where(
        alpha_bar_prev >= 1, torch.zeros_like(noise_std), noise_std
    )  # last step
    direction = (1 - alpha_bar_prev - direction_std**2).clamp(min=0).sqrt()
    x_prev = alpha_bar_prev.sqrt() * x0 + direction * eps
    if noise is not None:
        x_prev = x_prev + noise_std * noise
    elif bool((noise_std > 0).any()):
        raise ValueError("ddim_step with eta > 0 or sigma_hat needs a noise tensor.")
    return x_prev


def ddim_sample(
    denoiser: DenoiserLike,
    x_T: torch.Tensor,
    timesteps: torch.Tensor,
    cond: Conditioning | None = None,
    *,
    eta: float = 0.0,
    sigma_hat: bool = False,
    generator: torch.Generator | None = None,
    callback: Callback | None = None,
) -> torch.Tensor:
    """Generate x_0 from x_T by visiting ``timesteps`` (strictly decreasing, S of them), eq. 12.

    Args:
        denoiser: a Denoiser or any guidance wrapper around one.
        x_T: (B, C, H, W) starting noise.
        timesteps: (S,) int64, e.g. from :func:`difflab.diffusion.timestep_sequence`.
        eta: noise level of the generalized step (eq. 16); 0 = deterministic DDIM.
        sigma_hat: the paper's sigma-hat variant (larger variance).
        generator: draws the noise of the stochastic steps.
        callback: called with a :class:`StepInfo` after every step.

    Returns:
        (B, C, H, W) the generated samples.
    """
    moves = transitions(timesteps)
    x = x_T
    for index, (t, t_prev) in enumerate(moves):
        pred = denoiser(x, batch_timestep(t, x), cond)
        alpha_bar_t, alpha_bar_prev = alpha_bar_pair(
            denoiser.schedule, t, t_prev, x
        )  # (B, 1, 1, 1) each
        stochastic = (eta > 0 or sigma_hat) and t_prev >= 0
        noise = gaussian_like(x, generator) if stochastic else None
        x = ddim_step(
            x,
            pred.eps,
            pred.x0,
            alpha_bar_t,
            alpha_bar_prev,
            eta=eta,
            sigma_hat=sigma_hat,
            noise=noise,
        )
        if callback is not None:
            callback(StepInfo(index, len(moves), t, x, pred.x0))
    return x


def ddim_invert(
    denoiser: DenoiserLike,
    x0: torch.Tensor,
    timesteps: torch.Tensor,
    cond: Conditioning | None = None,
    *,
    eps_at: str = "source",
    callback: Callback | None = None,
) -> torch.Tensor:
    """Encode data into noise by running the eta = 0 step backwards (the ODE of eq. 13-14, reversed).

    Visits ``timesteps`` in increasing order, starting from clean data: the sampler's moves
    ``t -> t_prev`` run in reverse, ``t_prev -> t`` (the first from ``t_prev = -1``,
    ``alpha_bar = 1``). With ``x_bar = x / sqrt(a)`` and ``sigma = sqrt((1 - a) / a)``, eq. 13
    (the Euler step of the ODE ``d x_bar = eps d sigma``, eq. 14) read from ``t_prev`` up to ``t``:

        x_t / sqrt(a_t) = x_prev / sqrt(a_prev) + (sigma_t - sigma_prev) * eps

    The sampler's step ``t -> t_prev`` uses ``eps(x_t, t)``, which is unknown while ``x_t`` is
    being computed; the two conventions approximate it differently:

    - ``eps_at="source"``: ``eps = eps(x_prev, t_prev)``, the network at the point and level the
      move starts from (a forward-Euler step of the ODE); the first move, from clean data, uses
      ``t_prev = 0``.
    - ``eps_at="destination"``: ``eps = eps(x_prev, t)``, the current point but the timestep of
      the level the move ends at, the one the sampler will evaluate there. This is diffusers'
      ``DDIMInverseScheduler`` (whose ``step(eps, t, x)`` moves ``x`` from level ``t - T/S`` to
      ``t``, ``eps`` computed at ``t``) and the inversion of null-text inversion.

    Both are exact only as S grows: the approximation error of each move shrinks with its size.
    Which is better depends on the network: with the exact eps of Gaussian data the destination's
    round trip error is less than half the source's (``tests/samplers/test_ddim.py``); on
    ``weights/mnist_ddim.safetensors`` (50 test digits) the destination wins at S = 10 (mean MSE
    1.7x lower), but at S = 20..200 the source reconstructs the median digit ~3x better and most
    digits better, while the destination has the lighter tail (its worst digits ~2x lower), so
    the mean MSEs are within 0.84-1.11x (``benchmarks/ddim_inversion.py``). The default stays
    ``"source"``.

    Args:
        denoiser: a Denoiser or any guidance wrapper around one.
        x0: (B, C, H, W) data.
        timesteps: the same (S,) strictly decreasing sequence that :func:`ddim_sample` will use.
        cond: conditioning passed to every network call.
        eps_at: ``"source"`` or ``"destination"``: the timestep at which eps is evaluated.
        callback: called with a :class:`StepInfo` after every move (``t`` = the level reached).

    Returns:
        (B, C, H, W) x_T such that ``ddim_sample(denoiser, x_T, timesteps, eta=0)`` ~ x0.
    """
    if eps_at not in EPS_AT:
        raise DifflabError(f"ddim_invert got eps_at={eps_at!r}; choose one of {', '.join(EPS_AT)}.")
    moves = transitions(timesteps)[::-1]  # the sampler's moves, each run from t_prev up to t
    x = x0
    for index, (t, t_prev) in enumerate(moves):
        t_eval = t if eps_at == "destination" else max(t_prev, 0)
        eps = denoiser(x, batch_timestep(t_eval, x), cond).eps
        alpha_bar_t, alpha_bar_prev = alpha_bar_pair(denoiser.schedule, t, t_prev, x)
        sigma_t = ((1 - alpha_bar_t) / alpha_bar_t).sqrt()  # (B, 1, 1, 1)
        sigma_prev = ((1 - alpha_bar_prev) / alpha_bar_prev).sqrt()  # (B, 1, 1, 1)
        x0_hat = x / alpha_bar_prev.sqrt() - sigma_prev * eps  # x_bar_prev - sigma_prev eps
        x = alpha_bar_t.sqrt() * (x0_hat + sigma_t * eps)  # eq. 13: x_bar_t = x0_hat + sigma_t eps
        if callback is not None:
            callback(StepInfo(index, len(moves), t, x, x0_hat))
    return x
