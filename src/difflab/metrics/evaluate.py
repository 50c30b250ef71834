"""Sample-quality evaluation: Fréchet distance, precision/recall and label accuracy.

The reference side (datasets, folders, statistics files and their cache) is
:mod:`difflab.metrics.reference`.

* :func:`evaluate_samples`: the metrics of a tensor of generated images against reference
  statistics.
* :func:`score_generator`: call a generator ``batch_size`` images at a time and score what it
  returns (what ``difflab eval`` runs through :func:`difflab.pipelines.evaluate_pipeline`; metrics
  never load or sample a model themselves).
* :func:`compare`: the Fréchet distance (and precision/recall) between any two of statistics
  files, datasets and image folders (what ``difflab fd`` runs).

Generated images are clamped to [-1, 1] and rounded to 8-bit levels first, so that evaluating a
tensor gives the same numbers as evaluating the PNG files it would be saved as. Precision and
recall compare sets of one size: the larger side is cut to a seed-0 random subset of the smaller
one's size (Kynkäänniemi et al. use equal sizes; the k-NN radii depend on the set size).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from difflab.errors import DifflabError
from difflab.metrics.features import (
    FeatureExtractor,
    FeatureSpace,
    build_feature_extractor,
    extractor_for_space,
)
from difflab.metrics.frechet import FeatureStats, frechet_distance
from difflab.metrics.precision_recall import DEFAULT_K, precision_recall
from difflab.metrics.reference import (
    BUILTIN_DATASETS,
    DEFAULT_FEATURE_BATCH,
    DEFAULT_FEATURES,
    GENERAL_FEATURES,
    data_stats,
    load_stats_or_data,
    parse_data,
    reference_stats,
)

DEFAULT_SAMPLE_BATCH = 250
SUBSET_SEED = 0
LABEL_CLASSIFIERS: dict[str, str] = {"mnist": "mnist-cnn", "fashion-mnist": "fashion-cnn"}

ProgressCallback = Callable[[int, int, torch.Tensor], None]


# --- metrics ------------------------------------------------------------------------------------


def quantize_images(images: torch.Tensor) -> torch.Tensor:
    """Clamp to [-1, 1] and round to the 256 levels of an 8-bit PNG: ``(B, C, H, W)``."""
    return ((images.float().clamp(-1.0, 1.0) + 1.0) * 127.5).round() / 127.5 - 1.0


def _seeded_subset(rows: np.ndarray | torch.Tensor, size: int) -> np.ndarray | torch.Tensor:
    if len(rows) <= size:
        return rows
    chosen = np.sort(np.random.default_rng(SUBSET_SEED).permutation(len(rows))[:size])
    return rows[torch.from_numpy(chosen)] if isinstance(rows, torch.Tensor) else rows[chosen]


def _precision_recall_fields(real: np.ndarray | None, fake: np.ndarray | None) -> dict[str, Any]:
    """precision, recall, k and the common set size, or Nones when features are missing."""
    if real is None or fake is None or min(len(real), len(fake)) <= DEFAULT_K:
        return {"precision": None, "recall": None, "k": DEFAULT_K, "pr_n": 0}
    size = min(len(real), len(fake))
    result = precision_recall(_seeded_subset(real, size), _seeded_subset(fake, size), DEFAULT_K)
    return {"precision": result.precision, "recall": result.recall, "k": result.k, "pr_n": size}


def metrics_from_features(
    fake: torch.Tensor,
    reference: FeatureStats,
    predictions: torch.Tensor | None = None,
    labels: torch.Tensor | None = None,
) -> dict[str, Any]:
    """The result dict of :func:`evaluate_samples` from features already extracted.

    Args:
        fake: ``(N, D)`` features of the generated images, in the reference's feature space.
        reference: the reference statistics (with kept features for precision/recall).
        predictions, labels: ``(N,)`` predicted and intended classes, for label accuracy.
    """
    metric_name = FeatureSpace.parse(reference.feature_space).metric_name
    fake_stats = FeatureStats.from_features(
        fake, reference.feature_space, source="samples", keep_features=0
    )
    fd = frechet_distance(reference.mean, reference.cov, fake_stats.mean, fake_stats.cov)
    result: dict[str, Any] = {"metric": metric_name, "fd": fd}
    result.update(_precision_recall_fields(reference.features, fake.numpy()))
    result["label_accuracy"] = (
        float((predictions == labels).double().mean())
        if predictions is not None and labels is not None
        else None
    )
    result.update(
        n=len(fake),
        feature_space=reference.feature_space,
        reference={
            "source": reference.source,
            "n": reference.count,
            "image_size": reference.image_size,
        },
    )
    return result


def _check_image_size(images: torch.Tensor, reference: FeatureStats) -> None:
    if images.ndim != 4:
        raise DifflabError(f"images must be (N, C, H, W), got shape {tuple(images.shape)}.")
    side = images.shape[-1]
    if reference.image_size and (images.shape[-2] != side or side != reference.image_size):
        raise DifflabError(
            f"the images are {images.shape[-2]}×{side} but the reference statistics "
            f"({reference.source}) are of {reference.image_size}×{reference.image_size} images; "
            "compare images of one size (resize them, or compute the reference at this size)."
        )


@torch.inference_mode()
def evaluate_samples(
    images: torch.Tensor,
    reference_stats: FeatureStats | str | Path,
    classifier: Callable[[torch.Tensor], torch.Tensor] | None = None,
    labels: torch.Tensor | None = None,
    *,
    batch_size: int = DEFAULT_FEATURE_BATCH,
) -> dict[str, Any]:
    """FD, precision/recall and (with ``labels``) label accuracy of generated images.

    Args:
        images: ``(N, C, H, W)`` generated images in [-1, 1] (clamped and 8-bit rounded here),
            N ≥ 2, of the reference's image size.
        reference_stats: :class:`FeatureStats`, a ``.npz`` file, or a dataset/folder (e.g.
            ``"mnist"``: the cached MNIST test statistics in FD-MNIST space). The feature space
            is the reference's.
        classifier: maps images ``(B, C, H, W)`` to logits ``(B, K)``; default the feature CNN
            itself when the space is ``mnist-cnn`` or ``fashion-cnn``.
        labels: ``(N,)`` intended classes of the images (class-conditional generation).
        batch_size: images per forward pass of the feature network.

    Returns:
        ``{"metric": "FD-MNIST", "fd", "precision", "recall", "k", "pr_n", "label_accuracy",
        "n", "feature_space", "reference": {"source", "n", "image_size"}}``; precision/recall
        are None when the reference kept no features, label_accuracy when no labels are given.
    """
    reference = load_stats_or_data(reference_stats)
    _check_image_size(images, reference)
    if labels is not None and tuple(labels.shape) != (len(images),):
        raise DifflabError(
            f"labels must have shape ({len(images)},) to match the images, got "
            f"{tuple(labels.shape)}."
        )
    extractor = extractor_for_space(reference.feature_space)
    use_extractor = labels is not None and classifier is None
    if use_extractor and not extractor.can_classify:
        raise DifflabError(
            f"label accuracy needs a classifier, and {extractor.metric_name} features come "
            "without one; pass classifier= (a module mapping images to logits)."
        )
    features, predictions = [], []
    for start in range(0, len(images), batch_size):
        batch = quantize_images(images[start : start + batch_size])
        if use_extractor:
            feats, logits = extractor.features_and_logits(batch)
            predictions.append(logits.argmax(1).cpu())
        else:
            feats = extractor(batch)
            if labels is not None and classifier is not None:
                predictions.append(classifier(batch).argmax(1).cpu())
        features.append(feats.cpu())
    fake = torch.cat(features) if features else torch.empty(0, extractor.dim)
    predicted = torch.cat(predictions) if predictions else None
    return metrics_from_features(fake, reference, predicted, labels)


GenerateBatch = Callable[[int, int, torch.Tensor | None], torch.Tensor]
"""``generate(index, count, labels)`` -> (count, C, H, W) images of batch ``index`` (labels (count,)
or None)."""


def score_generator(
    generate: GenerateBatch,
    n: int,
    reference: FeatureStats,
    *,
    batch_size: int = DEFAULT_SAMPLE_BATCH,
    num_classes: int = 0,
    label_classifier: str | None = None,
    callback: ProgressCallback | None = None,
    device: str | torch.device = "cpu",
) -> dict[str, Any]:
    """Generate ``n`` images ``batch_size`` at a time and score them against ``reference``.

    Only features are kept between batches, so n is bounded by time, not memory. With
    ``num_classes`` K > 0 the generator is asked for the classes ``0, 1, ..., K-1, 0, ...`` in
    turn, and with ``label_classifier`` (a feature CNN name, e.g. ``"mnist-cnn"``) the label
    accuracy is judged by that network.

    Returns:
        The dict of :func:`evaluate_samples` plus ``sample_seconds`` (time spent in ``generate``).
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 2:
        raise DifflabError(f"n must be at least 2 samples (a covariance needs two), got {n!r}.")
    if batch_size < 1:
        raise DifflabError(f"batch size must be at least 1, got {batch_size}.")
    extractor = extractor_for_space(reference.feature_space, device)
    classifier: FeatureExtractor | None = None
    if num_classes and label_classifier is not None:
        classifier = (
            extractor
            if extractor.name == label_classifier
            else build_feature_extractor(label_classifier, device=device)
        )
    all_labels = torch.arange(n) % num_classes if num_classes else None
    features_out, predictions = [], []
    sample_seconds = 0.0
    for index, start in enumerate(range(0, n, batch_size)):
        count = min(batch_size, n - start)
        labels = None if all_labels is None else all_labels[start : start + count]
        tick = time.perf_counter()
        images = quantize_images(generate(index, count, labels))  # (count, C, H, W)
        sample_seconds += time.perf_counter() - tick
        if index == 0:
            _check_image_size(images, reference)
        with torch.inference_mode():
            if classifier is extractor:
                feats, logits = extractor.features_and_logits(images)
                predictions.append(logits.argmax(1).cpu())
            else:
                feats = extractor(images)
                if classifier is not None:
                    predictions.append(classifier.features_and_logits(images)[1].argmax(1).cpu())
        features_out.append(feats.cpu())
        if callback is not None:
            callback(start + count, n, images)
    predicted = torch.cat(predictions) if predictions else None
    if predicted is None:
        all_labels = None  # no classifier for this dataset: no label accuracy
    result = metrics_from_features(torch.cat(features_out), reference, predicted, all_labels)
    result["sample_seconds"] = sample_seconds
    return result


