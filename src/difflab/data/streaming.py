"""Image datasets that need not fit in memory: a uint8 store on disk, read a batch at a time.

**Image store.** ``<stem>.npy`` holds every image as uint8 ``(N, S, S, C)`` (channels last, one
image after another) and is opened memory-mapped, so a batch reads only its own rows;
``<stem>.json`` beside it (the *sidecar*) holds the shape, the int64 labels, the class names,
optional per-image text columns (e.g. captions), the settings the store was made from (its
*key*) and a CRC-32 of the pixel bytes. Both files are written atomically
(:mod:`difflab.io.atomic`): the old sidecar is removed first, the ``.npy`` written next, the
sidecar last, so a store whose sidecar exists and names the same key and size is complete. A
missing, unreadable or mismatched sidecar raises :class:`StaleStoreError`, and the cached
builders (:func:`cached_image_store`, :func:`folder_image_store`) rebuild; a stale store is never
used silently. The full CRC is checked when asked (``verify=True``: small stores, e.g. emoji);
for large ones only the sizes are.

**Folders of any size.** :func:`folder_image_store` decodes a folder once (as
:func:`difflab.data.folder.load_image` does for the in-memory path: same resize, crop, alpha and
channels, so the pixels are identical) into a store in :func:`data_cache_dir` (or ``store_dir``),
keyed by the folder's file list (relative paths, sizes, modification times, labels) and the
settings; adding, removing or touching a file makes a new store.

**Reading.** :class:`StreamingImageDataset` is a view of some rows of a store with the interface of
:class:`~difflab.data.dataset.ImageDataset` (``name``, ``labels``, ``class_names``, ``captions``,
``channels``, ``image_size``, ``len``, ``dataset[i]``) and an ``images`` attribute that indexes
like a tensor (``images[index]`` reads those rows from disk and returns float32 in [-1, 1]).
It pickles without its memory map, so :class:`torch.utils.data.DataLoader` workers reopen it.

**Training order.** :class:`ShardedBatchLoader` follows a
:class:`~difflab.training.data_order.BatchStream` exactly as the training loop does: every rank
draws the same global batch ``index`` (B,) and reads only its contiguous slice
``group.shard(B)``, the rows read ahead by DataLoader workers. The stream it is given is advanced
once per batch the caller *takes* (not per batch prefetched), so ``stream.state()`` is the one to
checkpoint, and a loader built on a stream restored to that state continues with exactly the
batches an uninterrupted run would have seen.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.utils.data

from difflab.data.folder import (
    GRAY_MODES,
    common_square_size,
    index_folder,
    load_image,
    probe_image,
)
from difflab.data.transforms import images_from_uint8
from difflab.errors import DifflabError
from difflab.io.atomic import atomic_path, write_bytes_atomic
from difflab.io.cache import cache_dir
from difflab.io.process_group import SINGLE, Distributed, on_main

STORE_FORMAT = "difflab-image-store"
STORE_VERSION = 1
FOLDER_DECODE_VERSION = 1  # bump when difflab.data.folder.load_image changes its pixels
CHUNK_IMAGES = 256  # images decoded (folders) or checksummed per step
Index = int | slice | Sequence[int] | np.ndarray | torch.Tensor


def data_cache_dir() -> Path:
    """``$DIFFLAB_CACHE/data`` (default ``~/.cache/difflab/data``)."""
    return cache_dir() / "data"


def settings_digest(key: dict[str, Any]) -> str:
    """16 hex digits naming a store made from ``key`` (a JSON-ready dict of settings)."""
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def file_checksum(path: Path) -> str:
    """``"<bytes>:<crc32>"`` of a file: cheap, and changes when its content does."""
    crc = 0
    with open(path, "rb") as handle:
        while block := handle.read(1 << 22):
            crc = zlib.crc32(block, crc)
    return f"{path.stat().st_size}:{crc:08x}"


class StaleStoreError(DifflabError):
    """An image store that is missing, incomplete, damaged or made with other settings."""


@dataclass(frozen=True)
class ImageStore:
    """A complete image store on disk (see the module docstring).

    Attributes:
        path: the ``.npy`` file of uint8 pixels ``(N, S, S, C)``.
        name: the dataset name the store holds (e.g. ``"emoji"``, ``"folder:/data/cats"``).
        shape: ``(N, S, S, C)``.
        labels: ``(N,)`` int64 (all 0 when unlabelled).
        class_names: one name per label value; ``()`` when unlabelled.
        columns: optional per-image text columns, each a tuple of N strings (``"caption"``...).
        key: the settings the store was made from.
        crc32: CRC-32 of the pixel bytes in row order.
        info: free-form JSON-ready facts about the whole store (e.g. what was left out).
    """

    path: Path
    name: str
    shape: tuple[int, int, int, int]
    labels: np.ndarray = field(repr=False)
    class_names: tuple[str, ...]
    columns: dict[str, tuple[str, ...]] = field(repr=False)
    key: dict[str, Any] = field(repr=False)
    crc32: int
    info: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def sidecar(self) -> Path:
        return sidecar_path(self.path)

    def pixels(self) -> np.ndarray:
        """The read-only memory map of the pixels, ``(N, S, S, C)`` uint8."""
        return np.load(self.path, mmap_mode="r")


def sidecar_path(path: Path) -> Path:
    """``<stem>.json`` beside the store's ``<stem>.npy``."""
    return Path(path).with_suffix(".json")


