"""The in-memory image dataset every trainer and metric consumes, and the one loader for all.

``load_dataset(name, ...)`` reads MNIST, Fashion-MNIST, scikit-learn digits, the colour emoji or
an image folder, then applies the optional ``image_size`` resize, ``pad_to_32`` and ``channels``
conversion, and returns an :class:`ImageDataset` whose images are ``(N, C, H, W)`` float32 in
[-1, 1]. ``load_streaming_dataset(name, ...)`` gives the same items of a folder or the emoji read
from a uint8 store on disk (:mod:`difflab.data.streaming`), for sets too large for memory.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from difflab.data.digits import DIGITS_CLASS_NAMES, load_digits_split
from difflab.data.emoji import (
    DEFAULT_IMAGE_SIZE as EMOJI_IMAGE_SIZE,
)
from difflab.data.emoji import (
    EMOJI_GROUPS,
    emoji_rows,
    emoji_store,
    load_emoji_split,
)
from difflab.data.folder import TEST_DENOMINATOR as FOLDER_TEST_DENOMINATOR
from difflab.data.folder import load_folder_split
from difflab.data.mnist import load_idx_split
from difflab.data.splits import SPLITS, split_indices
from difflab.data.streaming import StreamingImageDataset, folder_image_store
from difflab.data.transforms import (
    convert_channels,
    images_from_uint8,
    pad_images_to_32,
    resize_images,
)
from difflab.errors import DifflabError
from difflab.io.process_group import SINGLE, Distributed

DATASET_NAMES: tuple[str, ...] = ("mnist", "fashion-mnist", "digits", "folder", "emoji")
STREAMING_NAMES: tuple[str, ...] = ("folder", "emoji")  # the others are small: in memory
MAX_IMAGE_SIZE = 2048  # pixels a side: a whole split is held in memory as float32


@dataclass
class ImageDataset:
    """A whole split of a dataset, held in memory.

    Attributes:
        name: ``"mnist"``, ``"fashion-mnist"``, ``"digits"``, ``"emoji"`` or ``"folder:<path>"``.
        images: ``(N, C, H, W)`` float32 in [-1, 1], contiguous, ``H == W``.
        labels: ``(N,)`` int64; all zeros when the data has no labels.
        class_names: one name per label value; ``()`` when unlabelled.
        captions: one text per image (emoji: its CLDR name); ``()`` when the data has none.
    """

    name: str
    images: torch.Tensor  # (N, C, H, W) float32 in [-1, 1]
    labels: torch.Tensor  # (N,) int64
    class_names: tuple[str, ...]
    captions: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.images.ndim != 4 or self.images.dtype != torch.float32:
            raise ValueError(
                f"images must be (N, C, H, W) float32, got {self.images.dtype} "
                f"{tuple(self.images.shape)}"
            )
        if self.labels.shape != (len(self.images),) or self.labels.dtype != torch.int64:
            raise ValueError(
                f"labels must be ({len(self.images)},) int64, got {self.labels.dtype} "
                f"{tuple(self.labels.shape)}"
            )
        if self.captions and len(self.captions) != len(self.images):
            raise ValueError(
                f"captions must be empty or one per image ({len(self.images)}), got "
                f"{len(self.captions)}"
            )

    @property
    def num_classes(self) -> int:
        """Number of classes; 0 when unlabelled."""
        return len(self.class_names)

    @property
    def channels(self) -> int:
        """C: 1 for gray, 3 for RGB."""
        return self.images.shape[1]

    @property
    def image_size(self) -> int:
        """H (= W), in pixels."""
        return self.images.shape[2]

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(image (C, H, W), label ())`` of one item, so a DataLoader can read it too."""
        return self.images[index], self.labels[index]


def _is_positive_int(value: object) -> bool:
    if isinstance(value, bool):
        return False
    try:
        return operator.index(value) >= 1
    except TypeError:
        return False


