"""Reference statistics: the feature statistics that generated images are compared against.

* :func:`parse_data` / :func:`image_batches`: a built-in dataset (with a split) or an image folder
  as batches in [-1, 1]; folders are streamed, so any number of images fits in memory.
* :func:`data_stats` / :func:`reference_stats`: their feature statistics; the reference
  statistics of the built-in datasets are cached in ``$DIFFLAB_CACHE/stats`` (default
  ``~/.cache/difflab``), written atomically.
* :func:`load_stats_or_data`: a statistics file, a dataset or a folder, whichever is given.
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from difflab.data import load_dataset
from difflab.data.emoji import emoji_sources_fingerprint
from difflab.data.folder import common_square_size, index_folder, load_image, probe_image
from difflab.data.transforms import images_from_uint8
from difflab.errors import DifflabError
from difflab.io.cache import cache_dir
from difflab.metrics.features import (
    FeatureExtractor,
    build_feature_extractor,
    extract_features,
)
from difflab.metrics.frechet import FeatureStats

BUILTIN_DATASETS: tuple[str, ...] = ("mnist", "fashion-mnist", "digits", "emoji")
DATA_SPLITS: tuple[str, ...] = ("train", "test", "all")
DEFAULT_FEATURES: dict[str, str] = {
    "mnist": "mnist-cnn",
    "fashion-mnist": "fashion-cnn",
    "digits": "mnist-cnn",
    "emoji": "vgg16",  # colour: FD-VGG16
}
GENERAL_FEATURES = "vgg16"  # for image folders and anything else
DEFAULT_FEATURE_BATCH = 500
KEEP_FEATURES = 10_000  # feature rows a statistics file keeps for precision/recall


# --- data ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DataSpec:
    """A parsed data argument: a built-in dataset (with an optional split) or an image folder."""

    name: str  # "mnist", "fashion-mnist", "digits", "emoji" or "folder:<path>"
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
            "(.npz); pass a folder, mnist, fashion-mnist, digits or emoji."
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


def _stream_folder(
    root: Path, channels: int, image_size: int | None, limit: int | None, batch_size: int
) -> ImageBatches:
    """Every image under ``root`` (sorted by path), decoded ``batch_size`` at a time."""
    files = index_folder(root).files[:limit]
    sizes = [probe_image(path)[0] for path in files]  # headers only; checks every file
    size = image_size if image_size is not None else common_square_size(files, sizes)

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
    if spec.name == "emoji":  # its images come from system packages that apt may update
        key += emoji_sources_fingerprint()
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
