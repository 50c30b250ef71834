"""Test doubles shared across the suite: analytic denoisers, tiny configs, a torchrun launcher."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

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


SRC = Path(__file__).resolve().parents[1] / "src"


def torchrun(nproc: int, *args: str) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc_per_node NPROC -m difflab ARGS``, one thread a process."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(SRC)}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    command += [f"--nproc_per_node={nproc}", "-m", "difflab", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=240, env=env)
