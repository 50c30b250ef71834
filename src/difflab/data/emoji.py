"""The ``emoji`` dataset: the colour bitmaps of Noto Color Emoji, named by Unicode's emoji list.

Sources (Debian packages, installed by ``make install`` where apt is usable):

* ``fonts-noto-color-emoji``: :data:`EMOJI_FONT`, whose CBDT table holds one 136×128 PNG per
  glyph; read with ``fontTools``.
* ``unicode-data``: :data:`EMOJI_TEST` (``emoji-test.txt``); its ``fully-qualified`` lines give
  each emoji's code points, CLDR short name ("red apple", "woman: medium skin tone"), group and
  subgroup. The "Component" group (skin-tone and hair swatches) is dropped; the other 9 groups,
  in file order (:data:`EMOJI_GROUPS`), are the labels.

Glyphs: a single code point maps through the font's ``cmap``; a sequence (skin tones, ZWJ
sequences, flags, keycaps, subdivision flags) through its GSUB ligature substitutions (lookup
type 4), matched on the whole sequence with variation selectors (U+FE0E/FE0F) dropped when the
font does not map them. An emoji whose sequence is not one ligature, or whose glyph has no
bitmap, is left out and listed in :attr:`EmojiTable.unmapped`. With Debian 12's packages
(font 2.042, Unicode 15.0) all 3,655 fully-qualified emoji map.

Pixels: each PNG is composited over white (no transparent black), padded with white to a
centred square (136×136), and resized to ``image_size`` (default 64) with PIL's Lanczos filter:
uint8 RGB, stored as an image store (:mod:`difflab.data.streaming`) in ``data_cache_dir()``,
keyed by the size and CRC-32 of both source files and the settings, checked with its CRC on
every load and rebuilt when stale or damaged.

Split: within each group, the last 10 % of a seed-0 permutation is ``test``
(:func:`difflab.data.splits.split_indices`), so both splits hold every group in proportion; each
split's items are then put in one seed-0 permuted order, so a ``limit`` prefix mixes the groups.
"""

from __future__ import annotations

import io
import os
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from difflab.data.splits import SPLIT_SEED, split_indices
from difflab.data.streaming import (
    CHUNK_IMAGES,
    ImageStore,
    cached_image_store,
    data_cache_dir,
    file_checksum,
    settings_digest,
    write_image_store,
)
from difflab.errors import DifflabError
from difflab.io.process_group import SINGLE, Distributed

EMOJI_FONT = Path("/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf")
EMOJI_TEST = Path("/usr/share/unicode/emoji/emoji-test.txt")
EMOJI_GROUPS: tuple[str, ...] = (
    "Smileys & Emotion",
    "People & Body",
    "Animals & Nature",
    "Food & Drink",
    "Travel & Places",
    "Activities",
    "Objects",
    "Symbols",
    "Flags",
)
DROPPED_GROUP = "Component"
DEFAULT_IMAGE_SIZE = 64
TEST_DENOMINATOR = 10  # 10 % of each group is test
RENDER_VERSION = 1  # bump when render_emoji changes its pixels
INSTALL_HINT = (
    "install fonts-noto-color-emoji and unicode-data (apt-get install -y "
    "fonts-noto-color-emoji unicode-data) or run make install"
)
VARIATION_SELECTORS = frozenset({0xFE0E, 0xFE0F})
ZWJ, KEYCAP = 0x200D, 0x20E3
SKIN_TONES = range(0x1F3FB, 0x1F400)
REGIONAL_INDICATORS = range(0x1F1E6, 0x1F200)
TAGS = range(0xE0020, 0xE0080)


@dataclass(frozen=True)
class Emoji:
    """One fully-qualified line of ``emoji-test.txt``."""

    codepoints: tuple[int, ...]
    name: str  # CLDR short name, e.g. "woman: medium skin tone"
    group: str  # one of EMOJI_GROUPS
    subgroup: str  # e.g. "person", "country-flag"

    @property
    def text(self) -> str:
        return "".join(map(chr, self.codepoints))

    @property
    def kind(self) -> str:
        """``"single"``, ``"ZWJ sequence"``, ``"keycap"``, ``"flag"``, ``"subdivision flag"``,
        ``"skin tone"`` or ``"other sequence"``."""
        points = [c for c in self.codepoints if c not in VARIATION_SELECTORS]
        if len(points) == 1:
            return "single"
        if ZWJ in points:
            return "ZWJ sequence"
        if KEYCAP in points:
            return "keycap"
        if len(points) == 2 and all(c in REGIONAL_INDICATORS for c in points):
            return "flag"
        if any(c in TAGS for c in points):
            return "subdivision flag"
        if any(c in SKIN_TONES for c in points):
            return "skin tone"
        return "other sequence"


