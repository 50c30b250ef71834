"""Checkpoints: one safetensors file whose header carries a JSON description.

The JSON (under the header key ``"difflab"``) records ``kind``, ``config``, ``step`` and library
``versions``. Files are written atomically (temporary file, fsync, rename). Loading never
unpickles: a pickle or a ``torch.save`` zip offered as a checkpoint is refused by its first bytes.
"""

from __future__ import annotations

import json
import platform
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import safetensors
import safetensors.torch
import torch

import difflab
from difflab.errors import DifflabError
from difflab.io.atomic import atomic_path
from difflab.io.validation import check_number, check_tree, quote, shorten

METADATA_KEY = "difflab"
MAX_HEADER_BYTES = 100_000_000


def library_versions() -> dict[str, str]:
    return {
        "difflab": difflab.__version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
    }


def save_checkpoint(
    path: str | Path, tensors: dict[str, torch.Tensor], meta: dict[str, Any]
) -> Path:
    """Write ``tensors`` and ``meta`` (JSON-serialisable, gets ``versions`` added) atomically."""
    meta = {**meta, "versions": library_versions()}
    payload = safetensors.torch.save(
        {k: v.detach().contiguous().cpu() for k, v in tensors.items()},
        metadata={METADATA_KEY: json.dumps(meta, sort_keys=True)},
    )
    path = Path(path)
    with atomic_path(path) as tmp:  # a full disk: one sentence, the old file intact
        tmp.write_bytes(payload)
    return path


def _looks_like_safetensors(head: bytes, size: int) -> bool:
    """A safetensors file: an 8-byte little-endian header length, then a JSON object."""
    if len(head) < 9:
        return False
    header_len = struct.unpack("<Q", head[:8])[0]
    return 2 <= header_len <= min(size - 8, MAX_HEADER_BYTES) and head[8:9] == b"{"


def _refuse_foreign_format(path: Path, head: bytes) -> None:
    fix = "difflab reads only the safetensors checkpoints it writes; give a .safetensors file from `difflab train`."
    if head[:1] == b"\x80":
        raise DifflabError(f"{path} is a Python pickle, which difflab never unpickles; {fix}")
    if head[:2] == b"PK":
        raise DifflabError(
            f"{path} is a zip archive (a torch.save file), which difflab never unpickles; {fix}"
        )
    raise DifflabError(f"{path} is not a safetensors file (or it is truncated); {fix}")


def load_checkpoint(
    path: str | Path, kind: str | None = None
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a checkpoint: (tensors, meta). ``kind`` (e.g. "diffusion") is checked when given."""
    return _read_checkpoint(Path(path), kind, with_tensors=True)


def load_checkpoint_meta(path: str | Path, kind: str | None = None) -> dict[str, Any]:
    """The JSON description of a checkpoint, without reading its tensors (checks as above)."""
    return _read_checkpoint(Path(path), kind, with_tensors=False)[1]


def _read_checkpoint(
    path: Path, kind: str | None, *, with_tensors: bool
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    if path.is_dir():
        raise DifflabError(
            f"checkpoint {path} is a folder, not a file; give the .safetensors file inside it "
            "(e.g. model.safetensors)."
        )
    if not path.is_file():
        raise DifflabError(
            f"checkpoint {path} does not exist; check the path (trained models are in runs/*/ and weights/)."
        )
    size = path.stat().st_size
    with open(path, "rb") as handle:
        head = handle.read(9)
    if not _looks_like_safetensors(head, size):
        _refuse_foreign_format(path, head)
    try:
        with safetensors.safe_open(str(path), framework="pt") as handle:
            raw_meta = (handle.metadata() or {}).get(METADATA_KEY)
            keys = handle.keys() if with_tensors else []
            tensors = {key: handle.get_tensor(key) for key in keys}
    except Exception as error:  # safetensors raises its own error types for damaged files
        raise DifflabError(
            f"{path} is a damaged safetensors file ({error}); restore it from a good copy."
        ) from None
    if raw_meta is None:
        raise DifflabError(
            f"{path} has no difflab metadata; it was not written by difflab, so its model is unknown."
        )
    try:
        meta = json.loads(raw_meta)
    except (json.JSONDecodeError, RecursionError):
        raise DifflabError(
            f"{path} has damaged difflab metadata (invalid JSON); restore it from a good copy."
        ) from None
    check_meta(meta, path)
    if kind is not None and meta.get("kind") != kind:
        raise DifflabError(
            f"{path} holds a {quote(meta.get('kind'))} checkpoint, but this command needs a "
            f"{kind!r} one."
        )
    return tensors, meta


# the type of each top-level entry of a checkpoint's JSON, when present
META_SCHEMA: dict[str, type | tuple[type, ...]] = {
    "kind": str,
    "arch": str,
    "model": dict,
    "diffusion": dict,
    "data": dict,
    "experiment": dict,
    "state": dict,
    "versions": dict,
    "autoencoder": dict,
    "text_encoder": dict,
    "step": int,
}
NULLABLE_META = ("step",)  # an imported model has no training step
MAX_META_VALUES = 1_000_000  # vocabularies and class names included
POSITIVE_DATA_FIELDS = ("channels", "image_size")


def check_meta(meta: Any, path: Path) -> None:
    """The checks every checkpoint's JSON passes before anything is built from it: a bounded
    mapping whose known entries have their types (:data:`META_SCHEMA`), a step of 0 or more and
    positive image sizes. The sections' fields are checked where they are parsed (the config
    dataclasses of :mod:`difflab.config` and the model registry)."""
    if not isinstance(meta, dict):
        raise DifflabError(
            f"{path} has damaged difflab metadata (a {type(meta).__name__}, not a mapping); "
            "restore it from a good copy."
        )
    check_tree(meta, f"{path}'s metadata", MAX_META_VALUES)
    for key, kind in META_SCHEMA.items():
        value = meta.get(key)
        if key not in meta or (value is None and key in NULLABLE_META):
            continue
        if not isinstance(value, kind) or isinstance(value, bool):
            raise DifflabError(
                f"{path}: metadata entry {key!r} must be a {_type_name(kind)}, got "
                f"{quote(value)}; restore the file from a good copy."
            )
    if meta.get("step") is not None:
        check_count(meta["step"], f"{path}: metadata entry 'step'", low=0)
    for key in POSITIVE_DATA_FIELDS:
        if meta.get("data", {}).get(key) is not None:
            check_count(meta["data"][key], f"{path}: metadata entry data.{key}", low=1)


def check_count(value: Any, where: str, low: int) -> int:
    """``value`` as an int of at least ``low`` (and 64 bits), else a DifflabError naming ``where``."""
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise DifflabError(f"{where} must be an integer of at least {low}, got {quote(value)}.")
    check_number(value, where)
    return value


def _type_name(kind: type | tuple[type, ...]) -> str:
    names = {dict: "mapping", str: "string", int: "integer", list: "list"}
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join(names.get(k, k.__name__) for k in kinds)


def split_prefix(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The entries whose key starts with ``prefix + '.'``, with the prefix removed."""
    start = prefix + "."
    return {k[len(start) :]: v for k, v in tensors.items() if k.startswith(start)}


