"""Conditioning: drop / cat / to / indexing work for every field without per-field code."""

from __future__ import annotations

import pytest
import torch

from difflab.diffusion import NULL_LABEL, Conditioning
from difflab.errors import DifflabError


def full(batch: int = 3, length: int = 4) -> Conditioning:
    generator = torch.Generator().manual_seed(0)
    return Conditioning(
        labels=torch.arange(batch),
        tokens=torch.randn(batch, length, 5, generator=generator),
        token_mask=torch.ones(batch, length, dtype=torch.bool),
        control=torch.rand(batch, 1, 6, 6, generator=generator),
        low_res=torch.rand(batch, 1, 3, 3, generator=generator),
        noise_level=torch.tensor([0.1, 0.25, 0.5])[:batch],
    )


def test_every_field_is_declared_once():
    assert Conditioning.field_names() == (
        "labels",
        "tokens",
        "token_mask",
        "control",
        "low_res",
        "noise_level",
    )


def test_drop_nulls_the_droppable_fields_and_keeps_the_others():
    cond = full()
    mask = torch.tensor([True, False, True])
    dropped = cond.drop(mask)
    assert dropped.labels.tolist() == [NULL_LABEL, 1, NULL_LABEL]
    assert (dropped.tokens[mask] == 0).all() and torch.equal(dropped.tokens[1], cond.tokens[1])
    assert dropped.token_mask.tolist() == [[False] * 4, [True] * 4, [False] * 4]
    # a control image, a low-resolution image and its noise level feed both CFG branches
    for name in ("control", "low_res", "noise_level"):
        assert torch.equal(getattr(dropped, name), getattr(cond, name))
    assert dropped.noise_level.dtype == torch.float32  # continuous, never cast to a timestep
    assert cond.dropped().labels.tolist() == [NULL_LABEL] * 3


def test_empty_conditioning_is_unconditional():
    assert Conditioning().batch_size is None
    assert Conditioning().dropped().labels is None
    assert Conditioning().drop(torch.tensor([True])).labels is None


def test_cat_pads_token_sequences_and_drops_fields_a_part_lacks():
    joined = Conditioning.cat([full(3, length=2), full(3, length=4)])
    assert joined.batch_size == 6
    assert joined.tokens.shape == (6, 4, 5) and joined.token_mask.shape == (6, 4)
    assert not joined.token_mask[:3, 2:].any() and (joined.tokens[:3, 2:] == 0).all()
    assert joined.token_mask[3:].all()
    partial = Conditioning.cat([full(3), Conditioning(labels=torch.arange(3))])
    assert partial.labels.tolist() == [0, 1, 2, 0, 1, 2] and partial.tokens is None


def test_indexing_and_to_apply_to_every_field():
    cond = full()
    part = cond[1:]
    assert part.batch_size == 2
    for name, value in part.items():
        assert torch.equal(value, getattr(cond, name)[1:])
    repeated = cond[torch.zeros(4, dtype=torch.long)]
    assert repeated.labels.tolist() == [0, 0, 0, 0] and repeated.control.shape[0] == 4
    moved = cond.to("cpu")
    assert [name for name, _ in moved.items()] == [name for name, _ in cond.items()]


def test_inconsistent_batches_are_one_sentence():
    with pytest.raises(DifflabError, match="disagree on the batch size"):
        Conditioning(labels=torch.arange(3), control=torch.zeros(2, 1, 4, 4))
    with pytest.raises(DifflabError, match="tokens and token_mask"):
        Conditioning(tokens=torch.zeros(2, 3, 4))
