"""Image folders: class subfolders, modes, sizes, resize + center crop, split, bad files."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from difflab.data import load_dataset
from difflab.errors import DifflabError


def test_class_subfolders(tmp_path, image_writer):
    root = tmp_path / "pets"
    image_writer(root / "cat" / "a.png", (40, 30), "RGBA")
    image_writer(root / "cat" / "deep" / "b.jpg", (50, 50), "L")
    image_writer(root / "dog" / "c.bmp", (20, 60), "RGB")
    image_writer(root / "dog" / "d.webp", (33, 33), "RGB")
    (root / "empty_class").mkdir()
    (root / "README.txt").write_text("not an image")
    train = load_dataset("folder", data_dir=root, image_size=16)
    test = load_dataset(str(root), split="test", image_size=16)
    assert train.class_names == test.class_names == ("cat", "dog")
    assert (len(train), len(test)) == (3, 1)
    assert sorted(train.labels.tolist() + test.labels.tolist()) == [0, 0, 1, 1]
    assert train.images.shape == (3, 3, 16, 16) and train.channels == 3
    assert train.images.dtype == torch.float32 and train.images.abs().max() <= 1.0
    assert train.name == f"folder:{root}" and train.num_classes == 2


def test_unlabelled_gray_folder_keeps_common_size(tmp_path, image_writer):
    root = tmp_path / "faces"
    image_writer(root / "top.png", (12, 12), "L", color=0)
    image_writer(root / "nested" / "x.png", (12, 12), "LA", color=(255, 255))
    image_writer(root / "nested" / "y.jpeg", (12, 12), "1", color=1, fmt="JPEG")
    both = [load_dataset("folder", data_dir=root, split=s) for s in ("train", "test")]
    assert [len(d) for d in both] == [2, 1]
    images = torch.cat([d.images for d in both])
    assert images.shape == (3, 1, 12, 12)  # all gray, so one channel by default
    assert both[0].class_names == () and both[0].num_classes == 0
    assert (torch.cat([d.labels for d in both]) == 0).all()
    assert sorted(images.mean(dim=(1, 2, 3)).round().tolist()) == [-1.0, 1.0, 1.0]


def test_transparent_pixels_become_white_and_rgb_to_gray(tmp_path, image_writer):
    root = tmp_path / "alpha"
    image_writer(root / "clear.png", (8, 8), "RGBA", color=(0, 0, 0, 0))
    image_writer(root / "red.png", (8, 8), "RGB", color=(255, 0, 0))
    rgb = torch.cat([load_dataset(str(root), split=s).images for s in ("train", "test")])
    gray = torch.cat(
        [load_dataset(str(root), split=s, channels=1).images for s in ("train", "test")]
    )
    assert rgb.shape == (2, 3, 8, 8) and gray.shape == (2, 1, 8, 8)
    means = sorted(gray.mean(dim=(1, 2, 3)).tolist())
    assert means[1] == 1.0  # fully transparent over white
    assert means[0] == pytest.approx(round(0.299 * 255) / 127.5 - 1, abs=1e-6)  # PIL luma of red


def test_sixteen_bit_gray_is_scaled(tmp_path):
    root = tmp_path / "deep"
    root.mkdir()
    Image.fromarray(np.full((6, 6), 65535, np.uint16)).save(root / "w.png")
    ds = load_dataset(str(root))
    assert ds.images.shape == (1, 1, 6, 6) and (ds.images == 1.0).all()


def test_resize_and_center_crop_keep_the_center(tmp_path):
    root = tmp_path / "wide"
    root.mkdir()
    pixels = np.zeros((40, 120, 3), np.uint8)  # height 40, width 120: red | green | blue thirds
    pixels[:, :40, 0] = pixels[:, 40:80, 1] = pixels[:, 80:, 2] = 255
    Image.fromarray(pixels).save(root / "stripes.png")
    for size in (40, 20):  # crop only, then resize + crop
        image = load_dataset(str(root), image_size=size).images[0]  # (3, size, size)
        assert image.shape == (3, size, size)
        center = image[:, :, size // 4 : 3 * size // 4]
        assert (center[1] > 0.9).all() and (center[0] < -0.9).all() and (center[2] < -0.9).all()


def test_single_image_is_in_both_splits(tmp_path, image_writer):
    image_writer(tmp_path / "one" / "only.png", (5, 5))
    train, test = (load_dataset(str(tmp_path / "one"), split=s) for s in ("train", "test"))
    assert len(train) == len(test) == 1 and torch.equal(train.images, test.images)


def test_split_is_ten_percent_disjoint_and_deterministic(tmp_path, image_writer):
    root = tmp_path / "many"
    for i in range(25):
        image_writer(root / f"{i:02d}.png", (4, 4), "L", color=i * 10)
    values = {}
    for split in ("train", "test"):
        ds = load_dataset(str(root), split=split)
        values[split] = ((ds.images[:, 0, 0, 0] + 1) * 127.5).round().int().tolist()
    assert (len(values["train"]), len(values["test"])) == (23, 2)
    assert sorted(values["train"] + values["test"]) == [i * 10 for i in range(25)]
    limited = load_dataset(str(root), limit=5)
    assert ((limited.images[:, 0, 0, 0] + 1) * 127.5).round().int().tolist() == values["train"][:5]


def test_mixed_sizes_need_image_size(tmp_path, image_writer):
    image_writer(tmp_path / "m" / "a.png", (10, 10))
    image_writer(tmp_path / "m" / "b.png", (12, 10))
    with pytest.raises(DifflabError, match=r"different sizes .*b\.png.*pass image_size"):
        load_dataset(str(tmp_path / "m"))


def test_missing_folder(tmp_path):
    with pytest.raises(DifflabError, match=r"folder: .*nowhere does not exist"):
        load_dataset("folder", data_dir=tmp_path / "nowhere")
    with pytest.raises(DifflabError, match=r"nowhere does not exist"):
        load_dataset(str(tmp_path / "nowhere"))


def test_empty_folder_names_extensions(tmp_path):
    (tmp_path / "e" / "sub").mkdir(parents=True)
    (tmp_path / "e" / "notes.txt").write_text("hi")
    with pytest.raises(
        DifflabError,
        match=r"e holds no image files \(looked for \.bmp, \.jpeg, \.jpg, \.png, \.webp",
    ):
        load_dataset("folder", data_dir=tmp_path / "e")


def test_corrupt_image_names_file(tmp_path, image_writer):
    image_writer(tmp_path / "c" / "good.png", (4, 4))
    (tmp_path / "c" / "bad.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(DifflabError, match=r"bad\.png cannot be read as an image .*remove it"):
        load_dataset(str(tmp_path / "c"))


def test_truncated_image_names_file(tmp_path, image_writer):
    path = image_writer(tmp_path / "t" / "cut.png", (64, 64), "RGB", color=None)
    noisy = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(noisy).save(path)
    path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(DifflabError, match=r"cut\.png cannot be read as an image"):
        load_dataset(str(tmp_path / "t"))


def test_zero_byte_image_names_file(tmp_path, image_writer):
    image_writer(tmp_path / "z" / "good.png", (4, 4))
    (tmp_path / "z" / "zero.jpg").touch()
    with pytest.raises(DifflabError, match=r"zero\.jpg is an empty \(0-byte\) file"):
        load_dataset(str(tmp_path / "z"))
