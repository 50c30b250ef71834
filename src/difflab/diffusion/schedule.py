"""Noise schedules: beta_t -> alpha_bar_t, and the forward process q(x_t | x_0).

Naming: the DDIM paper's ``alpha_t`` is DDPM's cumulative product
``alpha_bar_t = prod_{s<=t} (1 - beta_s)``; difflab calls it ``alpha_bar`` everywhere.
Time is discrete, ``t = 0 .. T-1``; ``t = 0`` is the least noisy step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from difflab.errors import DifflabError

ScheduleName = Literal["linear", "cosine", "scaled_linear"]
SCHEDULE_NAMES: tuple[str, ...] = ("linear", "cosine", "scaled_linear")


def linear_betas(
    num_timesteps: int, beta_start: float = 1e-4, beta_end: float = 0.02
) -> torch.Tensor:
    """DDPM (Ho et al. 2020, sec. 4): betas evenly spaced from ``beta_start`` to ``beta_end``."""
    return torch.linspace(beta_start, beta_end, num_timesteps, dtype=torch.float64)


def scaled_linear_betas(
    num_timesteps: int, beta_start: float = 0.00085, beta_end: float = 0.012
) -> torch.Tensor:
    """Latent Diffusion: sqrt(beta) evenly spaced, i.e. ``linspace(sqrt(b0), sqrt(b1), T) ** 2``."""
    return torch.linspace(beta_start**0.5, beta_end**0.5, num_timesteps, dtype=torch.float64) ** 2


def cosine_betas(
    num_timesteps: int, offset: float = 0.008, max_beta: float = 0.999
) -> torch.Tensor:
    """Improved DDPM (Nichol & Dhariwal 2021, eq. 17).

    ``alpha_bar(t) = f(t) / f(0)`` with ``f(t) = cos^2(((t / T) + s) / (1 + s) * pi / 2)``, and
    ``beta_t = 1 - alpha_bar(t + 1) / alpha_bar(t)`` clipped at ``max_beta`` so the last step does
    not become singular.
    """
    steps = torch.arange(num_timesteps + 1, dtype=torch.float64) / num_timesteps
    f = torch.cos((steps + offset) / (1 + offset) * math.pi / 2) ** 2
    alpha_bar = f / f[0]
    return (1 - alpha_bar[1:] / alpha_bar[:-1]).clamp(max=max_beta)


@dataclass(frozen=True, eq=False)
class NoiseSchedule:
    """A discrete variance schedule.

    Attributes:
        betas: (T,) float64, the per-step noise variances ``beta_t``.
        alpha_bar: (T,) float64, ``prod_{s<=t} (1 - beta_s)``, derived from ``betas``.
    """

    betas: torch.Tensor
    alpha_bar: torch.Tensor = field(init=False)
    _alpha_bar_from_clean: torch.Tensor = field(init=False, repr=False)  # (T+1,), index 0 <-> t=-1
    _tables: dict[torch.device, torch.Tensor] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.betas.ndim != 1 or len(self.betas) < 1:
            raise DifflabError("a noise schedule needs a 1-D tensor of at least one beta.")
        if not bool(((self.betas > 0) & (self.betas < 1)).all()):
            raise DifflabError("every beta of a noise schedule must lie strictly between 0 and 1.")
        object.__setattr__(self, "betas", self.betas.to(torch.float64))
        alpha_bar = torch.cumprod(1 - self.betas, dim=0)
        object.__setattr__(self, "alpha_bar", alpha_bar)
        object.__setattr__(
            self, "_alpha_bar_from_clean", torch.cat([alpha_bar.new_ones(1), alpha_bar])
        )
        object.__setattr__(self, "_tables", {})

    @classmethod
    def from_name(
        cls,
        name: str,
        num_timesteps: int = 1000,
        beta_start: float | None = None,
        beta_end: float | None = None,
    ) -> NoiseSchedule:
        """Build ``"linear"`` (DDPM), ``"cosine"`` (Improved DDPM) or ``"scaled_linear"`` (LDM)."""
        if num_timesteps < 1:
            raise DifflabError(f"num_timesteps must be at least 1, got {num_timesteps}.")
        ends = {
            k: v for k, v in (("beta_start", beta_start), ("beta_end", beta_end)) if v is not None
        }
        if name == "linear":
            return cls(linear_betas(num_timesteps, **ends))
        if name == "scaled_linear":
            return cls(scaled_linear_betas(num_timesteps, **ends))
        if name == "cosine":
            return cls(cosine_betas(num_timesteps))
        raise DifflabError(
            f"unknown noise schedule {name!r}; choose one of {', '.join(SCHEDULE_NAMES)}."
        )

    @property
    def num_timesteps(self) -> int:
        return len(self.betas)

    def alpha_bar_at(self, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """``alpha_bar[t]`` shaped to broadcast against ``like`` (B, ...), in its dtype and device.

        ``t = -1`` means "before the first step", i.e. clean data: ``alpha_bar = 1``.
        """
        index = torch.as_tensor(t).long().reshape(-1) + 1  # (B,) or (1,)
        values = self._table_on(index.device)[index].to(device=like.device)  # (B,)
        return values.to(like.dtype).reshape(-1, *([1] * (like.ndim - 1)))

    def _table_on(self, device: torch.device) -> torch.Tensor:
        """``alpha_bar`` from t = -1 on ``device`` (copied there once), where the indices live."""
        if device.type == "cpu":
            return self._alpha_bar_from_clean
        if device not in self._tables:
            self._tables[device] = self._alpha_bar_from_clean.to(device)
        return self._tables[device]

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """Forward process (DDIM eq. 1 / DDPM eq. 4): ``x_t = sqrt(a_t) x0 + sqrt(1 - a_t) eps``.

        Args:
            x0: (B, C, H, W) clean data.
            t: (B,) int64 timesteps in [0, T).
            eps: (B, C, H, W) standard Gaussian noise.
        """
        alpha_bar = self.alpha_bar_at(t, x0)  # (B, 1, 1, 1)
        return alpha_bar.sqrt() * x0 + (1 - alpha_bar).sqrt() * eps


def schedule_from_config(diffusion: Any) -> NoiseSchedule:
    """The schedule a ``diffusion`` config section (:class:`~difflab.config.DiffusionConfig`)
    describes: training builds it from the experiment, loading from a checkpoint's JSON."""
    return NoiseSchedule.from_name(
        diffusion.schedule, diffusion.num_timesteps, diffusion.beta_start, diffusion.beta_end
    )
