"""Reader for the IDX format of MNIST and Fashion-MNIST, gzipped or not.

An IDX file is a 4-byte magic number, one big-endian ``uint32`` per dimension, then the data in
row-major order. The magic's first two bytes are zero, the third gives the element type
(``0x08`` = unsigned byte, the only type used here) and the fourth the number of dimensions, so
images are ``0x00000803`` (count, rows, cols) and labels ``0x00000801`` (count).

Every check reports the file, what is wrong and what to do, as one :class:`DifflabError`
sentence. Nothing is cached on disk. A file is gzipped when it starts with the gzip magic bytes
``1f 8b`` (whatever its name); the whole file is read and decompressed in memory (MNIST's 60k
training images are 47 MB once decompressed).
"""

from __future__ import annotations

import gzip
import math
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from difflab.errors import DifflabError

IMAGES_MAGIC = 0x00000803  # unsigned bytes, 3 dimensions (count, rows, cols)
LABELS_MAGIC = 0x00000801  # unsigned bytes, 1 dimension (count)
_GZIP_MAGIC = b"\x1f\x8b"
_KINDS = {"images": (IMAGES_MAGIC, 3), "labels": (LABELS_MAGIC, 1)}


@dataclass(frozen=True)
class IdxHeader:
    """The parsed header of an IDX file: ``magic`` and the sizes of its dimensions."""

    magic: int
    dims: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        """Size of the header in bytes: 4 for the magic plus 4 per dimension."""
        return 4 + 4 * len(self.dims)

    @property
    def data_nbytes(self) -> int:
        """Number of data bytes the header announces (one byte per element)."""
        return math.prod(self.dims)


def _fail(path: Path, problem: str, source: str, fix: str) -> DifflabError:
    return DifflabError(f"{source}: {path} {problem}; {fix}.")


def _read_bytes(path: Path, source: str, fix: str, max_bytes: int | None = None) -> bytes:
    """The file's bytes, decompressed when it is gzipped (only the first ``max_bytes`` if given)."""
    try:
        with path.open("rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raise _fail(path, "does not exist", source, fix) from None
    except OSError as e:
        raise _fail(path, f"cannot be read ({e.strerror or e})", source, fix) from None
    if not raw:
        raise _fail(path, "is empty (0 bytes)", source, fix)
    if not raw.startswith(_GZIP_MAGIC):
        return raw
    try:
        if max_bytes is None:
            return gzip.decompress(raw)
        return zlib.decompressobj(wbits=31).decompress(raw, max_bytes)
    except (gzip.BadGzipFile, EOFError, zlib.error) as e:
        raise _fail(path, f"is a corrupt or truncated gzip file ({e})", source, fix) from None


def _parse_header(data: bytes, path: Path, kind: str, source: str, fix: str) -> IdxHeader:
    magic_expected, ndim = _KINDS[kind]
    if len(data) < 4:
        raise _fail(path, f"is too short to be an IDX file ({len(data)} bytes)", source, fix)
    magic = int.from_bytes(data[:4], "big")
    if magic != magic_expected:
        other = next((k for k, (m, _) in _KINDS.items() if m == magic), None)
        found = f"IDX {other}" if other else "not an IDX file of unsigned bytes"
        raise _fail(
            path,
            f"has magic number 0x{magic:08x} ({found}) but IDX {kind} need 0x{magic_expected:08x}",
            source,
            fix,
        )
    header_nbytes = 4 + 4 * ndim
    if len(data) < header_nbytes:
        raise _fail(
            path,
            f"is truncated inside its header ({len(data)} of {header_nbytes} bytes)",
            source,
            fix,
        )
    dims = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    if any(d == 0 for d in dims):
        raise _fail(path, f"declares an empty shape {dims}", source, fix)
    return IdxHeader(magic, dims)


def read_idx_header(
    path: str | Path, kind: str, *, source: str = "idx", fix: str = ""
) -> IdxHeader:
    """Parse and validate only the header of an IDX file (cheap: decompresses 16 bytes).

    Args:
        path: the IDX file, gzipped or not.
        kind: ``"images"`` (magic 0x00000803, 3 dims) or ``"labels"`` (0x00000801, 1 dim).
        source: the dataset name that starts an error message, e.g. ``"mnist"``.
        fix: the "what to do" clause of an error message.
    """
    path = Path(path)
    fix = fix or "replace it with an intact IDX file"
    data = _read_bytes(path, source, fix, max_bytes=16)
    return _parse_header(data, path, kind, source, fix)


def read_idx(path: str | Path, kind: str, *, source: str = "idx", fix: str = "") -> np.ndarray:
    """Read a whole IDX file of unsigned bytes and check it against its header.

    Args:
        path: the IDX file, gzipped or not.
        kind: ``"images"`` or ``"labels"``.
        source: the dataset name that starts an error message, e.g. ``"mnist"``.
        fix: the "what to do" clause of an error message.

    Returns:
        A read-only ``uint8`` array: ``(N, rows, cols)`` for images, ``(N,)`` for labels.

    Raises:
        DifflabError: the file is missing, empty, not gzip-decodable, has the wrong magic number
            or a byte length different from what its header announces.
    """
    path = Path(path)
    fix = fix or "replace it with an intact IDX file"
    data = _read_bytes(path, source, fix)
    header = _parse_header(data, path, kind, source, fix)
    expected, found = header.data_nbytes, len(data) - header.nbytes
    if found < expected:
        raise _fail(
            path,
            f"is truncated (expected {expected} bytes of {kind[:-1]} data, found {found})",
            source,
            fix,
        )
    if found > expected:
        raise _fail(
            path,
            f"has {found - expected} unexpected trailing bytes after its {expected} bytes of "
            f"{kind[:-1]} data",
            source,
            fix,
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header.nbytes).reshape(header.dims)


def read_idx_pair(
    images_path: str | Path,
    labels_path: str | Path,
    *,
    source: str = "idx",
    fix: str = "",
) -> tuple[np.ndarray, np.ndarray]:
    """Read an images file and its labels file and check that their counts agree.

    Returns:
        ``images`` ``(N, rows, cols)`` uint8 and ``labels`` ``(N,)`` uint8, both read-only.
    """
    images = read_idx(images_path, "images", source=source, fix=fix)
    labels = read_idx(labels_path, "labels", source=source, fix=fix)
    if len(images) != len(labels):
        raise DifflabError(
            f"{source}: {images_path} holds {len(images)} images but {labels_path} holds "
            f"{len(labels)} labels; {fix or 'use an images file and labels file from the same split'}."
        )
    return images, labels
