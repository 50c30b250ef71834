"""Diffusion core: schedules, the forward process, the Denoiser and the training loss."""

from difflab.diffusion.conditioning import NULL_LABEL, Conditioning
from difflab.diffusion.denoiser import (
    PREDICTION_TYPES,
    Denoiser,
    Network,
    Prediction,
    eps_from_x0,
    prediction_to_eps_x0,
)
from difflab.diffusion.loss import denoising_loss, draw_noise, min_snr_weight, prediction_target
from difflab.diffusion.schedule import SCHEDULE_NAMES, NoiseSchedule
from difflab.diffusion.spacing import AUTO, SPACING_NAMES, automatic_spacing, timestep_sequence

__all__ = [
    "AUTO",
    "NULL_LABEL",
    "PREDICTION_TYPES",
    "SCHEDULE_NAMES",
    "SPACING_NAMES",
    "Conditioning",
    "Denoiser",
    "Network",
    "NoiseSchedule",
    "Prediction",
    "automatic_spacing",
    "denoising_loss",
    "draw_noise",
    "eps_from_x0",
    "min_snr_weight",
    "prediction_target",
    "prediction_to_eps_x0",
    "timestep_sequence",
]