def _check_options(
    split: str, image_size: int | None, channels: int | None, limit: int | None
) -> None:
    if split not in SPLITS:
        raise DifflabError(f"split must be 'train' or 'test', got {split!r}.")
    if image_size is not None and not _is_positive_int(image_size):
        raise DifflabError(f"image_size must be a positive number of pixels, got {image_size!r}.")
    if image_size is not None and image_size > MAX_IMAGE_SIZE:
        raise DifflabError(
            f"image_size {image_size} is larger than difflab's limit of {MAX_IMAGE_SIZE} pixels "
            "(every image of a split is held in memory); choose a smaller image_size."
        )
    if channels is not None and (isinstance(channels, bool) or channels not in (1, 3)):
        raise DifflabError(f"channels must be 1 (gray) or 3 (RGB), got {channels!r}.")
    if limit is not None and not _is_positive_int(limit):
        raise DifflabError(f"limit must be a positive number of items, got {limit!r}.")


def _resolve_name(name: str, data_dir: str | Path | None) -> tuple[str, Path | None]:
    """``(dataset, folder)``: a known name, or ``"folder"`` with the folder to read."""
    key = name.strip().lower().replace("_", "-")
    if key in ("mnist", "fashion-mnist", "digits", "emoji"):
        return key, None
    if key == "folder":
        if data_dir is None:
            raise DifflabError(
                "folder: no folder given; pass --data-dir with a folder of images, or the folder "
                "path itself as the dataset name."
            )
        return "folder", Path(data_dir).expanduser()
    if name.startswith("folder:"):
        return "folder", Path(name[len("folder:") :]).expanduser()
    path = Path(name).expanduser()
    if path.is_dir():
        return "folder", path
    if "/" in name or "\\" in name or name.startswith("."):
        raise DifflabError(
            f"folder: {path} does not exist; pass an existing folder of images or one of "
            f"{', '.join(DATASET_NAMES)}."
        )
    raise DifflabError(
        f"unknown dataset {name!r}; use one of {', '.join(DATASET_NAMES)} or the path of an "
        "existing image folder."
    )


def load_dataset(
    name: str,
    *,
    split: str = "train",
    data_dir: str | Path | None = None,
    image_size: int | None = None,
    channels: int | None = None,
    pad_to_32: bool = False,
    limit: int | None = None,
) -> ImageDataset:
    """Load one split of a dataset into memory.

    Args:
        name: one of :data:`DATASET_NAMES`, ``"folder:<path>"``, or the path of an existing
            folder (read as ``"folder"``).
        split: ``"train"`` or ``"test"``. MNIST and Fashion-MNIST use their official files;
            digits keeps the last 20 % and folders the last 10 % of a seed-0 permutation as test,
            emoji the last 10 % of each group's (:mod:`difflab.data.emoji`).
        data_dir: MNIST/Fashion-MNIST: a folder with the four IDX files (default: the installed
            package's); folder: the image folder. Not accepted for digits and emoji.
        image_size: side of the square output in pixels. Folders: shorter side resized (bicubic)
            then center crop, required unless all images share one square size. Emoji: each
            glyph padded to a square and resized (Lanczos), default 64. Others: the whole
            tensor resized (area to shrink, bilinear to grow).
        channels: 1 (gray) or 3 (RGB). Gray → RGB repeats; RGB → gray takes ITU-R 601-2 luma.
            Default: the data's own (1 for MNIST-like sets; see :mod:`difflab.data.folder`).
        pad_to_32: pad 28×28 images with 2 background pixels (-1) per side to 32×32, after any
            resize; an error for other sizes.
        limit: keep only the first ``limit`` items of the split (deterministic).

    Returns:
        An :class:`ImageDataset` with ``images`` ``(N, C, H, W)`` float32 in [-1, 1].

    Raises:
        DifflabError: unknown name, bad option, missing or damaged files (one sentence naming
            the file and the fix).
    """
    _check_options(split, image_size, channels, limit)
    dataset, folder = _resolve_name(name, data_dir)
    captions: tuple[str, ...] = ()
    if dataset in ("mnist", "fashion-mnist"):
        pixels, labels_np, class_names = load_idx_split(dataset, split, data_dir, limit)
        images, labels = images_from_uint8(pixels), torch.from_numpy(labels_np)
    elif dataset == "digits":
        if data_dir is not None:
            raise DifflabError(
                f"digits: ships inside scikit-learn and reads no data_dir, but got {data_dir}; "
                "drop --data-dir."
            )
        images, labels = load_digits_split(split, limit)
        class_names = DIGITS_CLASS_NAMES
    elif dataset == "emoji":
        _refuse_data_dir(dataset, data_dir)
        pixels, labels, captions = load_emoji_split(split, image_size or EMOJI_IMAGE_SIZE, limit)
        images, class_names = images_from_uint8(pixels), EMOJI_GROUPS
    else:
        images, labels, class_names = load_folder_split(
            folder, split, image_size=image_size, channels=channels, limit=limit
        )
        dataset = f"folder:{folder}"
    if image_size is not None:
        images = resize_images(images, image_size)  # a no-op for folders (already sized)
    if pad_to_32:
        images = pad_images_to_32(images, dataset)
    if channels is not None:
        images = convert_channels(images, channels)
    return ImageDataset(dataset, images.contiguous(), labels.contiguous(), class_names, captions)


