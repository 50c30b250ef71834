"""Generation: a network + schedule + optional autoencoder stage + ordered wrappers + a sampler.

:class:`DiffusionPipeline` is the one generation path (``generate``, ``invert``, ``interpolate``);
:func:`load_pipeline` reads one from a checkpoint; :func:`evaluate_pipeline` generates and scores.
"""

from difflab.pipelines.cascade import CascadePipeline, StageSettings, text_to_image
from difflab.pipelines.description import ModelDescription
from difflab.pipelines.diffusion import PRECISIONS, Autoencoder, DiffusionPipeline, batch_seed
from difflab.pipelines.evaluate import evaluate_pipeline, model_reference
from difflab.pipelines.loading import (
    load_control_pipeline,
    load_noisy_classifier,
    load_pipeline,
    schedule_from_meta,
)

__all__ = [
    "PRECISIONS",
    "Autoencoder",
    "CascadePipeline",
    "DiffusionPipeline",
    "ModelDescription",
    "StageSettings",
    "batch_seed",
    "evaluate_pipeline",
    "load_control_pipeline",
    "load_noisy_classifier",
    "load_pipeline",
    "model_reference",
    "schedule_from_meta",
    "text_to_image",
]
