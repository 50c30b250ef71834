"""Test doubles shared across the suite: analytic denoisers and tiny configs."""

from __future__ import annotations

import torch

from difflab.diffusion import Conditioning, NoiseSchedule


class GaussianOptimalEps(torch.nn.Module):
    """The exact E[eps | x_t] when the data are x0 ~ N(mean, std^2 I).

    ``x_t ~ N(sqrt(a) mean, (a std^2 + 1 - a) I)``, so
    ``E[eps | x_t] = sqrt(1 - a) (x_t - sqrt(a) mean) / (a std^2 + 1 - a)``.
    With it the DDIM ODE is exact, which makes inversion testable without training.
    """

    prediction = "eps"

    def __init__(self, schedule: NoiseSchedule, mean: float = 0.3, std: float = 0.5) -> None:
        super().__init__()
        self.schedule, self.mean, self.std = schedule, mean, std

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        a = self.schedule.alpha_bar_at(t, x_t)
        return (1 - a).sqrt() * (x_t - a.sqrt() * self.mean) / (a * self.std**2 + 1 - a)


class RandomLinearNet(torch.nn.Module):
    """A fixed random function of (x_t, t) for sampler plumbing tests."""

    def __init__(self, prediction: str = "eps", channels: int = 1, seed: int = 0) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.prediction = prediction
        self.weight = torch.randn(channels, channels, generator=generator) * 0.3

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        mixed = torch.einsum("oc,bchw->bohw", self.weight, x_t)
        return torch.tanh(mixed + t.float()[:, None, None, None] / 1000)