def _missing(path: Path) -> DifflabError:
    return DifflabError(f"emoji: {path} is missing; {INSTALL_HINT}.")


def read_emoji_test(path: str | Path | None = None) -> list[Emoji]:
    """The fully-qualified emoji of ``emoji-test.txt`` (default :data:`EMOJI_TEST`), in file
    order, "Component" dropped."""
    path = Path(path if path is not None else EMOJI_TEST)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise _missing(path) from None
    except (OSError, UnicodeDecodeError) as error:
        raise DifflabError(f"emoji: {path} cannot be read ({error}); {INSTALL_HINT}.") from None
    found, group, subgroup = [], "", ""
    for number, line in enumerate(text.splitlines(), 1):
        if line.startswith("# group:"):
            group = line.partition(":")[2].strip()
        elif line.startswith("# subgroup:"):
            subgroup = line.partition(":")[2].strip()
        elif "; fully-qualified" in line and group != DROPPED_GROUP:
            points, _, comment = line.partition(";")
            # comment: "fully-qualified     # 🍎 E0.6 red apple" -> the name after the version
            parts = comment.partition("#")[2].split(maxsplit=2)
            try:
                codepoints = tuple(int(p, 16) for p in points.split())
                name = parts[2].strip()
            except (ValueError, IndexError):
                raise DifflabError(
                    f"emoji: line {number} of {path} is not an emoji-test.txt entry ({line!r}); "
                    f"reinstall unicode-data (apt-get install --reinstall unicode-data)."
                ) from None
            if group not in EMOJI_GROUPS:
                raise DifflabError(
                    f"emoji: {path} has an unknown group {group!r} at line {number}; difflab "
                    f"knows {', '.join(EMOJI_GROUPS)}."
                )
            found.append(Emoji(codepoints, name, group, subgroup))
    if not found:
        raise DifflabError(f"emoji: {path} lists no fully-qualified emoji; {INSTALL_HINT}.")
    return found


class EmojiFont:
    """Noto Color Emoji's glyph lookup (cmap + GSUB ligatures) and CBDT bitmaps."""

    def __init__(self, path: str | Path | None = None) -> None:
        self.path = path = Path(path if path is not None else EMOJI_FONT)
        if not path.is_file():
            raise _missing(path)
        try:
            from fontTools.ttLib import TTFont
        except ImportError:
            raise DifflabError(
                "emoji: reading the emoji font needs fontTools; pip install fonttools==4.68.0 "
                "or run make install."
            ) from None
        try:
            font = TTFont(path, lazy=True)
            self.cmap: dict[int, str] = font.getBestCmap() or {}
            self.ligatures = self._ligatures(font)
            self.bitmaps = font["CBDT"].strikeData[0]  # glyph name -> bitmap (PNG)
        except Exception as error:  # fontTools raises many kinds on a damaged file
            raise DifflabError(
                f"emoji: {path} cannot be read as a colour emoji font ({type(error).__name__}: "
                f"{error}); reinstall it (apt-get install --reinstall fonts-noto-color-emoji)."
            ) from None

    @staticmethod
    def _ligatures(font: Any) -> dict[tuple[str, ...], str]:
        """Every ligature of the GSUB table: glyph sequence -> ligature glyph (first one wins)."""
        found: dict[tuple[str, ...], str] = {}
        if "GSUB" not in font:
            return found
        for lookup in font["GSUB"].table.LookupList.Lookup:
            if lookup.LookupType != 4:
                continue
            for subtable in lookup.SubTable:
                for first, ligatures in subtable.ligatures.items():
                    for ligature in ligatures:
                        found.setdefault((first, *ligature.Component), ligature.LigGlyph)
        return found

    def glyph(self, codepoints: tuple[int, ...]) -> str | None:
        """The one glyph that draws ``codepoints``, or None when the font has none with a bitmap."""
        for points in (codepoints, tuple(c for c in codepoints if c not in VARIATION_SELECTORS)):
            if not points or any(c not in self.cmap for c in points):
                continue
            glyphs = tuple(self.cmap[c] for c in points)
            name = glyphs[0] if len(glyphs) == 1 else self.ligatures.get(glyphs)
            if name is not None and name in self.bitmaps:
                return name
        return None

    def png(self, glyph: str) -> bytes:
        """The PNG bytes of ``glyph``'s colour bitmap."""
        bitmap = self.bitmaps[glyph]
        bitmap.ensureDecompiled()
        return bitmap.imageData