def with_prefix(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {f"{prefix}.{k}": v for k, v in tensors.items()}


def check_fits_file(probe: torch.nn.Module, tensors: dict[str, torch.Tensor], where: Path) -> None:
    """Refuse a model whose description asks for far more parameters than the file stores.

    ``probe`` is the network built on the meta device (no memory) from the file's JSON; a crafted
    description (a width of 10^6) would otherwise allocate a huge network before its weights are
    compared. A file always stores every parameter (a training state stores more), so needing
    more than twice its values is a damaged description; smaller gaps (a missing tensor) are named
    precisely by :func:`load_weights_strict`."""
    needed = sum(p.numel() for p in probe.parameters())
    held = sum(t.numel() for t in tensors.values())
    if needed > 2 * held:
        raise DifflabError(
            f"{where}: its metadata describes a model of {needed:,} parameters but the file holds "
            f"only {held:,} values; the metadata is damaged: restore the file from a good copy."
        )


def build_within_file(
    build: Callable[[], torch.nn.Module], tensors: dict[str, torch.Tensor], where: Path
) -> torch.nn.Module:
    """``build()`` the network a file describes, after checking the description on the meta device:
    a description torch cannot build (heads that do not divide a width) or one that needs far more
    parameters than the file holds (:func:`check_fits_file`) is a sentence naming the file, before
    any memory is allocated."""
    try:
        with torch.device("meta"):
            probe = build()
    except (ValueError, RuntimeError, AssertionError, TypeError, ZeroDivisionError) as error:
        raise DifflabError(
            f"{where}: its model description cannot be built ({shorten(str(error)).rstrip('.')}); "
            "restore the file from a good copy."
        ) from None
    check_fits_file(probe, tensors, where)
    return build()


def load_weights_strict(
    module: torch.nn.Module, weights: dict[str, torch.Tensor], where: Path
) -> None:
    """Load a state dict, naming missing, unexpected or mis-shaped tensors in one sentence."""
    expected = module.state_dict()
    missing = sorted(set(expected) - set(weights))
    extra = sorted(set(weights) - set(expected))
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {missing[0]!r})")
        if extra:
            parts.append(f"{len(extra)} unexpected (e.g. {extra[0]!r})")
        raise DifflabError(
            f"{where}: the weights do not match the model config: {' and '.join(parts)} tensors."
        )
    for key, value in weights.items():
        if value.shape != expected[key].shape:
            raise DifflabError(
                f"{where}: tensor {key!r} has shape {tuple(value.shape)} but the model expects {tuple(expected[key].shape)}."
            )
    module.load_state_dict({k: v.to(expected[k].dtype) for k, v in weights.items()})
