"""load_dataset's dispatch and option checks, and the tensor transforms."""

from __future__ import annotations

import pytest
import torch

from difflab.data import DATASET_NAMES, ImageDataset, load_dataset
from difflab.data.transforms import (
    center_crop_images,
    convert_channels,
    images_from_uint8,
    pad_images_to_32,
    resize_images,
)
from difflab.errors import DifflabError


def test_dataset_names():
    assert DATASET_NAMES == ("mnist", "fashion-mnist", "digits", "folder", "emoji")


def test_unknown_name_lists_the_names():
    with pytest.raises(
        DifflabError,
        match=r"unknown dataset 'cifar10'; use one of mnist, fashion-mnist, digits, folder",
    ):
        load_dataset("cifar10")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"split": "val"}, r"split must be 'train' or 'test', got 'val'"),
        ({"limit": 0}, r"limit must be a positive number of items, got 0"),
        ({"limit": "5"}, r"limit must be a positive number"),
        ({"image_size": -3}, r"image_size must be a positive number of pixels"),
        ({"channels": 2}, r"channels must be 1 \(gray\) or 3 \(RGB\), got 2"),
        ({"data_dir": "/somewhere"}, r"digits: .*drop --data-dir"),
    ],
)
def test_bad_options(kwargs, message):
    with pytest.raises(DifflabError, match=message):
        load_dataset("digits", **kwargs)


def test_folder_needs_a_folder():
    with pytest.raises(DifflabError, match=r"folder: no folder given; pass --data-dir"):
        load_dataset("folder")


def test_folder_prefix_round_trips(tmp_path, image_writer):
    image_writer(tmp_path / "p" / "a.png", (6, 6))
    first = load_dataset(str(tmp_path / "p"))
    again = load_dataset(first.name)
    assert again.name == first.name and torch.equal(again.images, first.images)


def test_image_dataset_checks_its_tensors():
    with pytest.raises(ValueError, match="labels must be"):
        ImageDataset("x", torch.zeros(2, 1, 4, 4), torch.zeros(3, dtype=torch.int64), ())


def test_images_from_uint8_range_and_layout():
    pixels = torch.tensor([[[[0, 255, 51]]]], dtype=torch.uint8)  # (1, 1, 1, 3) channels last
    images = images_from_uint8(pixels)
    assert images.shape == (1, 3, 1, 1) and images.is_contiguous()
    torch.testing.assert_close(images.flatten(), torch.tensor([-1.0, 1.0, -0.6]))


def test_pad_center_crop_inverse():
    images = torch.rand(2, 3, 28, 28) * 2 - 1
    padded = pad_images_to_32(images)
    assert padded.shape == (2, 3, 32, 32) and (padded[..., :2, :] == -1).all()
    assert torch.equal(center_crop_images(padded, 28), images)


def test_center_crop_of_non_square():
    images = torch.arange(4 * 8, dtype=torch.float32).view(1, 1, 4, 8)
    assert center_crop_images(images, 4)[0, 0, 0].tolist() == [2.0, 3.0, 4.0, 5.0]
    with pytest.raises(DifflabError, match="cannot center-crop 4×8 images to 5×5"):
        center_crop_images(images, 5)


def test_resize_and_channels():
    images = torch.rand(2, 1, 8, 8) * 2 - 1
    up = resize_images(images, 16)
    assert up.shape == (2, 1, 16, 16) and up.abs().max() <= 1
    torch.testing.assert_close(resize_images(up, 8).mean(), images.mean(), atol=1e-5, rtol=0)
    rgb = convert_channels(images, 3)
    assert rgb.shape == (2, 3, 8, 8) and torch.equal(rgb[:, 1:2], images)
    torch.testing.assert_close(convert_channels(rgb, 1), images)