def write_image_store(
    path: str | Path,
    shape: tuple[int, int, int, int],
    chunks: Iterable[np.ndarray],
    *,
    name: str,
    key: dict[str, Any],
    labels: Sequence[int] | np.ndarray,
    class_names: Sequence[str] = (),
    columns: dict[str, Sequence[str]] | None = None,
    info: dict[str, Any] | None = None,
) -> ImageStore:
    """Write a store from pixel chunks, never holding more than one chunk in memory.

    Args:
        path: the ``.npy`` to write; its sidecar goes beside it.
        shape: ``(N, S, S, C)`` of the whole store.
        chunks: uint8 arrays ``(b, S, S, C)`` in row order whose ``b`` add up to N.
        name: the dataset name to record.
        key: JSON-ready settings; a reader asking for other settings sees a stale store.
        labels: N int labels; class_names: the name of each label value.
        columns: per-image strings to keep (each of length N), e.g. ``{"caption": names}``.
        info: JSON-ready facts about the whole store.

    Returns:
        The written :class:`ImageStore`. On any error nothing new is left on disk.
    """
    path, count = Path(path), shape[0]
    labels_np = np.asarray(labels, dtype=np.int64).reshape(-1)
    columns = {column: tuple(map(str, values)) for column, values in (columns or {}).items()}
    if len(labels_np) != count or any(len(v) != count for v in columns.values()):
        raise ValueError(f"labels and columns must have {count} entries each")
    sidecar_path(path).unlink(missing_ok=True)  # from here on the old store reads as stale
    crc, row = 0, 0
    with atomic_path(path) as tmp:
        pixels = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=shape)
        for chunk in chunks:
            if chunk.dtype != np.uint8 or chunk.shape[1:] != shape[1:]:
                raise ValueError(f"chunk {chunk.dtype} {chunk.shape} does not fit {shape} uint8")
            if row + len(chunk) > count:
                raise ValueError(f"chunks hold more than the {count} images of {shape}")
            pixels[row : row + len(chunk)] = chunk
            crc = zlib.crc32(np.ascontiguousarray(chunk).data, crc)
            row += len(chunk)
        if row != count:
            raise ValueError(f"chunks held {row} images, not the {count} of {shape}")
        pixels.flush()
        del pixels
    meta = {
        "format": STORE_FORMAT,
        "version": STORE_VERSION,
        "name": name,
        "key": key,
        "shape": list(shape),
        "dtype": "uint8",
        "layout": "NHWC",
        "data_bytes": int(np.prod(shape)),
        "crc32": crc,
        "class_names": list(class_names),
        "labels": labels_np.tolist(),
        "columns": {column: list(values) for column, values in columns.items()},
        "info": info or {},
    }
    write_bytes_atomic(sidecar_path(path), json.dumps(meta, ensure_ascii=False).encode())
    return ImageStore(
        path, name, shape, labels_np, tuple(class_names), columns, key, crc, info or {}
    )


