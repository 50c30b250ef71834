"""Sample-quality evaluation: Fréchet distance, precision/recall and label accuracy.

* :func:`data_stats` / :func:`reference_stats`: feature statistics of a dataset or an image
  folder (folders are streamed, so any number of images fits in memory); the reference
  statistics of the built-in datasets are cached in ``$DIFFLAB_CACHE/stats`` (default
  ``~/.cache/difflab``), written atomically.
* :func:`evaluate_samples`: the metrics of a tensor of generated images against reference
  statistics.
* :func:`evaluate_model`: sample a diffusion checkpoint ``batch_size`` images at a time and
  evaluate the samples (what ``difflab eval`` runs).
* :func:`compare`: the Fréchet distance (and precision/recall) between any two of statistics
  files, datasets and image folders (what ``difflab fd`` runs).

Generated images are clamped to [-1, 1] and rounded to 8-bit levels first, so that evaluating a
tensor gives the same numbers as evaluating the PNG files it would be saved as. Precision and
recall compare sets of one size: the larger side is cut to a seed-0 random subset of the smaller
one's size (Kynkäänniemi et al. use equal sizes; the k-NN radii depend on the set size).
"""

from __future__ import annotations

import hashlib
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from difflab.data import load_dataset
from difflab.data.folder import index_folder, load_image, probe_image
from difflab.data.transforms import images_from_uint8
from difflab.errors import DifflabError
from difflab.metrics.features import (
    FeatureExtractor,
    FeatureSpace,
    build_feature_extractor,
    extract_features,
    extractor_for_space,
)
from difflab.metrics.frechet import FeatureStats, frechet_distance
from difflab.metrics.precision_recall import DEFAULT_K, precision_recall
from difflab.pipelines import DiffusionModel, load_diffusion_model

BUILTIN_DATASETS: tuple[str, ...] = ("mnist", "fashion-mnist", "digits")
DATA_SPLITS: tuple[str, ...] = ("train", "test", "all")
DEFAULT_FEATURES: dict[str, str] = {
    "mnist": "mnist-cnn",
    "fashion-mnist": "fashion-cnn",
    "digits": "mnist-cnn",
}
GENERAL_FEATURES = "vgg16"  # for image folders and anything else
CLASSIFIERS: dict[str, str] = {"mnist": "mnist-cnn", "fashion-mnist": "fashion-cnn"}
DEFAULT_SAMPLE_BATCH = 250
DEFAULT_FEATURE_BATCH = 500
KEEP_FEATURES = 10_000  # feature rows a statistics file keeps for precision/recall
SUBSET_SEED = 0

ProgressCallback = Callable[[int, int, torch.Tensor], None]


# --- data ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DataSpec:
    """A parsed data argument: a built-in dataset (with an optional split) or an image folder."""

    name: str  # "mnist", "fashion-mnist", "digits" or "folder:<path>"
    split: str | None  # "train", "test", "all" or None (the default of the caller)

    @property
    def base(self) -> str:
        """``"mnist"`` etc., or ``"folder"``."""
        return "folder" if self.name.startswith("folder:") else self.name

    @property
    def folder(self) -> Path | None:
        return Path(self.name.removeprefix("folder:")) if self.base == "folder" else None


def parse_data(text: str) -> DataSpec:
    """``"mnist"``, ``"mnist:train"``, ``"fashion-mnist:all"``, ``"folder:PATH"`` or a folder path.

    Raises:
        DifflabError: neither a built-in dataset nor an existing folder.
    """
    name, _, split = str(text).partition(":")
    key = name.strip().lower().replace("_", "-")
    if key in BUILTIN_DATASETS:
        if split and split not in DATA_SPLITS:
            raise DifflabError(
                f"{text!r}: unknown split {split!r}; use {key}:train, {key}:test or {key}:all."
            )
        return DataSpec(key, split or None)
    path = Path(str(text).removeprefix("folder:")).expanduser()
    if path.is_dir():
        return DataSpec(f"folder:{path}", None)
    if path.exists():
        raise DifflabError(
            f"{path} is a file, not a folder of images, a dataset name or a statistics file "
            "(.npz); pass a folder, mnist, fashion-mnist or digits."
        )
    raise DifflabError(
        f"{text!r} is neither a dataset ({', '.join(BUILTIN_DATASETS)}) nor an existing folder "
        "of images; check the path."
    )


