"""Timestep sub-sequences tau for sampling with S < T steps (DDIM sec. 4.2, appendix D.2).

Every spacing returns S distinct timesteps in [0, T), strictly decreasing, the order in which a
sampler visits them. The sampler's last move goes from the smallest one to clean data
(``alpha_bar = 1``), so no spacing needs a sentinel. ``uniform``, ``quadratic``, ``leading`` and
``linspace`` end at t = 0; ``trailing`` starts at t = T - 1 and ends at ``T/S - 1``: it spends its
steps at the noisy end, which is its purpose (Lin et al. 2024, "Common diffusion noise schedules
and sample steps are flawed"). ``karras`` (Karras et al. 2022, eq. 5, rho = 7) spaces the noise
levels ``sigma = sqrt((1 - a) / a)`` of the model's own schedule, so it needs the schedule; it
runs from t = T - 1 to t = 0 and is rounded to the model's discrete timesteps.
"""

from __future__ import annotations

import numpy as np
import torch

from difflab.diffusion.schedule import NoiseSchedule
from difflab.errors import DifflabError

SPACING_NAMES: tuple[str, ...] = (
    "uniform",
    "quadratic",
    "leading",
    "linspace",
    "trailing",
    "karras",
)
KARRAS_RHO = 7.0  # Karras et al. 2022, sec. 3: rho = 7 "for the remainder of the paper"
AUTO = "auto"  # the spacing of automatic_spacing: what a sampler, schedule and prediction call for
LONG_TAIL_SIGMA = 1000.0
"""sigma at t = T - 1 above which a schedule has a long noisy tail (the cosine schedule: 20,291;
the linear DDPM one: 157), see :func:`automatic_spacing`."""


def _strictly_increasing(raw: np.ndarray, num_timesteps: int) -> np.ndarray:
    """Push duplicates apart so that ``raw`` (sorted ints) becomes strictly increasing in [0, T)."""
    out = raw.astype(np.int64).copy()
    for i in range(1, len(out)):
        out[i] = max(out[i], out[i - 1] + 1)
    for i in range(len(out) - 1, -1, -1):  # then pull the top back under T
        out[i] = min(out[i], num_timesteps - len(out) + i)
    return out


def karras_timesteps(
    schedule: NoiseSchedule, num_steps: int, rho: float = KARRAS_RHO
) -> np.ndarray:
    """Karras et al. 2022, eq. 5, on a discrete schedule: S ascending timesteps in [0, T).

    ``sigma_i = (sigma_max^(1/rho) + i / (S - 1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho``
    with ``sigma_max``, ``sigma_min`` the schedule's sigma at t = T - 1 and t = 0; each sigma is
    mapped to the timestep of the nearest log-sigma (linear interpolation of log sigma over t,
    then rounding), and collisions at the clean end are pushed apart. A deliberate difference
    from diffusers' ``use_karras_sigmas``, which feeds the network fractional timesteps: difflab's
    networks were trained on integer ones.
    """
    sigmas = ((1 - schedule.alpha_bar) / schedule.alpha_bar).sqrt().numpy()  # (T,) increasing
    ramp = np.linspace(0.0, 1.0, num_steps)  # (S,); one step: [0], sigma_max only
    lo, hi = sigmas[0] ** (1 / rho), sigmas[-1] ** (1 / rho)
    wanted = (hi + ramp * (lo - hi)) ** rho  # (S,) decreasing
    t = np.interp(np.log(wanted), np.log(sigmas), np.arange(len(sigmas)))  # (S,) fractional
    return _strictly_increasing(np.round(t)[::-1], len(sigmas))


def terminal_sigma(schedule: NoiseSchedule) -> float:
    """sigma_max = sqrt((1 - alpha_bar) / alpha_bar) at t = T - 1 (Karras et al. 2022's sigma)."""
    alpha_bar = float(schedule.alpha_bar[-1])
    return ((1 - alpha_bar) / alpha_bar) ** 0.5


