"""The in-memory image dataset every trainer and metric consumes, and the one loader for all.

``load_dataset(name, ...)`` reads MNIST, Fashion-MNIST, scikit-learn digits or an image folder,
then applies the optional ``image_size`` resize, ``pad_to_32`` and ``channels`` conversion, and
returns an :class:`ImageDataset` whose images are ``(N, C, H, W)`` float32 in [-1, 1].
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from difflab.data.digits import DIGITS_CLASS_NAMES, load_digits_split
from difflab.data.folder import load_folder_split
from difflab.data.mnist import load_idx_split
from difflab.data.splits import SPLITS
from difflab.data.transforms import (
    convert_channels,
    images_from_uint8,
    pad_images_to_32,
    resize_images,
)
from difflab.errors import DifflabError

DATASET_NAMES: tuple[str, ...] = ("mnist", "fashion-mnist", "digits", "folder")
MAX_IMAGE_SIZE = 2048  # pixels a side: a whole split is held in memory as float32


@dataclass
class ImageDataset:
    """A whole split of a dataset, held in memory.

    Attributes:
        name: ``"mnist"``, ``"fashion-mnist"``, ``"digits"`` or ``"folder:<path>"``.
        images: ``(N, C, H, W)`` float32 in [-1, 1], contiguous, ``H == W``.
        labels: ``(N,)`` int64; all zeros when the data has no labels.
        class_names: one name per label value; ``()`` when unlabelled.
    """

    name: str
    images: torch.Tensor  # (N, C, H, W) float32 in [-1, 1]
    labels: torch.Tensor  # (N,) int64
    class_names: tuple[str, ...]

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
    if key in ("mnist", "fashion-mnist", "digits"):
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
            digits keeps the last 20 % and folders the last 10 % of a seed-0 permutation as test.
        data_dir: MNIST/Fashion-MNIST: a folder with the four IDX files (default: the installed
            package's); folder: the image folder. Not accepted for digits.
        image_size: side of the square output in pixels. Folders: shorter side resized (bicubic)
            then center crop, required unless all images share one square size. Others: the
            whole tensor resized (area to shrink, bilinear to grow).
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
    return ImageDataset(dataset, images.contiguous(), labels.contiguous(), class_names)


def load_configured_split(data: Any, split: str, limit: int | None = None) -> ImageDataset:
    """``split`` of the dataset a config's ``data`` section names (a :class:`~difflab.config.DataConfig`).

    ``limit`` overrides ``data.limit`` when given.
    """
    return load_dataset(
        data.name,
        split=split,
        data_dir=data.data_dir,
        image_size=data.image_size,
        channels=data.channels,
        pad_to_32=data.pad_to_32,
        limit=data.limit if limit is None else limit,
    )
