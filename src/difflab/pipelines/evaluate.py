"""Evaluate a pipeline: generate with it, score with :mod:`difflab.metrics` (``difflab eval``).

The metrics layer never loads or samples a model; this module hands it a generate callable and the
reference statistics of the model's own test data.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from difflab.diffusion import AUTO, Conditioning
from difflab.metrics.evaluate import (
    DEFAULT_SAMPLE_BATCH,
    LABEL_CLASSIFIERS,
    ProgressCallback,
    score_generator,
)
from difflab.metrics.features import FeatureExtractor
from difflab.metrics.frechet import FeatureStats
from difflab.metrics.reference import load_stats_or_data, parse_data, reference_stats
from difflab.pipelines.diffusion import DiffusionPipeline, batch_seed
from difflab.pipelines.loading import load_pipeline
from difflab.samplers import Guidance


def model_reference(
    pipeline: DiffusionPipeline,
    features: str | FeatureExtractor | None = None,
    device: str | torch.device = "cpu",
) -> FeatureStats:
    """Statistics of the test split of the model's training data, prepared as in training (size,
    padding, folder), cached."""
    data = pipeline.description.data_config
    return reference_stats(
        parse_data(pipeline.description.dataset),
        features=features,
        split="test",
        image_size=data.get("image_size"),
        pad_to_32=bool(data.get("pad_to_32", False)),
        data_dir=data.get("data_dir"),
        device=device,
    )


def evaluate_pipeline(
    pipeline: str | Path | DiffusionPipeline,
    n: int = 2000,
    sampler: str = "ddim",
    steps: int = 50,
    eta: float = 0.0,
    spacing: str = AUTO,
    seed: int = 0,
    batch_size: int = DEFAULT_SAMPLE_BATCH,
    *,
    sigma_hat: bool = False,
    guidance: Guidance | None = None,
    features: str | FeatureExtractor | None = None,
    reference: FeatureStats | str | Path | None = None,
    callback: ProgressCallback | None = None,
    device: str | torch.device = "cpu",
) -> dict[str, Any]:
    """Generate ``n`` images and score them: FD, precision/recall, label accuracy.

    Batch ``i`` is generated with the seed ``SeedSequence([seed, i])``, so a result depends on
    (seed, batch_size) and nothing else. A class-conditional model (or an unconditional one under
    classifier guidance, K the classifier's classes) is asked for the classes 0, 1, ..., K-1, 0,
    ... in turn, and its label accuracy is judged by the feature CNN of its dataset (MNIST or
    Fashion-MNIST), never by the guiding classifier.

    Args:
        pipeline: a loaded pipeline, a checkpoint path or a shipped name.
        n, batch_size: images in all, and per generate call (bounds memory).
        sampler, steps, eta, spacing, sigma_hat, guidance, seed: as for
            :meth:`DiffusionPipeline.generate`.
        features: feature space; default the dataset's (``difflab.metrics.reference``).
        reference: statistics, a ``.npz`` file, a dataset or a folder; default
            :func:`model_reference`.
        callback: after each batch, ``(done, n, images)``.
        device: where the feature networks run (generation runs where the weights are).

    Returns:
        The metrics dict plus the settings, ``sample_seconds``, ``eval_seconds`` and
        ``images_per_second``.
    """
    start_time = time.perf_counter()
    if isinstance(pipeline, DiffusionPipeline):
        checkpoint_name = ""
    else:
        checkpoint_name, pipeline = str(pipeline), load_pipeline(pipeline)
    if spacing == AUTO:  # recorded as the spacing it stands for
        spacing = pipeline.auto_spacing(sampler, guidance)
    if reference is None:
        reference = model_reference(pipeline, features, device)
    else:
        reference = load_stats_or_data(reference, features=features)
    dataset = parse_data(pipeline.description.dataset)
    model = pipeline

    def generate(index: int, count: int, labels: torch.Tensor | None) -> torch.Tensor:
        cond = Conditioning(labels=labels) if labels is not None else None
        return model.generate(
            count,
            cond,
            seed=batch_seed(seed, index),
            sampler=sampler,
            steps=steps,
            spacing=spacing,
            eta=eta,
            sigma_hat=sigma_hat,
            guidance=guidance,
        )

    result = score_generator(
        generate,
        n,
        reference,
        batch_size=batch_size,
        num_classes=pipeline.target_classes(guidance),
        label_classifier=LABEL_CLASSIFIERS.get(dataset.base),
        callback=callback,
        device=device,
    )
    total = time.perf_counter() - start_time
    sample_seconds = result["sample_seconds"]
    result.update(
        checkpoint=checkpoint_name,
        sampler=sampler,
        steps=steps,
        eta=eta,
        sigma_hat=sigma_hat,
        spacing=spacing,
        guidance=guidance.describe() if guidance is not None else None,
        seed=seed,
        batch_size=batch_size,
        sample_precision=pipeline.precision,  # "precision" is the metric
        eval_seconds=total - sample_seconds,
        images_per_second=n / sample_seconds if sample_seconds > 0 else None,
    )
    return result
