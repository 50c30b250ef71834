"""scikit-learn digits: values, the fixed split, and options on 8×8 data."""

from __future__ import annotations

import pytest
import torch
from sklearn.datasets import load_digits

from difflab.data import ImageDataset, load_dataset
from difflab.data.splits import split_indices
from difflab.errors import DifflabError


@pytest.fixture(scope="module")
def digits() -> dict[str, ImageDataset]:
    return {split: load_dataset("digits", split=split) for split in ("train", "test")}


def test_digits_contract(digits):
    train, test = digits["train"], digits["test"]
    assert len(train) + len(test) == 1797 and len(test) == 359
    assert train.images.shape == (1438, 1, 8, 8) and train.images.dtype == torch.float32
    assert train.images.min() == -1.0 and train.images.max() == 1.0
    assert train.labels.dtype == torch.int64 and set(train.labels.tolist()) == set(range(10))
    assert train.class_names == tuple("0123456789") and train.image_size == 8


def test_digits_split_is_deterministic_and_disjoint(digits):
    train_idx, test_idx = split_indices(1797, "train", 5), split_indices(1797, "test", 5)
    assert not set(train_idx.tolist()) & set(test_idx.tolist())
    assert sorted(train_idx.tolist() + test_idx.tolist()) == list(range(1797))
    bunch = load_digits()
    for split, index in (("train", train_idx), ("test", test_idx)):
        expected = torch.as_tensor(bunch.images[index.numpy()], dtype=torch.float32) / 8 - 1
        torch.testing.assert_close(digits[split].images[:, 0], expected)
        assert digits[split].labels.tolist() == bunch.target[index.numpy()].tolist()
    again = load_dataset("digits", split="test", limit=50)
    assert torch.equal(again.images, digits["test"].images[:50])


def test_digits_options():
    ds = load_dataset("digits", limit=5, image_size=16, channels=3)
    assert ds.images.shape == (5, 3, 16, 16)
    assert ds.images.min() >= -1.0 and ds.images.max() <= 1.0
    assert torch.equal(ds.images[:, 0], ds.images[:, 2])


def test_pad_to_32_rejects_8x8():
    with pytest.raises(
        DifflabError, match=r"digits: pad_to_32 only applies to 28×28 images but these are 8×8"
    ):
        load_dataset("digits", limit=2, pad_to_32=True)
