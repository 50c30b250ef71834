"""UniPC (Zhao et al. 2023): the multistep UniP-2 predictor with the UniC corrector, B(h) variant
``bh2``, in data-prediction form.

With ``alpha = sqrt(a)``, ``sigma = sqrt(1 - a)``, ``lambda = log(alpha / sigma)``, a move from
``s0`` to ``t`` of length ``h = lambda_t - lambda_s0`` and ``B(h) = exp(-h) - 1`` (bh2), both
parts share the first-order base of DPM-Solver++ (their eq. 8 with x0 prediction):

    base(x) = (sigma_t / sigma_s0) x - alpha_t B(h) m0                  m0 = x0 at s0

* UniP-2 (predictor; their Algorithm 2 with p = 2): with the previous point s1,
  ``r = (lambda_s1 - lambda_s0) / h`` and ``D1 = (m1 - m0) / r``,
  ``x_t = base(x_s0) - alpha_t B(h) (1/2) D1`` (first order on the first step: ``x_t = base``).
* UniC (corrector; their Algorithm 1): once the network has evaluated ``m_t = x0`` at the
  predicted ``x_t`` (the evaluation the next step needs anyway, so no extra NFE), the move from
  ``s0`` is redone as ``x_t^c = base(x_s0) - alpha_t B(h) (rho_1 D1 + rho_c (m_t - m0))``, with
  ``(rho_1, rho_c)`` solving ``[[1, 1], [r, 1]] rho = (g_1, g_2)``, ``g_k = k! phi_{k+1}(h) / B(h)``
  in ``-h`` (their eq. 13 and appendix); with no previous point (order 1), ``rho_c = 1/2``.

The last step onto clean data (``lambda = inf``) is first order, ``x_0 = m``, and is not corrected
(nothing evaluates after it), as diffusers' ``UniPCMultistepScheduler`` with its defaults
(``solver_order=2``, ``lower_order_final``, ``final_sigmas_type="zero"``) does.
"""

from __future__ import annotations

import torch

from difflab.diffusion.conditioning import Conditioning
from difflab.samplers.common import (
    Callback,
    DenoiserLike,
    StepInfo,
    batch_timestep,
    transitions,
)
from difflab.samplers.dpm_solver import half_log_snr

Point = tuple[torch.Tensor, torch.Tensor]  # (x0 (B, C, H, W), lambda (B, 1, 1, 1)) at one timestep


def _base(
    x: torch.Tensor, a_s0: torch.Tensor, a_t: torch.Tensor, m0: torch.Tensor, h: torch.Tensor
) -> torch.Tensor:
    """``(sigma_t / sigma_s0) x - alpha_t B(h) m0``, the first-order move s0 -> t."""
    return ((1 - a_t) / (1 - a_s0)).sqrt() * x - a_t.sqrt() * torch.expm1(-h) * m0


def _predict(
    x: torch.Tensor, a_s0: torch.Tensor, a_t: torch.Tensor, history: list[Point], order: int
) -> torch.Tensor:
    """UniP-``order`` (1 or 2) from ``x`` at the newest point of ``history`` to ``a_t``."""
    m0, lambda_s0 = history[-1]
    h = half_log_snr(a_t) - lambda_s0
    x_t = _base(x, a_s0, a_t, m0, h)
    if order == 2:
        m1, lambda_s1 = history[-2]
        r = (lambda_s1 - lambda_s0) / h
        x_t = x_t - a_t.sqrt() * torch.expm1(-h) * (m1 - m0) / (2 * r)
    return x_t


def _correct(
    x_s0: torch.Tensor,
    a_s0: torch.Tensor,
    a_t: torch.Tensor,
    history: list[Point],
    m_t: torch.Tensor,
    order: int,
) -> torch.Tensor:
    """UniC-``order``: the move from ``x_s0`` (newest point of ``history``) to ``a_t`` redone
    with ``m_t``, the x0 the network gave at the predicted point."""
    m0, lambda_s0 = history[-1]
    h = half_log_snr(a_t) - lambda_s0
    b_h = torch.expm1(-h)  # B(h), bh2
    update = 0.5 * (m_t - m0)
    if order == 2:
        m1, lambda_s1 = history[-2]
        r = (lambda_s1 - lambda_s0) / h
        phi_2 = b_h / -h - 1  # h phi_2(h) / h in -h
        g1 = phi_2 / b_h
        g2 = 2 * (phi_2 / -h - 0.5) / b_h
        rho_1 = (g1 - g2) / (1 - r)
        update = rho_1 * (m1 - m0) / r + (g1 - rho_1) * (m_t - m0)
    return _base(x_s0, a_s0, a_t, m0, h) - a_t.sqrt() * b_h * update


def unipc_sample(
    denoiser: DenoiserLike,
    x_T: torch.Tensor,
    timesteps: torch.Tensor,
    cond: Conditioning | None = None,
    *,
    callback: Callback | None = None,
) -> torch.Tensor:
    """UniPC-2 bh2 from x_T (B, C, H, W) over the (S,) decreasing ``timesteps``: S network
    evaluations, the corrector reusing each one; ``callback`` gets the predictor's state after
    every step. Returns x_0 (B, C, H, W)."""
    moves = transitions(timesteps)
    schedule = denoiser.schedule
    x = x_T
    history: list[Point] = []
    last: tuple[torch.Tensor, torch.Tensor, int] | None = None  # predictor's start, its a, order
    for index, (t, t_prev) in enumerate(moves):
        a_t = schedule.alpha_bar_at(batch_timestep(t, x), x)  # (B, 1, 1, 1)
        x0 = denoiser(x, batch_timestep(t, x), cond).x0
        if last is not None:
            x_start, a_start, order = last
            x = _correct(x_start, a_start, a_t, history, x0, order)
        history = [*history[-1:], (x0, half_log_snr(a_t))]
        if t_prev < 0:
            x = x0  # first order onto clean data
        else:
            order = min(2, len(history))
            last = (x, a_t, order)
            a_next = schedule.alpha_bar_at(batch_timestep(t_prev, x), x)
            x = _predict(x, a_t, a_next, history, order)
        if callback is not None:
            callback(StepInfo(index, len(moves), t, x, x0))
    return x