def _pixel_crc(pixels: np.ndarray) -> int:
    crc = 0
    for start in range(0, len(pixels), CHUNK_IMAGES):
        crc = zlib.crc32(np.ascontiguousarray(pixels[start : start + CHUNK_IMAGES]).data, crc)
    return crc


def open_image_store(
    path: str | Path, key: dict[str, Any] | None = None, *, verify: bool = False
) -> ImageStore:
    """Open a complete store, checking its sidecar against the ``.npy`` (and ``key`` when given).

    Args:
        path: the store's ``.npy``.
        key: the settings the caller expects; None accepts any.
        verify: also recompute the CRC-32 of every pixel (reads the whole file).

    Raises:
        StaleStoreError: one sentence naming the file and what is wrong with it.
    """
    path = Path(path)
    sidecar = sidecar_path(path)

    def stale(reason: str) -> StaleStoreError:
        return StaleStoreError(
            f"image store {path} {reason}; delete it (and {sidecar.name}) to have it rebuilt."
        )

    try:
        meta = json.loads(sidecar.read_bytes())
    except FileNotFoundError:
        raise stale("has no sidecar (missing or interrupted while written)") from None
    except (OSError, ValueError) as error:
        raise stale(f"has an unreadable sidecar ({error})") from None
    if not isinstance(meta, dict) or meta.get("format") != STORE_FORMAT:
        raise stale("has a sidecar of another format")
    if meta.get("version") != STORE_VERSION:
        raise stale(f"was written by store version {meta.get('version')}, not {STORE_VERSION}")
    if key is not None and meta.get("key") != key:
        raise stale("was made with other settings or from other data")
    try:
        shape = tuple(int(n) for n in meta["shape"])
        labels = np.asarray(meta["labels"], dtype=np.int64)
        columns = {str(c): tuple(map(str, v)) for c, v in meta["columns"].items()}
        pixels = np.load(path, mmap_mode="r")
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        raise stale(f"cannot be read ({error})") from None
    if len(shape) != 4 or pixels.shape != shape or pixels.dtype != np.uint8:
        raise stale(f"holds {pixels.dtype} {pixels.shape}, but its sidecar says uint8 {shape}")
    if labels.shape != (shape[0],) or any(len(v) != shape[0] for v in columns.values()):
        raise stale("has a sidecar whose labels or columns do not match its images")
    crc = int(meta.get("crc32", -1))
    if verify and _pixel_crc(pixels) != crc:
        raise stale("is damaged (its pixels do not match the checksum in its sidecar)")
    return ImageStore(
        path,
        str(meta.get("name", path.stem)),
        shape,  # type: ignore[arg-type]
        labels,
        tuple(meta.get("class_names", ())),
        columns,
        meta.get("key", {}),
        crc,
        dict(meta.get("info") or {}),
    )


def cached_image_store(
    path: Path,
    key: dict[str, Any],
    build: Callable[[Path], ImageStore],
    *,
    verify: bool = False,
    group: Distributed = SINGLE,
) -> ImageStore:
    """The store at ``path`` if it is complete and made with ``key``, else ``build(path)``'s.

    Under torchrun rank 0 checks and builds while the other ranks wait, then every rank opens
    the same files (one shared file system assumed).
    """

    def ensure() -> str:
        try:
            open_image_store(path, key, verify=verify)
        except StaleStoreError:
            try:
                build(path)
            except OSError as error:
                raise DifflabError(
                    f"could not write the image store {path} ({error}); free disk space or set "
                    "DIFFLAB_CACHE to a writable folder."
                ) from None
        return str(path)

    return open_image_store(on_main(group, ensure), key)