def render_emoji(png: bytes, image_size: int = DEFAULT_IMAGE_SIZE) -> np.ndarray:
    """A glyph's PNG as ``(image_size, image_size, 3)`` uint8 RGB: over white, padded, resized.

    The bitmap (136×128 RGBA or palette with transparency) is alpha-composited over opaque white,
    centred on a white square of its longer side, then resized with Lanczos.
    """
    with Image.open(io.BytesIO(png)) as img:
        rgba = img.convert("RGBA")
    side = max(rgba.size)
    canvas = Image.new("RGBA", (side, side), (255, 255, 255, 255))
    canvas.alpha_composite(rgba, ((side - rgba.width) // 2, (side - rgba.height) // 2))
    rgb = canvas.convert("RGB")
    if side != image_size:
        rgb = rgb.resize((image_size, image_size), Image.Resampling.LANCZOS)
    return np.asarray(rgb, dtype=np.uint8)


@dataclass(frozen=True)
class EmojiTable:
    """The emoji of ``emoji-test.txt`` joined with the font's glyphs."""

    emoji: tuple[Emoji, ...]  # those with a glyph, in file order
    glyphs: tuple[str, ...]  # the glyph of each
    unmapped: tuple[Emoji, ...]  # those the font cannot draw as one glyph


def map_emoji(font: EmojiFont, entries: list[Emoji]) -> EmojiTable:
    """Join the emoji list with the font's glyphs (see the module docstring)."""
    mapped, glyphs, unmapped = [], [], []
    for entry in entries:
        glyph = font.glyph(entry.codepoints)
        if glyph is None:
            unmapped.append(entry)
        else:
            mapped.append(entry)
            glyphs.append(glyph)
    return EmojiTable(tuple(mapped), tuple(glyphs), tuple(unmapped))


def _codes(codepoints: tuple[int, ...]) -> str:
    return " ".join(f"{c:04X}" for c in codepoints)


def _store_key(image_size: int, font: Path, test: Path) -> dict[str, Any]:
    for path in (font, test):
        if not path.is_file():
            raise _missing(path)
    return {
        "source": "emoji",
        "font": file_checksum(font),
        "emoji_test": file_checksum(test),
        "image_size": image_size,
        "resample": "lanczos",
        "background": "white",
        "render": RENDER_VERSION,
    }


def emoji_sources_fingerprint() -> str:
    """16 hex digits that change when the installed font or emoji list changes."""
    return settings_digest(_store_key(0, EMOJI_FONT, EMOJI_TEST))


def emoji_store(
    image_size: int = DEFAULT_IMAGE_SIZE,
    *,
    font: str | Path | None = None,
    emoji_test: str | Path | None = None,
    cache: str | Path | None = None,
    group: Distributed = SINGLE,
) -> ImageStore:
    """Every mapped emoji at ``image_size`` as a cached image store (all groups, file order).

    The store's columns hold each image's ``caption`` (the CLDR name), ``group``, ``subgroup``,
    ``codepoints`` (hex, space-separated) and ``kind``; ``info["unmapped"]`` lists the emoji the
    font could not draw (name, code points, kind).

    Args:
        image_size: side of the square images in pixels.
        font, emoji_test: the source files (default :data:`EMOJI_FONT`, :data:`EMOJI_TEST`, the
            Debian packages' paths).
        cache: the folder of the cache (default :func:`data_cache_dir`).
        group: the torchrun group; rank 0 builds a missing cache.
    """
    font = Path(font if font is not None else EMOJI_FONT)
    emoji_test = Path(emoji_test if emoji_test is not None else EMOJI_TEST)
    key = _store_key(image_size, font, emoji_test)
    folder = Path(cache) if cache is not None else data_cache_dir()
    path = folder / f"emoji-{image_size}px-{settings_digest(key)}.npy"

    def build(target: Path) -> ImageStore:
        emoji_font = EmojiFont(font)
        table = map_emoji(emoji_font, read_emoji_test(emoji_test))
        shape = (len(table.emoji), image_size, image_size, 3)
        pngs = [emoji_font.png(glyph) for glyph in table.glyphs]  # 10 MB in all

        def chunks() -> Iterator[np.ndarray]:
            with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
                for start in range(0, len(pngs), CHUNK_IMAGES):  # PIL releases the GIL
                    part = pngs[start : start + CHUNK_IMAGES]
                    yield np.stack(list(pool.map(render_emoji, part, [image_size] * len(part))))

        return write_image_store(
            target,
            shape,
            chunks(),  # (b, S, S, 3) each
            name="emoji",
            key=key,
            labels=[EMOJI_GROUPS.index(e.group) for e in table.emoji],
            class_names=EMOJI_GROUPS,
            columns={
                "caption": [e.name for e in table.emoji],
                "group": [e.group for e in table.emoji],
                "subgroup": [e.subgroup for e in table.emoji],
                "codepoints": [_codes(e.codepoints) for e in table.emoji],
                "kind": [e.kind for e in table.emoji],
            },
            info={
                "unmapped": [
                    {"name": e.name, "codepoints": _codes(e.codepoints), "kind": e.kind}
                    for e in table.unmapped
                ],
            },
        )

    return cached_image_store(path, key, build, verify=True, group=group)


def emoji_split_rows(labels: np.ndarray, split: str) -> np.ndarray:
    """Store rows of ``split``: 10 % of each group (seed-0 permutation) is test, the rest train.

    Args:
        labels: ``(N,)`` group labels of the whole store, in store order.
        split: ``"train"`` or ``"test"``.

    Returns:
        ``(M,)`` int64 rows, in one seed-0 permuted order (a prefix mixes the groups).
    """
    parts = []
    for label in range(int(labels.max(initial=-1)) + 1):
        members = np.flatnonzero(labels == label)
        if len(members):
            parts.append(members[split_indices(len(members), split, TEST_DENOMINATOR).numpy()])
    rows = np.concatenate(parts) if parts else np.empty(0, dtype=np.int64)
    order = torch.randperm(len(rows), generator=torch.Generator().manual_seed(SPLIT_SEED))
    return rows[order.numpy()]


def emoji_rows(store: ImageStore, split: str, limit: int | None = None) -> np.ndarray:
    """The store rows of the first ``limit`` items of ``split`` (all when None)."""
    return emoji_split_rows(store.labels, split)[:limit]


def load_emoji_split(
    split: str,
    image_size: int = DEFAULT_IMAGE_SIZE,
    limit: int | None = None,
    *,
    cache: str | Path | None = None,
) -> tuple[np.ndarray, torch.Tensor, tuple[str, ...]]:
    """One split of the emoji, in memory.

    Returns:
        ``pixels`` ``(M, S, S, 3)`` uint8, ``labels`` ``(M,)`` int64 (index into
        :data:`EMOJI_GROUPS`) and the ``captions`` (CLDR names) of the M images.
    """
    store = emoji_store(image_size, cache=cache)
    rows = emoji_rows(store, split, limit)
    pixels = np.asarray(store.pixels()[rows])  # (M, S, S, 3)
    captions = store.columns["caption"]
    return pixels, torch.from_numpy(store.labels[rows]), tuple(captions[i] for i in rows)


def emoji_metadata(
    split: str = "train",
    *,
    image_size: int = DEFAULT_IMAGE_SIZE,
    limit: int | None = None,
    cache: str | Path | None = None,
) -> tuple[Emoji, ...]:
    """Name, group, subgroup and code points of each image of ``load_dataset("emoji", ...)``
    with the same ``split``, ``image_size`` and ``limit``, in the same order."""
    store = emoji_store(image_size, cache=cache)
    columns = store.columns
    return tuple(
        Emoji(
            tuple(int(c, 16) for c in columns["codepoints"][i].split()),
            columns["caption"][i],
            columns["group"][i],
            columns["subgroup"][i],
        )
        for i in emoji_rows(store, split, limit)
    )


def describe_emoji(image_size: int = DEFAULT_IMAGE_SIZE) -> dict[str, Any]:
    """Counts for the README: emoji listed and mapped, images per split and group, the kinds
    left out, and the seconds to build (decode) and to load the cache."""
    listed = read_emoji_test()
    start = time.perf_counter()
    font = EmojiFont()
    table = map_emoji(font, listed)
    for glyph in table.glyphs:
        render_emoji(font.png(glyph), image_size)
    decode_s = time.perf_counter() - start
    start = time.perf_counter()
    store = emoji_store(image_size)
    pixels = np.asarray(store.pixels())
    load_s = time.perf_counter() - start
    kinds: dict[str, int] = {}
    for entry in table.unmapped:
        kinds[entry.kind] = kinds.get(entry.kind, 0) + 1
    return {
        "listed": len(listed),
        "mapped": len(table.emoji),
        "unmapped_kinds": kinds,
        "distinct_glyphs": len(set(table.glyphs)),
        "split_sizes": {s: len(emoji_split_rows(store.labels, s)) for s in ("train", "test")},
        "per_group": {g: int((store.labels == i).sum()) for i, g in enumerate(EMOJI_GROUPS)},
        "decode_seconds": round(decode_s, 2),
        "cache_load_seconds": round(load_s, 3),
        "cache_bytes": pixels.nbytes,
    }
