"""Samplers: short pure functions over a Denoiser (or any guidance wrapper around one)."""

from difflab.samplers.common import Callback, StepInfo
from difflab.samplers.ddim import ddim_invert, ddim_sample, ddim_step, ddim_step_std
from difflab.samplers.ddpm import ddpm_sample
from difflab.samplers.guidance import (
    AncestralClassifierGuidance,
    ClassifierFreeGuidance,
    ClassifierGuidance,
    Guidance,
    classifier_log_prob_grad,
)
from difflab.samplers.interpolation import interpolate, slerp

SAMPLER_NAMES: tuple[str, ...] = ("ddim", "ddpm")

__all__ = [
    "SAMPLER_NAMES",
    "AncestralClassifierGuidance",
    "Callback",
    "ClassifierFreeGuidance",
    "ClassifierGuidance",
    "Guidance",
    "StepInfo",
    "classifier_log_prob_grad",
    "ddim_invert",
    "ddim_sample",
    "ddim_step",
    "ddim_step_std",
    "ddpm_sample",
    "interpolate",
    "slerp",
]
