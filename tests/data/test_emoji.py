"""The emoji dataset: the emoji list, glyph mapping (cmap + GSUB ligatures), rendering over white,
the stratified split, the cache (reuse, invalidation, damage) and load_dataset("emoji").

Tests that read the real font use a short emoji list written into tmp_path (the whole set takes
~10 s to render); they are skipped where the Debian packages are not installed.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from difflab.data import emoji as emoji_module
from difflab.data import emoji_metadata, load_dataset, load_streaming_dataset
from difflab.data.emoji import (
    EMOJI_FONT,
    EMOJI_GROUPS,
    EMOJI_TEST,
    Emoji,
    EmojiFont,
    emoji_split_rows,
    emoji_store,
    read_emoji_test,
    render_emoji,
)
from difflab.data.streaming import sidecar_path
from difflab.errors import DifflabError
from difflab.metrics.reference import default_features, parse_data

needs_emoji = pytest.mark.skipif(
    not (EMOJI_FONT.is_file() and EMOJI_TEST.is_file()),
    reason="the emoji packages are not installed (apt-get install -y fonts-noto-color-emoji "
    "unicode-data, or make install)",
)

# a short emoji-test.txt: every kind of sequence, every group twice or more, one made-up
# sequence the font has no ligature for, and a "Component" line that must be dropped
SMALL_LIST = """\
# group: Smileys & Emotion
# subgroup: face-smiling
1F600 ; fully-qualified # 😀 E1.0 grinning face
263A FE0F ; fully-qualified # ☺️ E0.6 smiling face
# group: People & Body
# subgroup: person
1F469 ; fully-qualified # 👩 E2.0 woman
1F469 1F3FD ; fully-qualified # 👩🏽 E2.0 woman: medium skin tone
# subgroup: family
1F468 200D 1F469 200D 1F467 200D 1F466 ; fully-qualified # 👨‍👩‍👧‍👦 E2.0 family: man, woman, girl, boy
# group: Component
# subgroup: skin-tone
1F3FB ; fully-qualified # 🏻 E1.0 light skin tone
# group: Animals & Nature
# subgroup: animal-mammal
1F436 ; fully-qualified # 🐶 E0.6 dog face
1F431 ; fully-qualified # 🐱 E0.6 cat face
# group: Food & Drink
# subgroup: food-fruit
1F34E ; fully-qualified # 🍎 E0.6 red apple
1F34E 1F3FD ; fully-qualified # 🍎🏽 E0.0 apple: medium skin tone
1F34C ; fully-qualified # 🍌 E0.6 banana
# group: Travel & Places
# subgroup: transport-ground
1F697 ; fully-qualified # 🚗 E0.6 automobile
1F6B2 ; fully-qualified # 🚲 E0.6 bicycle
# group: Activities
# subgroup: sport
26BD ; fully-qualified # ⚽ E0.6 soccer ball
1F3C0 ; fully-qualified # 🏀 E0.6 basketball
# group: Objects
# subgroup: light & video
1F4A1 ; fully-qualified # 💡 E0.6 light bulb
1F56F FE0F ; fully-qualified # 🕯️ E0.7 candle
# group: Symbols
# subgroup: keycap
0023 FE0F 20E3 ; fully-qualified # #️⃣ E0.6 keycap: #
0037 FE0F 20E3 ; fully-qualified # 7️⃣ E0.6 keycap: 7
# group: Flags
# subgroup: country-flag
1F1EF 1F1F5 ; fully-qualified # 🇯🇵 E0.6 flag: Japan
# subgroup: subdivision-flag
1F3F4 E0067 E0062 E0065 E006E E0067 E007F ; fully-qualified # 🏴󠁧󠁢󠁥󠁮󠁧󠁿 E5.0 flag: England
"""
SMALL_COUNT = 20  # fully-qualified lines outside "Component"
SIZE = 16  # pixels: small, so the tests render fast


@pytest.fixture(scope="module")
def small_list(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("emoji") / "emoji-test.txt"
    path.write_text(SMALL_LIST, encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def font() -> EmojiFont:
    if not EMOJI_FONT.is_file():
        pytest.skip("fonts-noto-color-emoji is not installed")
    return EmojiFont()


@pytest.fixture
def small_sources(monkeypatch: pytest.MonkeyPatch, small_list: Path, tmp_path: Path) -> Path:
    """load_dataset("emoji") reads the short list, and caches in tmp_path; returns the cache."""
    monkeypatch.setattr(emoji_module, "EMOJI_TEST", small_list)
    monkeypatch.setenv("DIFFLAB_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "data"


def by_name(entries: list[Emoji]) -> dict[str, Emoji]:
    return {entry.name: entry for entry in entries}


# --- the list -----------------------------------------------------------------------------------


def test_small_list_parses_and_drops_component(small_list: Path):
    entries = read_emoji_test(small_list)
    assert len(entries) == SMALL_COUNT
    named = by_name(entries)
    assert "light skin tone" not in named
    woman = named["woman: medium skin tone"]
    assert woman.codepoints == (0x1F469, 0x1F3FD)
    assert (woman.group, woman.subgroup, woman.kind) == ("People & Body", "person", "skin tone")
    kinds = {name: named[name].kind for name in ("keycap: #", "flag: Japan", "flag: England")}
    assert kinds == {
        "keycap: #": "keycap",
        "flag: Japan": "flag",
        "flag: England": "subdivision flag",
    }
    assert named["family: man, woman, girl, boy"].kind == "ZWJ sequence"
    assert named["smiling face"].kind == "single"  # a variation selector is not a sequence


@pytest.mark.skipif(not EMOJI_TEST.is_file(), reason="unicode-data is not installed")
def test_full_list_has_nine_groups():
    entries = read_emoji_test()
    assert len(entries) >= 3600  # 3,655 in Unicode 15.0
    assert {e.group for e in entries} == set(EMOJI_GROUPS)


def test_bad_list_line_names_the_file(tmp_path: Path):
    path = tmp_path / "emoji-test.txt"
    path.write_text("# group: Flags\nZZZZ ; fully-qualified # ? E0.6 nothing\n", encoding="utf-8")
    with pytest.raises(DifflabError, match=r"line 2 of .*emoji-test.txt is not an emoji-test"):
        read_emoji_test(path)


# --- glyphs -------------------------------------------------------------------------------------


def test_ligatures_map_sequences_to_their_own_glyphs(font: EmojiFont):
    def glyph(*codepoints: int) -> str | None:
        return font.glyph(codepoints)

    woman, woman_medium = glyph(0x1F469), glyph(0x1F469, 0x1F3FD)
    assert woman is not None and woman_medium is not None and woman != woman_medium
    japan = glyph(0x1F1EF, 0x1F1F5)
    assert japan is not None and japan not in (glyph(0x1F1EF), glyph(0x1F1F5))
    keycap = glyph(0x23, 0xFE0F, 0x20E3)
    assert keycap is not None and keycap != font.cmap[0x23]
    england = glyph(0x1F3F4, 0xE0067, 0xE0062, 0xE0065, 0xE006E, 0xE0067, 0xE007F)
    assert england is not None and england != glyph(0x1F3F4)
    family = glyph(0x1F468, 0x200D, 0x1F469, 0x200D, 0x1F467, 0x200D, 0x1F466)
    assert family is not None and family not in (glyph(0x1F468), glyph(0x1F469))
    assert glyph(0x1F34E, 0x1F3FD) is None  # no skin-toned apple: left out, not a wrong glyph


@needs_emoji
def test_every_listed_emoji_maps(font: EmojiFont):
    table = emoji_module.map_emoji(font, read_emoji_test())
    assert len(table.emoji) == len(read_emoji_test())  # Debian 12: all 3,655
    assert table.unmapped == ()


def test_render_composites_over_white_and_pads():
    glyph = np.zeros((128, 136, 4), dtype=np.uint8)  # transparent black everywhere
    glyph[32:96, 36:100] = (200, 0, 0, 255)  # an opaque red square
    glyph[0:8, 0:8] = (0, 0, 0, 128)  # half-transparent black: mid gray over white
    buffer = io.BytesIO()
    Image.fromarray(glyph, "RGBA").save(buffer, format="PNG")
    pixels = render_emoji(buffer.getvalue(), 136)  # no resize: pixel-exact
    assert pixels.shape == (136, 136, 3) and pixels.dtype == np.uint8
    assert (pixels[:4] == 255).all() and (pixels[-4:] == 255).all()  # the padding is white
    assert (pixels[4 + 100, 0] == 255).all()  # transparent black became white
    assert tuple(pixels[4 + 64, 68]) == (200, 0, 0)
    assert abs(int(pixels[4 + 2, 2, 0]) - 127) <= 1  # half black over white
    small = render_emoji(buffer.getvalue(), SIZE)
    assert small.shape == (SIZE, SIZE, 3)
    assert (small[0, 0] > 120).all() and (small[-1, -1] == 255).all()


# --- the split ----------------------------------------------------------------------------------


def test_split_is_disjoint_covering_stratified_and_fixed():
    labels = np.repeat(np.arange(9), [166, 2148, 152, 133, 218, 85, 261, 223, 269])
    train, test = emoji_split_rows(labels, "train"), emoji_split_rows(labels, "test")
    assert len(np.intersect1d(train, test)) == 0
    assert np.array_equal(np.sort(np.concatenate([train, test])), np.arange(len(labels)))
    assert (len(train), len(test)) == (3294, 361)
    for group in range(9):
        members = int((labels == group).sum())
        assert int((labels[test] == group).sum()) == max(1, members // 10)
    assert np.array_equal(emoji_split_rows(labels, "test"), test)
    assert len(set(labels[train[:20]].tolist())) > 2  # a prefix mixes the groups


# --- the cache and the loader -------------------------------------------------------------------


@needs_emoji
def test_load_dataset_emoji(small_sources: Path):
    train = load_dataset("emoji", split="train", image_size=SIZE)
    test = load_dataset("emoji", split="test", image_size=SIZE, limit=5)
    assert train.channels == 3 and train.image_size == SIZE
    assert train.class_names == EMOJI_GROUPS and train.num_classes == 9
    assert len(train) + len(load_dataset("emoji", split="test", image_size=SIZE)) == SMALL_COUNT - 1
    assert len(test) == 5 and len(test.captions) == 5
    assert not set(train.captions) & set(test.captions)
    assert "apple: medium skin tone" not in train.captions + test.captions  # unmapped
    assert train.images.min() >= -1 and train.images.max() <= 1
    assert (train.images[:, :, 0, 0] == 1).all()  # white corners: composited over white
    meta = emoji_metadata("test", image_size=SIZE, limit=5)
    assert tuple(m.name for m in meta) == test.captions
    assert [EMOJI_GROUPS.index(m.group) for m in meta] == test.labels.tolist()
    again = load_dataset("emoji", split="test", image_size=SIZE, limit=5)
    assert torch.equal(again.images, test.images) and again.captions == test.captions
    streamed = load_streaming_dataset("emoji", split="test", image_size=SIZE, limit=5)
    assert torch.equal(streamed.images[torch.arange(5)], test.images)
    assert streamed.captions == test.captions and torch.equal(streamed.labels, test.labels)
    gray = load_dataset("emoji", split="test", image_size=SIZE, limit=2, channels=1)
    assert gray.channels == 1


@needs_emoji
def test_store_records_what_is_left_out(small_sources: Path, small_list: Path):
    store = emoji_store(SIZE, emoji_test=small_list)
    assert store.shape == (SMALL_COUNT - 1, SIZE, SIZE, 3)
    assert store.info["unmapped"] == [
        {"name": "apple: medium skin tone", "codepoints": "1F34E 1F3FD", "kind": "skin tone"}
    ]
    assert set(store.columns) == {"caption", "group", "subgroup", "codepoints", "kind"}


@needs_emoji
def test_cache_is_reused_and_invalidated(
    small_sources: Path, small_list: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    first = emoji_store(SIZE, emoji_test=small_list)
    pixels = np.array(first.pixels())

    def no_font(*args: object) -> None:
        raise AssertionError("the cache should have been reused")

    with monkeypatch.context() as patch:
        patch.setattr(emoji_module, "EmojiFont", no_font)
        reused = emoji_store(SIZE, emoji_test=small_list)
    assert reused.path == first.path and np.array_equal(reused.pixels(), pixels)

    other_size = emoji_store(SIZE // 2, emoji_test=small_list)
    assert other_size.path != first.path and other_size.shape[1] == SIZE // 2

    edited = tmp_path / "edited-emoji-test.txt"
    edited.write_text(SMALL_LIST.replace("E0.6 cat face", "E0.6 cat"), encoding="utf-8")
    renamed = emoji_store(SIZE, emoji_test=edited)
    assert renamed.path != first.path and "cat" in renamed.columns["caption"]


@needs_emoji
@pytest.mark.parametrize("damage", ["flip", "truncate", "no-sidecar", "bad-sidecar"])
def test_damaged_cache_is_rebuilt(small_sources: Path, small_list: Path, damage: str):
    first = emoji_store(SIZE, emoji_test=small_list)
    pixels = np.array(first.pixels())
    data = first.path.read_bytes()
    if damage == "flip":
        first.path.write_bytes(data[:-100] + bytes(b ^ 0xFF for b in data[-100:]))
    elif damage == "truncate":
        first.path.write_bytes(data[: len(data) // 2])
    elif damage == "no-sidecar":
        sidecar_path(first.path).unlink()
    else:
        sidecar_path(first.path).write_text("{not json")
    rebuilt = emoji_store(SIZE, emoji_test=small_list)
    assert rebuilt.path == first.path and np.array_equal(rebuilt.pixels(), pixels)
    assert sorted(p.name for p in first.path.parent.iterdir()) == sorted(
        [first.path.name, sidecar_path(first.path).name]
    )  # no temporaries left


def test_missing_packages_give_one_sentence(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    monkeypatch.setattr(emoji_module, "EMOJI_FONT", tmp_path / "NotoColorEmoji.ttf")
    monkeypatch.setenv("DIFFLAB_CACHE", str(tmp_path / "cache"))
    with pytest.raises(
        DifflabError,
        match=r"NotoColorEmoji.ttf is missing; install fonts-noto-color-emoji and unicode-data "
        r"\(apt-get install -y fonts-noto-color-emoji unicode-data\) or run make install\.",
    ):
        load_dataset("emoji", limit=2)
    monkeypatch.setattr(emoji_module, "EMOJI_TEST", tmp_path / "emoji-test.txt")
    with pytest.raises(DifflabError, match=r"emoji-test.txt is missing; install"):
        read_emoji_test()


def test_emoji_takes_no_data_dir():
    with pytest.raises(DifflabError, match=r"emoji: reads the files of .*drop --data-dir"):
        load_dataset("emoji", data_dir="/somewhere")


def test_reference_statistics_know_emoji():
    spec = parse_data("emoji:test")
    assert (spec.name, spec.split) == ("emoji", "test")
    assert default_features("emoji") == "vgg16"