def _refuse_data_dir(dataset: str, data_dir: str | Path | None) -> None:
    if data_dir is not None:
        raise DifflabError(
            f"{dataset}: reads the files of its installed packages, not a data_dir, but got "
            f"{data_dir}; drop --data-dir."
        )


def load_streaming_dataset(
    name: str,
    *,
    split: str = "train",
    data_dir: str | Path | None = None,
    image_size: int | None = None,
    channels: int | None = None,
    limit: int | None = None,
    store_dir: str | Path | None = None,
    group: Distributed = SINGLE,
) -> StreamingImageDataset:
    """One split of a folder or the emoji, read from a uint8 store on disk as batches ask.

    Item ``i`` is item ``i`` of :func:`load_dataset` with the same arguments (same pixels, label
    and caption); only the images stay on disk. The store is built once (by rank 0 under
    torchrun) and reused while the files and settings stay the same.

    Args:
        name, split, data_dir, image_size, limit: as for :func:`load_dataset`.
        channels: folders: 1 or 3 (default as :func:`load_dataset`); emoji: 3 or None.
        store_dir: where stores live (default ``$DIFFLAB_CACHE/data``).
        group: the torchrun group.

    Raises:
        DifflabError: a dataset small enough for memory (use :func:`load_dataset`), bad options,
            missing files.
    """
    _check_options(split, image_size, channels, limit)
    dataset, folder = _resolve_name(name, data_dir)
    if dataset == "emoji":
        _refuse_data_dir(dataset, data_dir)
        if channels not in (None, 3):
            raise DifflabError(
                f"emoji: streams as RGB only, got channels={channels}; drop channels or use "
                "load_dataset (in memory) for gray emoji."
            )
        store = emoji_store(image_size or EMOJI_IMAGE_SIZE, cache=store_dir, group=group)
        return StreamingImageDataset(store, emoji_rows(store, split, limit), "emoji")
    if dataset == "folder":
        assert folder is not None
        store = folder_image_store(
            folder, image_size=image_size, channels=channels, store_dir=store_dir, group=group
        )
        rows = split_indices(store.shape[0], split, FOLDER_TEST_DENOMINATOR)[:limit]
        return StreamingImageDataset(store, rows, f"folder:{folder}")
    raise DifflabError(
        f"{dataset}: is small enough for memory and is not streamed (streaming covers "
        f"{', '.join(STREAMING_NAMES)}); use load_dataset."
    )


def load_configured_split(
    data: Any, split: str, limit: int | None = None
) -> ImageDataset | StreamingImageDataset:
    """``split`` of the dataset a config's ``data`` section names (a :class:`~difflab.config.DataConfig`).

    ``limit`` overrides ``data.limit`` when given. When the section has ``streaming: true`` (a
    field a config may add), a folder or the emoji come as a :class:`StreamingImageDataset`
    (:func:`load_streaming_dataset`), whose ``images[index]`` reads only those rows from disk.
    """
    if getattr(data, "streaming", False):
        if data.pad_to_32:
            raise DifflabError(
                "data.pad_to_32 applies to 28×28 datasets, which are not streamed; drop "
                "data.streaming or data.pad_to_32."
            )
        return load_streaming_dataset(
            data.name,
            split=split,
            data_dir=data.data_dir,
            image_size=data.image_size,
            channels=data.channels,
            limit=data.limit if limit is None else limit,
        )
    return load_dataset(
        data.name,
        split=split,
        data_dir=data.data_dir,
        image_size=data.image_size,
        channels=data.channels,
        pad_to_32=data.pad_to_32,
        limit=data.limit if limit is None else limit,
    )