def automatic_spacing(
    preferred: str, schedule: NoiseSchedule, prediction: str, classifier_guided: bool = False
) -> str:
    """The spacing ``"auto"`` stands for: the sampler's ``preferred`` one (karras for the
    high-order samplers, uniform for DDIM and DDPM), except, on a schedule with a long noisy tail
    (sigma_max > :data:`LONG_TAIL_SIGMA`, the cosine one), ``uniform`` under classifier guidance
    and ``trailing`` for a v- or x0-predicting model.

    There karras (rho = 7) puts most of a short run's steps where nothing is drawn yet (10 steps on
    the cosine schedule: 999, 998, ..., 994, 983, 895, 259, 0; mnist_fast's FD-MNIST 7.39 against
    1.28 with trailing, ``make bench-time-to-quality``), and uniform's first step (t = 950 of 1000
    at S = 20) keeps 7.6 % of the image that pure noise lacks (Imagen's base drew its colours at
    chance that way). An eps-predicting model keeps the preferred spacing: its x0 estimate divides
    by sqrt(alpha_bar), about 5e-5 at t = T - 1 of the cosine schedule. Classifier guidance shifts
    eps by sqrt(1 - alpha_bar) * grad log p(y | x_t) (Dhariwal & Nichol 2021, Algorithm 2), which
    moves x0 by that over sqrt(alpha_bar), i.e. by sigma times the classifier's gradient: about
    2e4 times at t = T - 1 of the cosine schedule, 13 times at uniform's first step of 20.
    """
    if terminal_sigma(schedule) <= LONG_TAIL_SIGMA:
        return preferred
    if classifier_guided:
        return "uniform"
    return "trailing" if prediction in ("v", "x0") else preferred


def timestep_sequence(
    num_timesteps: int,
    num_steps: int,
    spacing: str = "uniform",
    schedule: NoiseSchedule | None = None,
) -> torch.Tensor:
    """The S timesteps a sampler visits, strictly decreasing.

    Args:
        num_timesteps: T, the number of training timesteps.
        num_steps: S, with ``1 <= S <= T``.
        spacing: ``"uniform"`` (DDIM: tau_i = floor(i T / S)), ``"quadratic"`` (DDIM:
            tau_i = floor(c i^2) up to 0.8 T), or diffusers' ``"leading"`` (i * (T // S)),
            ``"linspace"`` (round(linspace(0, T-1, S))), ``"trailing"`` (round(T - i T/S) - 1)
            and ``"karras"`` (:func:`karras_timesteps`).
        schedule: the model's noise schedule; only ``"karras"`` reads it (and needs it).

    Returns:
        (S,) int64, strictly decreasing.
    """
    T, S = num_timesteps, num_steps
    if not 1 <= S <= T:
        raise DifflabError(f"the number of sampling steps must be between 1 and T={T}, got {S}.")
    i = np.arange(S)
    if spacing == "uniform":
        ascending = (i * T) // S
    elif spacing == "quadratic":
        ascending = _strictly_increasing(np.floor((i * np.sqrt(0.8 * T) / max(S - 1, 1)) ** 2), T)
    elif spacing == "leading":
        ascending = i * (T // S)
    elif spacing == "linspace":
        ascending = np.round(np.linspace(0, T - 1, S))
    elif spacing == "trailing":
        ascending = np.round(T - i * T / S).astype(np.int64)[::-1] - 1
    elif spacing == "karras":
        if schedule is None or schedule.num_timesteps != T:
            raise DifflabError(
                "the karras timestep spacing spaces the model's noise levels; pass its schedule "
                "(timestep_sequence(T, S, 'karras', schedule)) with T = schedule.num_timesteps."
            )
        ascending = karras_timesteps(schedule, S)
    else:
        raise DifflabError(
            f"unknown timestep spacing {spacing!r}; choose one of {', '.join(SPACING_NAMES)}."
        )
    return torch.from_numpy(np.asarray(ascending, dtype=np.int64)[::-1].copy())
