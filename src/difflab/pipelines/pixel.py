"""A trained diffusion model loaded from a checkpoint, with one-call sampling, inversion and interpolation."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch

from difflab.diffusion import (
    ClippedDenoiser,
    Conditioning,
    Denoiser,
    NoiseSchedule,
    timestep_sequence,
)
from difflab.errors import DifflabError
from difflab.models import build_model, config_from_dict
from difflab.samplers import SAMPLER_NAMES, ddim_invert, ddim_sample, ddpm_sample, interpolate
from difflab.samplers.common import Callback
from difflab.training.checkpoint import load_checkpoint, load_weights_strict, split_prefix


@dataclasses.dataclass
class DiffusionModel:
    """A network, the schedule it was trained with, and the checkpoint's description."""

    net: torch.nn.Module
    schedule: NoiseSchedule
    meta: dict[str, Any]

    @property
    def image_shape(self) -> tuple[int, int, int]:
        data = self.meta["data"]
        return (data["channels"], data["image_size"], data["image_size"])

    @property
    def num_classes(self) -> int:
        return int(getattr(self.net.config, "num_classes", 0))

    def denoiser(self, clip_x0: bool = False) -> Denoiser | ClippedDenoiser:
        denoiser = Denoiser(self.net, self.schedule)
        return ClippedDenoiser(denoiser) if clip_x0 else denoiser

    def timesteps(self, steps: int, spacing: str = "uniform") -> torch.Tensor:
        return timestep_sequence(self.schedule.num_timesteps, steps, spacing)

    def noise(self, n: int, seed: int) -> torch.Tensor:
        """(n, C, H, W) standard normal x_T from a seeded CPU generator."""
        noise = torch.randn(n, *self.image_shape, generator=torch.Generator().manual_seed(seed))
        return noise.to(
            self.device
        )  # drawn on the CPU so a seed gives the same images on any device

    @property
    def device(self) -> torch.device:
        return next(self.net.parameters()).device

    def conditioning(self, labels: torch.Tensor | None) -> Conditioning:
        if labels is None:
            return Conditioning()
        labels = labels.to(self.device)
        if not self.num_classes:
            raise DifflabError("this model is unconditional; drop --label/--labels.")
        if bool(((labels < 0) | (labels >= self.num_classes)).any()):
            raise DifflabError(f"labels must lie in 0..{self.num_classes - 1} for this model.")
        return Conditioning(labels=labels)

    @torch.no_grad()
    def sample(
        self,
        n: int,
        *,
        sampler: str = "ddim",
        steps: int = 50,
        eta: float = 0.0,
        sigma_hat: bool = False,
        spacing: str = "uniform",
        seed: int = 0,
        labels: torch.Tensor | None = None,
        clip_x0: bool = False,
        callback: Callback | None = None,
    ) -> torch.Tensor:
        """(n, C, H, W) samples in [-1, 1]-ish (clamp for display). ``sampler`` is "ddim" or "ddpm"."""
        if sampler not in SAMPLER_NAMES:
            raise DifflabError(
                f"unknown sampler {sampler!r}; choose one of {', '.join(SAMPLER_NAMES)}."
            )
        if eta < 0:
            raise DifflabError(f"eta must be >= 0, got {eta}.")
        x_T = self.noise(n, seed)
        generator = torch.Generator().manual_seed(seed + 1)
        cond = self.conditioning(labels)
        timesteps = self.timesteps(steps, spacing)
        denoiser = self.denoiser(clip_x0)
        if sampler == "ddpm":
            return ddpm_sample(
                denoiser,
                x_T,
                timesteps,
                cond,
                variance="beta" if sigma_hat else "posterior",
                generator=generator,
                callback=callback,
            )
        return ddim_sample(
            denoiser,
            x_T,
            timesteps,
            cond,
            eta=eta,
            sigma_hat=sigma_hat,
            generator=generator,
            callback=callback,
        )

    @torch.no_grad()
    def invert(
        self,
        x0: torch.Tensor,
        steps: int,
        spacing: str = "uniform",
        labels: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """DDIM inversion x0 (B, C, H, W) -> x_T."""
        return ddim_invert(
            self.denoiser(), x0, self.timesteps(steps, spacing), self.conditioning(labels)
        )

    @torch.no_grad()
    def reconstruct(
        self,
        x_T: torch.Tensor,
        steps: int,
        spacing: str = "uniform",
        labels: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Deterministic DDIM decoding of x_T (the inverse of :meth:`invert`)."""
        return ddim_sample(
            self.denoiser(), x_T, self.timesteps(steps, spacing), self.conditioning(labels), eta=0.0
        )

    @torch.no_grad()
    def interpolate(
        self,
        seed_a: int,
        seed_b: int,
        num_points: int,
        steps: int,
        spacing: str = "uniform",
        label: int | None = None,
    ) -> torch.Tensor:
        """Decode the slerp path between the noises of two seeds: (num_points, C, H, W)."""
        labels = None if label is None else torch.tensor([label])
        return interpolate(
            self.denoiser(),
            self.noise(1, seed_a),
            self.noise(1, seed_b),
            num_points,
            self.timesteps(steps, spacing),
            self.conditioning(labels),
        )


def load_diffusion_model(path: str | Path, device: str | torch.device = "cpu") -> DiffusionModel:
    """Load a ``kind: diffusion`` checkpoint (the EMA weights of a run, or a file from weights/)."""
    path = Path(path)
    tensors, meta = load_checkpoint(path, kind="diffusion")
    for key in ("arch", "model", "diffusion", "data"):
        if key not in meta:
            raise DifflabError(
                f"{path} lacks the {key!r} entry of a diffusion checkpoint; re-export it with difflab."
            )
    net = build_model(meta["arch"], config_from_dict(meta["arch"], meta["model"]))
    weights = split_prefix(tensors, "ema") or split_prefix(tensors, "model")
    load_weights_strict(net, weights, path)
    diffusion = meta["diffusion"]
    schedule = NoiseSchedule.from_name(
        diffusion["schedule"],
        diffusion["num_timesteps"],
        diffusion.get("beta_start"),
        diffusion.get("beta_end"),
    )
    return DiffusionModel(net.to(device).eval(), schedule, meta)