def default_features(data: str | DataSpec) -> str:
    """The feature space a dataset is measured in: its CNN, or ``vgg16`` for folders."""
    spec = data if isinstance(data, DataSpec) else parse_data(data)
    return DEFAULT_FEATURES.get(spec.base, GENERAL_FEATURES)


@dataclass
class ImageBatches:
    """Images of one data source, produced a batch ``(B, C, S, S)`` in [-1, 1] at a time."""

    source: str
    image_size: int
    count: int
    batches: Iterator[torch.Tensor]


def _check_folder_sizes(files: tuple[Path, ...], sizes: list[tuple[int, int]]) -> int:
    first = sizes[0]
    for path, size in zip(files, sizes, strict=True):
        if size != first:
            raise DifflabError(
                f"folder: images have different sizes ({first[0]}×{first[1]} in {files[0]}, "
                f"{size[0]}×{size[1]} in {path}); pass --image-size to resize and center-crop "
                "them all to one square size."
            )
    if first[0] != first[1]:
        raise DifflabError(
            f"folder: images are {first[0]}×{first[1]}, not square (e.g. {files[0]}); pass "
            "--image-size to resize and center-crop them to a square."
        )
    return first[0]


def _stream_folder(
    root: Path, channels: int, image_size: int | None, limit: int | None, batch_size: int
) -> ImageBatches:
    """Every image under ``root`` (sorted by path), decoded ``batch_size`` at a time."""
    files = index_folder(root).files[:limit]
    sizes = [probe_image(path)[0] for path in files]  # headers only; checks every file
    size = image_size if image_size is not None else _check_folder_sizes(files, sizes)

    def batches() -> Iterator[torch.Tensor]:
        for start in range(0, len(files), batch_size):
            chunk = files[start : start + batch_size]
            pixels = np.stack([load_image(path, size, channels) for path in chunk])
            yield images_from_uint8(pixels)  # (B, channels, size, size)

    return ImageBatches(f"folder:{root}", size, len(files), batches())


def image_batches(
    data: str | DataSpec,
    *,
    split: str | None = None,
    channels: int = 1,
    image_size: int | None = None,
    pad_to_32: bool = False,
    limit: int | None = None,
    batch_size: int = DEFAULT_FEATURE_BATCH,
    data_dir: str | Path | None = None,
) -> ImageBatches:
    """The images of a dataset or folder, in batches.

    Args:
        data: a dataset name (``"mnist:train"`` picks a split) or a folder.
        split: ``"train"``, ``"test"`` or ``"all"`` (both). Default: the one in ``data``, else
            ``"test"`` for datasets and ``"all"`` (every image) for folders.
        channels: channels to decode folder images to (datasets keep their own).
        image_size: resize (folders: shorter side + center crop) to this side; required for a
            folder of mixed sizes.
        pad_to_32: pad 28×28 datasets to 32×32 (as a model trained with ``pad_to_32``).
        limit: at most this many images (the first ones of the split).
        data_dir: the IDX folder of MNIST/Fashion-MNIST, when not the installed one.
    """
    spec = data if isinstance(data, DataSpec) else parse_data(data)
    split = split or spec.split or ("all" if spec.base == "folder" else "test")
    if split not in DATA_SPLITS:
        raise DifflabError(f"split must be one of {', '.join(DATA_SPLITS)}, got {split!r}.")
    if limit is not None and limit < 1:
        raise DifflabError(f"limit must be at least 1, got {limit}.")
    if spec.folder is not None and split == "all":
        if pad_to_32:
            raise DifflabError("pad_to_32 applies to 28×28 datasets, not to image folders.")
        return _stream_folder(spec.folder, channels, image_size, limit, batch_size)
    options: dict[str, Any] = dict(image_size=image_size, pad_to_32=pad_to_32, data_dir=data_dir)
    if spec.folder is not None:
        options["channels"] = channels
    splits = ("train", "test") if split == "all" else (split,)
    parts = [load_dataset(spec.name, split=s, limit=limit, **options).images for s in splits]
    images = torch.cat(parts)[:limit]  # (N, C, S, S)
    source = f"{spec.name}:{split}"
    batches = (images[i : i + batch_size] for i in range(0, len(images), batch_size))
    return ImageBatches(source, images.shape[-1], len(images), batches)


# --- statistics ---------------------------------------------------------------------------------


def _resolve_extractor(
    features: str | FeatureExtractor | None, spec: DataSpec, device: str | torch.device
) -> FeatureExtractor:
    if isinstance(features, FeatureExtractor):
        return features
    return build_feature_extractor(features or default_features(spec), device=device)


