"""Bounds every parsed input passes before anything is built from it.

A config, a checkpoint's JSON or a statistics file is parsed by a library (YAML, JSON, NumPy) that
accepts things difflab cannot use: an alias bomb that expands to billions of values, JSON nested
100,000 deep, integers beyond 64 bits, NaN, an array header that claims 10^14 values. The
helpers here are the one place those limits live:
:func:`check_tree` bounds the size and depth of a parsed document without expanding it,
:func:`quote` bounds any value quoted in an error sentence, and :func:`check_number` refuses
numbers a tensor cannot hold and :func:`load_npz_checked` reads an ``.npz`` only after its headers
match a schema. The typed schemas themselves are the config dataclasses
(:mod:`difflab.config`), which call these.
"""

from __future__ import annotations

import math
import reprlib
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from difflab.errors import DifflabError

MAX_QUOTE_CHARS = 80  # longest value quoted in an error sentence
MAX_TREE_VALUES = 100_000  # values in one parsed config or checkpoint description
MAX_TREE_DEPTH = 64  # nesting of mappings and lists
MAX_TEXT_CHARS = 100_000  # a string value of a config
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1  # what a torch seed or tensor element can hold
ELLIPSIS = "…"

_repr = reprlib.Repr()
_repr.maxstring = _repr.maxother = _repr.maxlong = MAX_QUOTE_CHARS
_repr.maxlevel, _repr.maxlist, _repr.maxdict, _repr.maxtuple = 3, 6, 4, 6


def shorten(text: str, limit: int = MAX_QUOTE_CHARS) -> str:
    """``text`` on one line, cut to ``limit`` characters with "…" when longer."""
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + ELLIPSIS


def quote(value: Any) -> str:
    """``repr(value)`` for an error sentence: bounded in length and work, whatever the value.

    reprlib stops at a few levels and items, so a shared-reference bomb costs nothing to quote.
    """
    try:
        text = _repr.repr(value)
    except Exception:  # a value whose repr fails: name its type
        text = f"<{type(value).__name__}>"
    return shorten(text)


def check_tree(value: Any, where: str, limit: int = MAX_TREE_VALUES) -> None:
    """Refuse a parsed document of more than :data:`MAX_TREE_VALUES` values or deeper than
    :data:`MAX_TREE_DEPTH`, counting shared references (YAML aliases) each time they occur but
    stopping at the limit, so that the check itself stays cheap."""
    count = 0
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        node, depth = stack.pop()
        count += 1
        if count > limit:
            raise DifflabError(
                f"{where} holds more than {limit:,} values (a YAML alias bomb?); "
                "give a plain config of sections and values."
            )
        if depth > MAX_TREE_DEPTH:
            raise DifflabError(
                f"{where} is nested more than {MAX_TREE_DEPTH} levels deep; give a plain config "
                "of sections and values."
            )
        if isinstance(node, dict):
            stack.extend((child, depth + 1) for pair in node.items() for child in pair)
        elif isinstance(node, (list, tuple)):
            stack.extend((child, depth + 1) for child in node)
        elif isinstance(node, str) and len(node) > MAX_TEXT_CHARS:
            raise DifflabError(
                f"{where} holds a text of {len(node):,} characters (at most "
                f"{MAX_TEXT_CHARS:,}); shorten it."
            )


def check_number(value: int | float, where: str) -> None:
    """Refuse NaN, infinities and integers that do not fit in 64 bits, naming ``where``."""
    if isinstance(value, float) and not math.isfinite(value):
        raise DifflabError(f"{where} must be a finite number, got {value}.")
    if isinstance(value, int) and not INT64_MIN <= value <= INT64_MAX:
        raise DifflabError(
            f"{where} is {quote(value)}, which does not fit in 64 bits; give a smaller number."
        )


MAX_ARRAY_VALUES = 500_000_000  # one array of a statistics file (a 16k x 16k covariance fits)
ARRAY_KINDS = {"float": "fiu", "int": "iu", "text": "U"}  # dtype kinds each kind accepts


def load_npz_checked(
    path: str | Path, schema: dict[str, tuple[str, int]], max_values: int = MAX_ARRAY_VALUES
) -> dict[str, np.ndarray]:
    """The arrays of an ``.npz`` whose entries named in ``schema`` (name -> (kind, ndim), kind one
    of :data:`ARRAY_KINDS`) have that kind and number of dimensions, each array at most
    ``max_values`` values, all read from the headers before any data is (a header that claims
    10^14 values costs nothing). Entries the file lacks are left to the caller; other entries
    are not read. File errors (OSError, ValueError, BadZipFile) propagate."""
    path = Path(path)
    with zipfile.ZipFile(path) as archive:
        for info in archive.infolist():
            name = info.filename.removesuffix(".npy")
            with archive.open(info) as handle:
                version = np.lib.format.read_magic(handle)
                reader = (
                    np.lib.format.read_array_header_1_0
                    if version == (1, 0)
                    else np.lib.format.read_array_header_2_0
                )
                shape, _, dtype = reader(handle)
            if name not in schema:
                continue
            kind, ndim = schema[name]
            if dtype.kind not in ARRAY_KINDS[kind] or len(shape) != ndim:
                raise DifflabError(
                    f"{path}: entry {name!r} must be a {ndim}-dimensional {kind} array, got "
                    f"{len(shape)}-dimensional {dtype}; recompute the file."
                )
            if math.prod(shape) > max_values:
                raise DifflabError(
                    f"{path}: entry {name!r} claims {math.prod(shape):,} values (at most "
                    f"{max_values:,}); the file is damaged: recompute it."
                )
    with np.load(path, allow_pickle=False) as data:
        return {key: data[key] for key in data.files if key in schema}
