"""Samplers: short pure functions over a Denoiser (or any wrapper around one), their registry, and
the wrappers a run stacks around the Denoiser (guidance and thresholding)."""

from difflab.samplers.common import Callback, StepInfo
from difflab.samplers.ddim import ddim_invert, ddim_sample, ddim_step, ddim_step_std
from difflab.samplers.ddpm import ddpm_sample
from difflab.samplers.dpm_solver import dpm_solver_pp_2m_sample
from difflab.samplers.euler import euler_sample
from difflab.samplers.euler_ancestral import euler_ancestral_sample
from difflab.samplers.guidance import (
    AncestralClassifierGuidance,
    ClassifierFreeGuidance,
    ClassifierGuidance,
    classifier_log_prob_grad,
)
from difflab.samplers.heun import heun_sample
from difflab.samplers.interpolation import interpolate, slerp
from difflab.samplers.registry import (
    DEFAULT_SAMPLER,
    DEFAULT_STEPS,
    SAMPLER_NAMES,
    SAMPLERS,
    SamplerOptions,
    SamplerSpec,
    check_eta,
    get_sampler,
)
from difflab.samplers.stack import THRESHOLDS, WRAPPER_ORDER, Guidance
from difflab.samplers.thresholding import DynamicThreshold, StaticThreshold
from difflab.samplers.unipc import unipc_sample

__all__ = [
    "DEFAULT_SAMPLER",
    "DEFAULT_STEPS",
    "SAMPLERS",
    "SAMPLER_NAMES",
    "THRESHOLDS",
    "WRAPPER_ORDER",
    "AncestralClassifierGuidance",
    "Callback",
    "ClassifierFreeGuidance",
    "ClassifierGuidance",
    "DynamicThreshold",
    "Guidance",
    "SamplerOptions",
    "SamplerSpec",
    "StaticThreshold",
    "StepInfo",
    "check_eta",
    "classifier_log_prob_grad",
    "ddim_invert",
    "ddim_sample",
    "ddim_step",
    "ddim_step_std",
    "ddpm_sample",
    "dpm_solver_pp_2m_sample",
    "euler_ancestral_sample",
    "euler_sample",
    "get_sampler",
    "heun_sample",
    "interpolate",
    "slerp",
    "unipc_sample",
]