def data_stats(
    data: str | DataSpec,
    *,
    features: str | FeatureExtractor | None = None,
    split: str | None = None,
    image_size: int | None = None,
    pad_to_32: bool = False,
    limit: int | None = None,
    data_dir: str | Path | None = None,
    batch_size: int = DEFAULT_FEATURE_BATCH,
    keep_features: int | None = KEEP_FEATURES,
    device: str | torch.device = "cpu",
) -> FeatureStats:
    """Feature statistics of a dataset or an image folder (see :func:`image_batches`).

    Args:
        features: a feature-space name or extractor; default :func:`default_features`.
        keep_features: feature rows to store for precision/recall (seed-0 subset; 0: none).
    """
    spec = data if isinstance(data, DataSpec) else parse_data(data)
    extractor = _resolve_extractor(features, spec, device)
    source = image_batches(
        spec,
        split=split,
        channels=extractor.channels,
        image_size=image_size,
        pad_to_32=pad_to_32,
        limit=limit,
        batch_size=batch_size,
        data_dir=data_dir,
    )
    rows = [extract_features(extractor, batch, batch_size) for batch in source.batches]
    return FeatureStats.from_features(
        torch.cat(rows) if rows else torch.empty(0, extractor.dim),
        extractor.space.id,
        source=source.source,
        image_size=source.image_size,
        keep_features=keep_features,
    )


def stats_cache_dir() -> Path:
    """``$DIFFLAB_CACHE/stats`` (default ``~/.cache/difflab/stats``)."""
    from difflab.metrics.pretrained import cache_dir  # the one definition of the cache folder

    return cache_dir() / "stats"


def reference_stats(
    data: str | DataSpec = "mnist",
    *,
    features: str | FeatureExtractor | None = None,
    split: str | None = "test",
    image_size: int | None = None,
    pad_to_32: bool = False,
    limit: int | None = None,
    data_dir: str | Path | None = None,
    batch_size: int = DEFAULT_FEATURE_BATCH,
    device: str | torch.device = "cpu",
) -> FeatureStats:
    """:func:`data_stats` of the reference images, cached for the built-in datasets.

    The cache file is named after everything that changes the numbers (dataset, split, limit,
    size, padding and the feature space with its weight hash); an unreadable cache file is
    recomputed. Folders are not cached (their content can change): save their statistics with
    ``difflab fd-stats`` instead.
    """
    spec = data if isinstance(data, DataSpec) else parse_data(data)
    extractor = _resolve_extractor(features, spec, device)
    split = split or spec.split

    def compute() -> FeatureStats:
        return data_stats(
            spec,
            features=extractor,
            split=split,
            image_size=image_size,
            pad_to_32=pad_to_32,
            limit=limit,
            data_dir=data_dir,
            batch_size=batch_size,
        )

    if spec.base not in BUILTIN_DATASETS or data_dir is not None:
        return compute()
    key = repr((spec.name, split, limit, image_size, pad_to_32, KEEP_FEATURES, extractor.space.id))
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    path = stats_cache_dir() / f"{spec.name}-{split or 'test'}-{extractor.name}-{digest}.npz"
    if path.is_file():
        try:
            return FeatureStats.load(path, extractor.space.id)
        except DifflabError:
            pass  # a damaged or stale cache file: recompute and replace it
    stats = compute()
    try:
        stats.save(path)
    except OSError as error:
        warnings.warn(
            f"could not cache reference statistics in {path} ({error}); set DIFFLAB_CACHE to a "
            "writable folder to avoid recomputing them.",
            stacklevel=2,
        )
    return stats


def load_stats_or_data(
    value: str | Path | FeatureStats,
    *,
    features: str | FeatureExtractor | None = None,
    **options: Any,
) -> FeatureStats:
    """Statistics from a ``.npz`` file, or of a dataset/folder via :func:`reference_stats`.

    With ``features``, a statistics file must be in that feature space.
    """
    if isinstance(value, FeatureStats):
        return value
    if str(value).endswith(".npz"):
        if features is None:
            return FeatureStats.load(value)
        if not isinstance(features, FeatureExtractor):
            features = build_feature_extractor(features)
        return FeatureStats.load(value, features.space.id)
    return reference_stats(str(value), features=features, **options)


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