# --- folders ------------------------------------------------------------------------------------


def _listing_digest(root: Path, files: Sequence[Path], labels: Sequence[int]) -> str:
    """A hash of every file's relative path, size, modification time and label."""
    digest = hashlib.sha256()
    for path, label in zip(files, labels, strict=True):
        stat = path.stat()
        line = f"{path.relative_to(root).as_posix()}\t{stat.st_size}\t{stat.st_mtime_ns}\t{label}\n"
        digest.update(line.encode("utf-8", "surrogateescape"))
    return digest.hexdigest()


def folder_image_store(
    root: str | Path,
    *,
    image_size: int | None = None,
    channels: int | None = None,
    store_dir: str | Path | None = None,
    threads: int | None = None,
    group: Distributed = SINGLE,
) -> ImageStore:
    """Every image of a folder (sorted by relative path) in a store, built once and reused.

    Args:
        root: an image folder (layout and pixel rules: :mod:`difflab.data.folder`).
        image_size: side of the square images; None: the size they all share.
        channels: 1 or 3; None: 1 when every image is grayscale, else 3.
        store_dir: where stores live (default ``data_cache_dir() / "stores"``).
        threads: decoding threads (PIL releases the GIL); default ``min(4, cpu_count)``.
        group: the torchrun group; rank 0 builds.

    Returns:
        The :class:`ImageStore`; its rows follow :attr:`FolderIndex.files` order, the order
        the in-memory folder loader indexes its permutation with.
    """
    index = index_folder(root)
    root = index.root.resolve()
    if image_size is None or channels is None:
        probes = [probe_image(path) for path in index.files]  # headers only
        if image_size is None:
            image_size = common_square_size(index.files, [size for size, _ in probes])
        if channels is None:
            channels = 1 if all(mode in GRAY_MODES for _, mode in probes) else 3
    key = {
        "source": "folder",
        "root": str(root),
        "files": _listing_digest(index.root, index.files, index.labels),
        "image_size": int(image_size),
        "channels": int(channels),
        "decode": FOLDER_DECODE_VERSION,
    }
    folder = Path(store_dir) if store_dir is not None else data_cache_dir() / "stores"
    path = folder / f"folder-{root.name or 'root'}-{settings_digest(key)}.npy"
    size, chans = int(image_size), int(channels)

    def decoded_chunks() -> Iterator[np.ndarray]:
        workers = threads or min(4, os.cpu_count() or 1)
        with ThreadPoolExecutor(max_workers=workers) as pool:
            for start in range(0, len(index.files), CHUNK_IMAGES):
                files = index.files[start : start + CHUNK_IMAGES]
                yield np.stack(list(pool.map(lambda f: load_image(f, size, chans), files)))

    def build(target: Path) -> ImageStore:
        shape = (len(index.files), size, size, chans)
        return write_image_store(
            target,
            shape,
            decoded_chunks(),
            name=f"folder:{index.root}",
            key=key,
            labels=index.labels,
            class_names=index.class_names,
        )

    return cached_image_store(path, key, build, group=group)


# --- reading ------------------------------------------------------------------------------------


