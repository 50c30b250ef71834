"""Generation: a network + schedule + optional autoencoder stage + ordered wrappers + a sampler.

:class:`DiffusionPipeline` is the one generation path (``generate``, ``invert``, ``interpolate``);
:func:`load_pipeline` reads one from a checkpoint; :func:`evaluate_pipeline` generates and scores.
"""

from difflab.pipelines.description import ModelDescription
from difflab.pipelines.diffusion import PRECISIONS, Autoencoder, DiffusionPipeline, batch_seed
from difflab.pipelines.evaluate import evaluate_pipeline, model_reference
from difflab.pipelines.loading import load_noisy_classifier, load_pipeline, schedule_from_meta

__all__ = [
    "PRECISIONS",
    "Autoencoder",
    "DiffusionPipeline",
    "ModelDescription",
    "batch_seed",
    "evaluate_pipeline",
    "load_noisy_classifier",
    "load_pipeline",
    "model_reference",
    "schedule_from_meta",
]
