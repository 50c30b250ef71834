"""A folder of image files (png, jpg, jpeg, webp, bmp; any size, searched recursively).

Layout:

* **Labelled**: when the top folder holds no image files itself but has subfolders that hold
  images (at any depth), each such subfolder is a class; class names are the subfolder names,
  sorted (Python string order), and labels index them. Subfolders without images are ignored.
* **Unlabelled**: otherwise. Every image under the folder is used; labels are all 0 and there
  are no class names.

Names starting with ``.`` (hidden files and folders) and files with other extensions are
skipped. Extensions are matched case-insensitively.

Pixels:

* ``image_size``: each image's shorter side is resized to ``image_size`` with PIL's bicubic
  filter (antialiased when shrinking, ``reducing_gap=3``), then the center
  ``image_size``×``image_size`` window is cropped. When not given, every image must already have
  the same square size, which is used as is.
* ``channels``: 1 (PIL ``"L"``) or 3 (``"RGB"``). When not given, 1 if every image is grayscale
  (modes ``1``, ``L``, ``LA``, ``I``, ``I;16``, ``F``), else 3. Transparent images (RGBA, LA,
  palette with transparency) are alpha-composited over a white background first. 16-bit
  grayscale is scaled to 8 bits (divided by 257). JPEG EXIF orientation is applied.

Split: the files, sorted by their path relative to the folder, are permuted with seed 0
(:func:`difflab.data.splits.split_indices`); the last 10 % (at least one image when there are
two or more) is ``test``, the rest ``train``. A folder with a single image gives it to both.

Limit: everything is decoded into one in-memory tensor (``N × C × S × S`` float32, e.g. 10k
RGB images at 64² take 0.5 GB). That suits the small datasets this toolkit trains on; a larger
collection should be resized offline or streamed by other code.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from difflab.data.splits import split_indices
from difflab.data.transforms import images_from_uint8
from difflab.errors import DifflabError

IMAGE_EXTENSIONS: tuple[str, ...] = (".bmp", ".jpeg", ".jpg", ".png", ".webp")
GRAY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"})
TEST_DENOMINATOR = 10  # the last 1/10 of the permutation is the test split
_EXTENSIONS_TEXT = "/".join(ext[1:] for ext in IMAGE_EXTENSIONS)


@dataclass(frozen=True)
class FolderIndex:
    """The image files of a folder, sorted, with their labels (all 0 when unlabelled)."""

    root: Path
    files: tuple[Path, ...]
    labels: tuple[int, ...]
    class_names: tuple[str, ...]  # () when unlabelled


def _visible(name: str) -> bool:
    return not name.startswith(".")


def _is_image_name(name: str) -> bool:
    return _visible(name) and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def _image_files_under(folder: Path) -> list[Path]:
    """Every image file below ``folder`` (recursively, symlinked folders not followed)."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if _visible(d))
        found += [Path(dirpath) / f for f in filenames if _is_image_name(f)]
    return found


def _is_file_entry(entry: os.DirEntry) -> bool:
    """A file, or a link that cannot be resolved (a loop): such a link is then named by the
    error of reading it, as a damaged file is."""
    try:
        return entry.is_file()
    except OSError:
        return True


def index_folder(root: str | Path) -> FolderIndex:
    """Find the image files of a folder and decide whether its subfolders are classes."""
    root = Path(root).expanduser()
    if not root.exists():
        raise DifflabError(
            f"folder: {root} does not exist; pass --data-dir with a folder of {_EXTENSIONS_TEXT} "
            "images."
        )
    if not root.is_dir():
        raise DifflabError(
            f"folder: {root} is a file, not a folder; pass --data-dir with a folder of "
            f"{_EXTENSIONS_TEXT} images."
        )
    entries = sorted(os.scandir(root), key=lambda e: e.name)
    top_images = [e for e in entries if _is_file_entry(e) and _is_image_name(e.name)]
    subfolders = [e for e in entries if not _is_file_entry(e) and e.is_dir() and _visible(e.name)]
    classes: list[tuple[str, list[Path]]] = []
    if not top_images:
        for sub in subfolders:
            files = _image_files_under(Path(sub.path))
            if files:
                classes.append((sub.name, files))
    if classes:
        class_names = tuple(name for name, _ in classes)
        pairs = [(f, label) for label, (_, files) in enumerate(classes) for f in files]
    else:
        class_names = ()
        pairs = [(f, 0) for f in _image_files_under(root)]
    if not pairs:
        raise DifflabError(
            f"folder: {root} holds no image files (looked for {', '.join(IMAGE_EXTENSIONS)}, "
            "recursively); add images or pass --data-dir with another folder."
        )
    pairs.sort(key=lambda pair: pair[0].relative_to(root).as_posix())
    files, labels = zip(*pairs, strict=True)
    return FolderIndex(root, tuple(files), tuple(labels), class_names)


# what PIL raises for a file it cannot decode; the bomb warning is an error under the CLI
UNREADABLE = (
    OSError,
    ValueError,
    SyntaxError,
    Image.DecompressionBombError,
    Image.DecompressionBombWarning,
)


