"""The learning-rate schedule: linear warm-up, then constant or cosine decay to a floor."""

from __future__ import annotations

import math

import pytest

from difflab.config import load_config
from difflab.training.update import learning_rate


def train_section(*extra: str):
    return load_config(
        None, ["train.lr=0.001", "train.warmup_steps=10", "train.steps=110", *extra]
    ).train


def test_constant_after_warm_up_by_default():
    train = train_section()
    assert [learning_rate(train, s) for s in (0, 9, 10, 109)] == pytest.approx(
        [1e-4, 1e-3, 1e-3, 1e-3]
    )


def test_cosine_decay_follows_sgdr_to_the_floor():
    """After warm-up, lr = floor + (lr - floor)(1 + cos(pi p)) / 2 with p = (step - 10) / 100 and
    floor = 0.1 lr: lr at p = 0, 1/2 and 1 computed by hand; never below the floor past the end.
    Fails if the decay starts at step 0 instead of after the warm-up, or ends at 0 (tried: both)."""
    train = train_section("train.lr_decay=cosine", "train.lr_floor=0.1")
    assert learning_rate(train, 9) == pytest.approx(1e-3)  # the warm-up's last step
    assert learning_rate(train, 10) == pytest.approx(1e-3)
    assert learning_rate(train, 60) == pytest.approx(1e-4 + 9e-4 * 0.5)
    assert learning_rate(train, 35) == pytest.approx(1e-4 + 9e-4 * (1 + math.cos(math.pi / 4)) / 2)
    assert learning_rate(train, 110) == pytest.approx(1e-4)
    assert learning_rate(train, 500) == pytest.approx(1e-4)
