"""Datasets as in-memory tensors: MNIST, Fashion-MNIST, scikit-learn digits, image folders.

Every loader returns images ``(N, C, H, W)`` float32 in [-1, 1] and int64 labels, wrapped in an
:class:`ImageDataset`; :func:`load_dataset` is the one entry point.
"""

from difflab.data.dataset import DATASET_NAMES, ImageDataset, load_configured_split, load_dataset

__all__ = ["DATASET_NAMES", "ImageDataset", "load_configured_split", "load_dataset"]
