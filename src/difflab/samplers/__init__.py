"""Samplers: short pure functions over a Denoiser (or any guidance wrapper around one)."""

from difflab.samplers.common import Callback, StepInfo
from difflab.samplers.ddim import ddim_invert, ddim_sample, ddim_step, ddim_step_std
from difflab.samplers.ddpm import ddpm_sample
from difflab.samplers.interpolation import interpolate, slerp

SAMPLER_NAMES: tuple[str, ...] = ("ddim", "ddpm")

__all__ = [
    "SAMPLER_NAMES",
    "Callback",
    "StepInfo",
    "ddim_invert",
    "ddim_sample",
    "ddim_step",
    "ddim_step_std",
    "ddpm_sample",
    "interpolate",
    "slerp",
]