class StoredImages:
    """``images`` of a :class:`StreamingImageDataset`: indexes like an ``(N, C, S, S)`` tensor.

    ``images[i]`` is ``(C, S, S)``, ``images[index]`` (ints, a slice, an int64 tensor or array)
    is ``(B, C, S, S)``; each read from disk and returned as float32 in [-1, 1].
    """

    def __init__(self, dataset: StreamingImageDataset) -> None:
        self._dataset = dataset

    @property
    def shape(self) -> torch.Size:
        d = self._dataset
        return torch.Size((len(d), d.channels, d.image_size, d.image_size))

    @property
    def dtype(self) -> torch.dtype:
        return torch.float32

    @property
    def ndim(self) -> int:
        return 4

    def __len__(self) -> int:
        return len(self._dataset)

    def __getitem__(self, index: Index) -> torch.Tensor:
        images = self._dataset.read(index)[0]  # (B, C, S, S)
        single = isinstance(index, int) or (isinstance(index, torch.Tensor) and index.ndim == 0)
        return images[0] if single else images


class StreamingImageDataset(torch.utils.data.Dataset):
    """Some rows of an :class:`ImageStore`, read from disk on demand.

    Args:
        store: the store.
        rows: the store rows this dataset's items 0..M-1 are (e.g. a split's permutation);
            None: every row in order.
        name: the dataset name; default the store's.
    """

    def __init__(
        self,
        store: ImageStore,
        rows: Sequence[int] | np.ndarray | torch.Tensor | None = None,
        name: str | None = None,
    ) -> None:
        count = store.shape[0]
        self.store = store
        self.rows = np.arange(count) if rows is None else np.asarray(rows, dtype=np.int64)
        if self.rows.ndim != 1 or (
            len(self.rows) and not 0 <= self.rows.min() <= self.rows.max() < count
        ):
            raise ValueError(f"rows must be a 1-d index into the store's {count} images")
        self.name = name or store.name
        self.labels = torch.from_numpy(store.labels[self.rows].copy())  # (M,) int64
        self.class_names = store.class_names
        caption = store.columns.get("caption")
        self.captions: tuple[str, ...] = tuple(caption[i] for i in self.rows) if caption else ()
        self._pixels: np.ndarray | None = None  # the memory map, opened in each process

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_pixels"] = None  # DataLoader workers map the file themselves
        return state

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def channels(self) -> int:
        return self.store.shape[3]

    @property
    def image_size(self) -> int:
        return self.store.shape[1]

    @property
    def images(self) -> StoredImages:
        """Indexable like ``ImageDataset.images``; each index reads from disk."""
        return StoredImages(self)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(image (C, S, S) float32 in [-1, 1], label ())``, as ImageDataset gives."""
        images, labels = self.read([index])
        return images[0], labels[0]

    def _positions(self, index: Index) -> np.ndarray:
        if isinstance(index, slice):
            return np.arange(len(self))[index]
        if isinstance(index, torch.Tensor):
            index = index.numpy(force=True)
        positions = np.asarray(index, dtype=np.int64).reshape(-1)
        if len(positions) and not -len(self) <= positions.min() <= positions.max() < len(self):
            raise IndexError(f"index out of range for a dataset of {len(self)} images")
        return positions % max(len(self), 1)

    def read_pixels(self, index: Index) -> np.ndarray:
        """The uint8 pixels ``(B, S, S, C)`` of items ``index`` (rows read in file order)."""
        if self._pixels is None:
            self._pixels = self.store.pixels()
        rows = self.rows[self._positions(index)]
        unique, inverse = np.unique(rows, return_inverse=True)  # sorted: sequential reads
        return np.asarray(self._pixels[unique])[inverse.reshape(-1)]

    def read(self, index: Index) -> tuple[torch.Tensor, torch.Tensor]:
        """``(images (B, C, S, S) float32 in [-1, 1], labels (B,) int64)``; an int gives B = 1."""
        positions = torch.from_numpy(self._positions(index))
        return images_from_uint8(self.read_pixels(positions)), self.labels[positions]


# --- the training order -------------------------------------------------------------------------


class IndexStream(Protocol):
    """What :class:`ShardedBatchLoader` needs of a ``BatchStream``."""

    def next(self) -> torch.Tensor: ...

    def state(self) -> dict[str, int]: ...


@dataclass(frozen=True)
class ShardBatch:
    """This rank's part of one global mini-batch."""

    index: torch.Tensor  # (B,) int64, the global batch, the same on every rank
    part: slice  # this rank's slice of it: group.shard(B)
    images: torch.Tensor  # (B / world, C, S, S) float32 in [-1, 1] = dataset.images[index[part]]
    labels: torch.Tensor  # (B / world,) int64 = dataset.labels[index[part]]