def compare(
    a: str | Path | FeatureStats,
    b: str | Path | FeatureStats,
    *,
    features: str | FeatureExtractor | None = None,
    split: str | None = None,
    image_size: int | None = None,
    limit: int | None = None,
    batch_size: int = DEFAULT_FEATURE_BATCH,
    device: str | torch.device = "cpu",
) -> dict[str, Any]:
    """Fréchet distance and precision/recall between two sets (``difflab fd A B``).

    Each side is a statistics file (``.npz``), a dataset (``"mnist"``, ``"mnist:train"``) or an
    image folder. The feature space is ``features`` when given, else that of a statistics file,
    else the dataset's CNN (:func:`default_features`), else ``vgg16``. ``B`` plays the role of
    the generated set in precision/recall (precision: how much of B lies in A's manifold).
    """
    loaded = {
        id(v): load_stats_or_data(v, features=features)
        for v in (a, b)
        if isinstance(v, FeatureStats) or str(v).endswith(".npz")
    }
    data_sides = [parse_data(str(v)) for v in (a, b) if id(v) not in loaded]
    extractor: FeatureExtractor | None = None
    if isinstance(features, FeatureExtractor):
        extractor = features
    elif data_sides and features is not None:
        extractor = build_feature_extractor(features, device=device)
    elif data_sides and loaded:  # measure the data in the space of the statistics file
        extractor = extractor_for_space(next(iter(loaded.values())).feature_space, device)
    elif data_sides:
        names = [DEFAULT_FEATURES[s.base] for s in data_sides if s.base in DEFAULT_FEATURES]
        extractor = build_feature_extractor(names[0] if names else GENERAL_FEATURES, device=device)

    def side(value: str | Path | FeatureStats) -> FeatureStats:
        if id(value) in loaded:
            return loaded[id(value)]
        spec = parse_data(str(value))
        compute = reference_stats if spec.base in BUILTIN_DATASETS else data_stats  # cached or not
        return compute(
            spec,
            features=extractor,
            split=split,
            image_size=image_size,
            limit=limit,
            batch_size=batch_size,
        )

    stats_a, stats_b = side(a), side(b)
    stats_a.check_compatible(stats_b, (str(a), str(b)))
    result: dict[str, Any] = {
        "metric": FeatureSpace.parse(stats_a.feature_space).metric_name,
        "fd": stats_a.frechet_distance(stats_b),
    }
    result.update(_precision_recall_fields(stats_a.features, stats_b.features))
    result.update(
        feature_space=stats_a.feature_space,
        a={"source": stats_a.source, "n": stats_a.count, "image_size": stats_a.image_size},
        b={"source": stats_b.source, "n": stats_b.count, "image_size": stats_b.image_size},
    )
    return result


def format_summary(result: dict[str, Any]) -> str:
    """``"FD-MNIST 3.214 | precision 0.712 | recall 0.651 | label accuracy 0.982"``."""
    parts = [f"{result['metric']} {result['fd']:.3f}"]
    if result.get("precision") is not None:
        parts.append(f"precision {result['precision']:.3f} | recall {result['recall']:.3f}")
    if result.get("label_accuracy") is not None:
        parts.append(f"label accuracy {result['label_accuracy']:.3f}")
    return " | ".join(parts)
