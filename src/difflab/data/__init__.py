"""Datasets: MNIST, Fashion-MNIST, scikit-learn digits, colour emoji, image folders.

Every loader returns images ``(N, C, H, W)`` float32 in [-1, 1] and int64 labels, wrapped in an
in-memory :class:`ImageDataset` (:func:`load_dataset`, the one entry point) or, for folders of
any size and the emoji, a :class:`StreamingImageDataset` over a uint8 store on disk
(:func:`load_streaming_dataset`); :class:`ShardedBatchLoader` reads a rank's shard of each
global batch of the training order.
"""

from difflab.data.dataset import (
    DATASET_NAMES,
    ImageDataset,
    load_configured_split,
    load_dataset,
    load_streaming_dataset,
)
from difflab.data.emoji import emoji_metadata
from difflab.data.streaming import ShardBatch, ShardedBatchLoader, StreamingImageDataset

__all__ = [
    "DATASET_NAMES",
    "ImageDataset",
    "ShardBatch",
    "ShardedBatchLoader",
    "StreamingImageDataset",
    "emoji_metadata",
    "load_configured_split",
    "load_dataset",
    "load_streaming_dataset",
]
