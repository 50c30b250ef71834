"""The IDX reader: headers, gzip, and every way a file can be damaged."""

from __future__ import annotations

import gzip

import numpy as np
import pytest

from difflab.data import load_dataset
from difflab.data.idx import IMAGES_MAGIC, LABELS_MAGIC, read_idx, read_idx_header
from difflab.errors import DifflabError

IMAGES = np.arange(3 * 4 * 4, dtype=np.uint8).reshape(3, 4, 4)


@pytest.mark.parametrize("gz", [True, False])
def test_reads_images_and_header(tmp_path, idx_writer, gz):
    path = idx_writer(tmp_path / "x-images-idx3-ubyte", IMAGES, gz=gz)
    np.testing.assert_array_equal(read_idx(path, "images"), IMAGES)
    header = read_idx_header(path, "images")
    assert (header.magic, header.dims) == (IMAGES_MAGIC, (3, 4, 4))


def test_wrong_magic_names_file(tmp_path, idx_writer):
    path = idx_writer(tmp_path / "x-images-idx3-ubyte.gz", IMAGES, magic=0x00000D03)
    with pytest.raises(DifflabError, match=r"x-images-idx3-ubyte\.gz has magic number 0x00000d03"):
        read_idx(path, "images", source="mnist")


def test_labels_file_given_as_images(tmp_path, idx_writer):
    path = idx_writer(tmp_path / "labels.gz", np.zeros(3, np.uint8))
    with pytest.raises(DifflabError, match=rf"0x{LABELS_MAGIC:08x} \(IDX labels\)"):
        read_idx(path, "images")


def test_truncated(tmp_path, idx_writer):
    path = tmp_path / "t.gz"
    full = gzip.decompress(idx_writer(path, IMAGES).read_bytes())
    path.write_bytes(gzip.compress(full[:-5]))
    with pytest.raises(
        DifflabError, match=r"t\.gz is truncated \(expected 48 bytes of image data, found 43\)"
    ):
        read_idx(path, "images", source="mnist", fix="re-install it")


def test_truncated_header(tmp_path):
    path = tmp_path / "h"
    path.write_bytes(IMAGES_MAGIC.to_bytes(4, "big") + b"\x00\x00")
    with pytest.raises(DifflabError, match="truncated inside its header"):
        read_idx(path, "images")


def test_trailing_garbage(tmp_path, idx_writer):
    path = idx_writer(tmp_path / "g", IMAGES, gz=False)
    path.write_bytes(path.read_bytes() + b"junk")
    with pytest.raises(DifflabError, match=r"/g has 4 unexpected trailing bytes"):
        read_idx(path, "images")


@pytest.mark.parametrize("damage", ["cut", "flip", "tail"])
def test_corrupt_gzip(tmp_path, idx_writer, damage):
    path = idx_writer(tmp_path / "c.gz", IMAGES)
    blob = path.read_bytes()
    blob = {
        "cut": blob[: len(blob) // 2],
        "flip": blob[:12] + bytes(b ^ 0xFF for b in blob[12:20]) + blob[20:],
        "tail": blob + b"not gzip",
    }[damage]
    path.write_bytes(blob)
    with pytest.raises(DifflabError, match=r"c\.gz is a corrupt or truncated gzip file"):
        read_idx(path, "images")


def test_zero_byte_file(tmp_path):
    path = tmp_path / "empty.gz"
    path.touch()
    with pytest.raises(DifflabError, match=r"empty\.gz is empty \(0 bytes\)"):
        read_idx(path, "images")


def test_count_mismatch_through_load_dataset(idx_folder, idx_writer):
    folder = idx_folder()
    labels = folder / "train-labels-idx1-ubyte.gz"
    idx_writer(labels, np.zeros(7, np.uint8))
    with pytest.raises(
        DifflabError, match=r"holds 12 images but .*train-labels-idx1-ubyte\.gz holds 7 labels"
    ):
        load_dataset("mnist", data_dir=folder)


def test_label_out_of_range(idx_folder, idx_writer):
    folder = idx_folder()
    idx_writer(folder / "t10k-labels-idx1-ubyte.gz", np.full(5, 10, np.uint8))
    with pytest.raises(DifflabError, match=r"t10k-labels-idx1-ubyte\.gz holds label 10"):
        load_dataset("mnist", split="test", data_dir=folder)
