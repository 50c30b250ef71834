"""The causal transformer prior over code grids."""

from __future__ import annotations

import math

import pytest
import torch

from difflab.autoencoders import (
    CodePrior,
    bits_per_code,
    bits_per_image_dim,
    code_nll,
    prior_config,
)
from difflab.errors import DifflabError


@pytest.fixture
def prior() -> CodePrior:
    torch.manual_seed(0)
    return CodePrior(prior_config("prior-tiny", num_codes=16, grid_size=3, num_classes=4)).eval()


def test_the_prior_is_causal(prior):
    codes = torch.randint(0, 16, (2, 9))
    logits = prior(codes, torch.tensor([1, 2]))
    for changed in range(9):
        other = codes.clone()
        other[:, changed] = (other[:, changed] + 1) % 16
        new = prior(other, torch.tensor([1, 2]))
        # position i predicts code i from codes < i: only later positions may move
        torch.testing.assert_close(new[:, : changed + 1], logits[:, : changed + 1])
        if changed < 8:
            assert not torch.allclose(new[:, changed + 1 :], logits[:, changed + 1 :])


def test_the_label_conditions_every_position(prior):
    codes = torch.randint(0, 16, (1, 9))
    a, b = prior(codes, torch.tensor([0])), prior(codes, torch.tensor([3]))
    assert not torch.allclose(a[:, 0], b[:, 0])
    null = prior(codes, torch.tensor([-1]))
    torch.testing.assert_close(null, prior(codes, None))


def test_uniform_prior_bits():
    num_codes, length, image_dims = 512, 49, 28 * 28
    nats = math.log(num_codes)  # a uniform prior: -log(1/K) per code
    assert bits_per_code(nats) == pytest.approx(math.log2(num_codes))
    assert bits_per_image_dim(nats, length, image_dims) == pytest.approx(
        length * math.log2(num_codes) / image_dims
    )
    uniform = CodePrior(prior_config("prior-tiny", num_codes=16, grid_size=3))
    for parameter in uniform.head.parameters():
        torch.nn.init.zeros_(parameter)  # all logits zero: exactly uniform
    nll = code_nll(uniform, torch.randint(0, 16, (4, 3, 3))).item()
    assert bits_per_code(nll) == pytest.approx(4.0)


def test_sampling_shapes_and_reproducibility(prior):
    labels = torch.tensor([0, 1, 2])
    a = prior.sample(3, labels, generator=torch.Generator().manual_seed(0))
    b = prior.sample(3, labels, generator=torch.Generator().manual_seed(0))
    assert a.shape == (3, 3, 3) and torch.equal(a, b)
    assert a.min() >= 0 and a.max() < 16


def test_low_temperature_sampling_follows_the_argmax(prior):
    sample = prior.sample(2, torch.tensor([1, 1]), temperature=1e-4)
    logits = prior(sample.flatten(1), torch.tensor([1, 1]))
    assert torch.equal(logits.argmax(-1), sample.flatten(1))


def test_bad_labels_and_settings(prior):
    with pytest.raises(DifflabError, match="out of range"):
        prior(torch.zeros(1, 9, dtype=torch.long), torch.tensor([4]))
    with pytest.raises(DifflabError, match="temperature"):
        prior.sample(1, temperature=0)
    with pytest.raises(DifflabError, match="divisible"):
        prior_config("prior-tiny", width=30, num_heads=4)