def _unreadable(path: Path, reason: object) -> DifflabError:
    return DifflabError(
        f"folder: {path} cannot be read as an image ({reason}); remove it or replace it with a "
        f"valid {_EXTENSIONS_TEXT} file."
    )


def probe_image(path: Path) -> tuple[tuple[int, int], str]:
    """The ``(width, height)`` and PIL mode of an image file, read from its header only."""
    try:
        num_bytes = path.stat().st_size
        if num_bytes == 0:
            raise DifflabError(
                f"folder: {path} is an empty (0-byte) file; remove it or replace it."
            )
        with Image.open(path) as img:
            return img.size, img.mode
    except UNREADABLE as e:
        raise _unreadable(path, e) from None


def _has_alpha(img: Image.Image) -> bool:
    return img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info


def convert_mode(img: Image.Image, mode: str) -> Image.Image:
    """``img`` as ``mode`` ("L" or "RGB"), transparency composited over white."""
    if img.mode in ("I", "F") or img.mode.startswith("I;16"):
        pixels = np.asarray(img, dtype=np.float64)
        if img.mode.startswith("I;16") or pixels.max(initial=0) > 255:
            pixels = pixels / 257.0  # 16-bit range 0..65535 -> 0..255
        img = Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8), "L")
    if _has_alpha(img):
        white = Image.new("RGBA", img.size, (255, 255, 255, 255))
        img = Image.alpha_composite(white, img.convert("RGBA"))
    return img if img.mode == mode else img.convert(mode)


def resize_and_center_crop(img: Image.Image, size: int) -> Image.Image:
    """Resize the shorter side to ``size`` (bicubic), then crop the central ``size``×``size``."""
    width, height = img.size
    if (width, height) == (size, size):
        return img
    scale = size / min(width, height)
    new_size = (max(size, round(width * scale)), max(size, round(height * scale)))
    if new_size != (width, height):
        img = img.resize(new_size, Image.Resampling.BICUBIC, reducing_gap=3.0)
    left, top = (new_size[0] - size) // 2, (new_size[1] - size) // 2
    return img.crop((left, top, left + size, top + size))


def load_image(path: Path, size: int, channels: int) -> np.ndarray:
    """Decode one file into ``(size, size, channels)`` uint8 pixels."""
    try:
        with Image.open(path) as img:
            img.load()
            img = ImageOps.exif_transpose(img)
            img = resize_and_center_crop(convert_mode(img, "L" if channels == 1 else "RGB"), size)
            pixels = np.asarray(img, dtype=np.uint8)
    except UNREADABLE as e:
        raise _unreadable(path, e) from None
    return pixels.reshape(size, size, channels)


def common_square_size(files: tuple[Path, ...], sizes: list[tuple[int, int]]) -> int:
    """The side shared by every image of a folder, or a :class:`DifflabError` naming the first
    image of another size (or the first when they are not square). ``sizes`` are (width, height)."""
    first = sizes[0]
    for path, size in zip(files, sizes, strict=True):
        if size != first:
            raise DifflabError(
                f"folder: images have different sizes ({first[0]}×{first[1]} in {files[0]}, "
                f"{size[0]}×{size[1]} in {path}); pass image_size (--image-size) to resize and "
                "center-crop them all to one square size."
            )
    if first[0] != first[1]:
        raise DifflabError(
            f"folder: images are {first[0]}×{first[1]}, not square (e.g. {files[0]}); pass "
            "image_size (--image-size) to resize and center-crop them to a square."
        )
    return first[0]


def load_folder_split(
    root: str | Path,
    split: str,
    *,
    image_size: int | None = None,
    channels: int | None = None,
    limit: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, tuple[str, ...]]:
    """Load one split of an image folder into memory.

    Args:
        root: the folder (see the module docstring for the layout).
        split: ``"train"`` (the first 90 % of the seed-0 permutation) or ``"test"`` (the rest).
        image_size: side of the square output in pixels; None keeps the common square size.
        channels: 1 or 3; None picks 1 when every image is grayscale, else 3.
        limit: keep only the first ``limit`` items of the split (permutation order).

    Returns:
        ``images`` ``(N, C, S, S)`` float32 in [-1, 1], ``labels`` ``(N,)`` int64, and the class
        names (``()`` when unlabelled).
    """
    index = index_folder(root)
    probes = [probe_image(path) for path in index.files]  # checks every file, both splits
    sizes = [size for size, _ in probes]
    if image_size is None:
        image_size = common_square_size(index.files, sizes)
    if channels is None:
        channels = 1 if all(mode in GRAY_MODES for _, mode in probes) else 3
    chosen = split_indices(len(index.files), split, TEST_DENOMINATOR)
    if limit is not None:
        chosen = chosen[:limit]
    pixels = np.empty((len(chosen), image_size, image_size, channels), dtype=np.uint8)
    for row, i in enumerate(chosen.tolist()):
        pixels[row] = load_image(index.files[i], image_size, channels)
    labels = torch.tensor([index.labels[i] for i in chosen.tolist()], dtype=torch.int64)
    return images_from_uint8(pixels), labels, index.class_names