def _batch_seed(seed: int, index: int) -> int:
    """An independent seed for batch ``index`` of a run with ``seed`` (NumPy SeedSequence)."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0])


def evaluate_model(
    checkpoint: str | Path | DiffusionModel,
    n: int = 2000,
    sampler: str = "ddim",
    steps: int = 50,
    eta: float = 0.0,
    spacing: str = "uniform",
    seed: int = 0,
    batch_size: int = DEFAULT_SAMPLE_BATCH,
    *,
    sigma_hat: bool = False,
    clip_x0: bool = False,
    features: str | FeatureExtractor | None = None,
    reference: FeatureStats | str | Path | None = None,
    callback: ProgressCallback | None = None,
    device: str | torch.device = "cpu",
) -> dict[str, Any]:
    """Sample ``n`` images from a diffusion checkpoint and evaluate them (``difflab eval``).

    Sampling runs ``batch_size`` images at a time; batch ``i`` uses the seed
    ``SeedSequence([seed, i])``, so a result depends on (seed, batch_size) and nothing else.
    A class-conditional model is asked for the classes ``0, 1, ..., K-1, 0, 1, ...`` in turn, and
    its label accuracy is judged by the feature CNN of its dataset (MNIST or Fashion-MNIST).

    Args:
        checkpoint: a ``kind: diffusion`` checkpoint path, or a loaded
            :class:`~difflab.pipelines.DiffusionModel` (to evaluate many settings of one model
            without reloading it).
        n: number of samples (≥ 2).
        sampler, steps, eta, spacing, sigma_hat, clip_x0: as for ``DiffusionModel.sample``.
        seed: the run's seed.
        batch_size: images sampled at once (bounds memory).
        features: feature space; default the checkpoint dataset's (:func:`default_features`).
        reference: reference statistics (object, ``.npz``, dataset or folder); default the
            test split of the checkpoint's training data, prepared as in training (size,
            padding), cached.
        callback: called after each batch with ``(done, n, images)``, images the quantized batch.
        device: where the feature networks run (sampling runs where the model's weights are).

    Returns:
        The dict of :func:`evaluate_samples` plus ``checkpoint``, the sampling settings,
        ``sample_seconds``, ``eval_seconds`` and ``images_per_second``.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 2:
        raise DifflabError(f"n must be at least 2 samples (a covariance needs two), got {n!r}.")
    if batch_size < 1:
        raise DifflabError(f"batch size must be at least 1, got {batch_size}.")
    if isinstance(checkpoint, DiffusionModel):
        model, checkpoint_name = checkpoint, ""
    else:
        model, checkpoint_name = load_diffusion_model(checkpoint), str(checkpoint)
    start_time = time.perf_counter()
    dataset = parse_data(model.meta["data"]["name"])
    if reference is None:
        data_config = model.meta.get("experiment", {}).get("data", {})
        reference = reference_stats(
            dataset,
            features=features,
            split="test",
            image_size=data_config.get("image_size"),
            pad_to_32=bool(data_config.get("pad_to_32", False)),
            data_dir=data_config.get("data_dir"),
            device=device,
        )
    else:
        reference = load_stats_or_data(reference, features=features)
    extractor = extractor_for_space(reference.feature_space, device)
    _check_image_size(torch.empty(0, *model.image_shape), reference)
    classifier: FeatureExtractor | None = None
    if model.num_classes and dataset.base in CLASSIFIERS:
        name = CLASSIFIERS[dataset.base]
        classifier = (
            extractor if extractor.name == name else build_feature_extractor(name, device=device)
        )
    all_labels = torch.arange(n) % model.num_classes if model.num_classes else None
    features_out, predictions = [], []
    sample_seconds = 0.0
    for index, start in enumerate(range(0, n, batch_size)):
        count = min(batch_size, n - start)
        labels = None if all_labels is None else all_labels[start : start + count]
        tick = time.perf_counter()
        images = model.sample(
            count,
            sampler=sampler,
            steps=steps,
            eta=eta,
            sigma_hat=sigma_hat,
            spacing=spacing,
            seed=_batch_seed(seed, index),
            labels=labels,
            clip_x0=clip_x0,
        )
        sample_seconds += time.perf_counter() - tick
        images = quantize_images(images)  # (count, C, H, W)
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
    total = time.perf_counter() - start_time
    result.update(
        checkpoint=checkpoint_name,
        sampler=sampler,
        steps=steps,
        eta=eta,
        sigma_hat=sigma_hat,
        spacing=spacing,
        clip_x0=clip_x0,
        seed=seed,
        batch_size=batch_size,
        sample_seconds=sample_seconds,
        eval_seconds=total - sample_seconds,
        images_per_second=n / sample_seconds if sample_seconds > 0 else None,
    )
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