class _ShardIndices(torch.utils.data.Sampler):
    """The endless sequence ``index[group.shard(B)]`` of a private copy of the stream."""

    def __init__(self, stream: IndexStream, group: Distributed) -> None:
        self.stream, self.group = stream, group

    def __iter__(self) -> Iterator[torch.Tensor]:
        while True:
            index = self.stream.next()
            yield index[self.group.shard(len(index))]


class _ShardReader(torch.utils.data.Dataset):
    """``reader[shard_index] -> (shard_index, pixels (b, S, S, C) uint8, labels (b,))``."""

    def __init__(self, dataset: StreamingImageDataset) -> None:
        self.dataset = dataset

    def __getitem__(self, shard: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        pixels = torch.from_numpy(self.dataset.read_pixels(shard))
        return shard, pixels, self.dataset.labels[shard]


class ShardedBatchLoader:
    """This rank's shard of every global batch of a ``BatchStream``, read ahead by workers.

    Args:
        dataset: an :class:`~difflab.data.dataset.ImageDataset` (read in this process) or a
            :class:`StreamingImageDataset` (read by ``num_workers`` DataLoader workers when
            ``num_workers > 0``).
        stream: the run's ``BatchStream``; :meth:`next` advances it by exactly one batch, so its
            ``state()`` is what a checkpoint stores. Workers follow a private copy of it.
        group: the torchrun group (:data:`~difflab.io.process_group.SINGLE` outside torchrun);
            only ``rank`` and ``world_size`` are used.
        num_workers: DataLoader worker processes; 0 reads synchronously.
        prefetch_factor: batches each worker reads ahead.
    """

    def __init__(
        self,
        dataset: Any,
        stream: IndexStream,
        *,
        group: Distributed = SINGLE,
        num_workers: int = 0,
        prefetch_factor: int = 2,
    ) -> None:
        self.dataset, self.stream, self.group = dataset, stream, group
        self._iterator: Iterator[tuple[torch.Tensor, ...]] | None = None
        if num_workers > 0 and isinstance(dataset, StreamingImageDataset):
            loader = torch.utils.data.DataLoader(
                _ShardReader(dataset),
                sampler=_ShardIndices(copy.deepcopy(stream), group),
                batch_size=None,  # each sampler item is already a batch of indices
                num_workers=num_workers,
                prefetch_factor=prefetch_factor,
            )
            self._iterator = iter(loader)

    def next(self) -> ShardBatch:
        """The next global batch's indices and this rank's images and labels."""
        index = self.stream.next()  # (B,)
        part = self.group.shard(len(index))
        if self._iterator is None:
            images, labels = self.dataset.images[index[part]], self.dataset.labels[index[part]]
            return ShardBatch(index, part, images, labels)
        shard, pixels, labels = next(self._iterator)
        if not torch.equal(shard, index[part]):
            raise RuntimeError("the prefetched batch is out of step with the stream")
        return ShardBatch(index, part, images_from_uint8(pixels), labels)

    def __iter__(self) -> Iterator[ShardBatch]:
        return self

    def __next__(self) -> ShardBatch:
        return self.next()

    def state(self) -> dict[str, int]:
        """The stream's state after the batches taken so far (for a checkpoint)."""
        return self.stream.state()

    def close(self) -> None:
        """Stop the worker processes (also done when the loader is garbage-collected)."""
        shutdown = getattr(self._iterator, "_shutdown_workers", None)
        if shutdown is not None:
            shutdown()
        self._iterator = None

    def __enter__(self) -> ShardedBatchLoader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
