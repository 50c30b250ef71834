"""The learned caption encoder: word tokenizer (known and unknown words, truncation, padding
mask), encoder shapes and masking, and the JSON + weights round trip of a checkpoint."""

from __future__ import annotations

import pytest
import torch

from difflab.errors import DifflabError
from difflab.models import (
    CaptionEncoder,
    TextEncoderConfig,
    WordTokenizer,
    attach_caption_encoder,
    build_caption_encoder,
    build_model,
    caption_encoder_from_meta,
    caption_encoder_meta,
    caption_encoder_of,
    model_config,
)
from difflab.models.text import PAD_ID, UNKNOWN_ID, caption_words

CAPTIONS = (
    "red apple",
    "woman: medium skin tone",
    "Apple, RED!",
    "flag: Côte d’Ivoire",
    "1st place medal",
)


def test_words_are_lower_case_runs_of_letters_and_digits():
    assert caption_words("woman: medium-skin tone") == ["woman", "medium", "skin", "tone"]
    assert caption_words("Flag: Côte d’Ivoire") == ["flag", "côte", "d", "ivoire"]
    assert caption_words("keycap: #") == ["keycap"]
    assert caption_words("snake_case 1st") == ["snake", "case", "1st"]


def test_vocabulary_is_sorted_and_ids_follow_it():
    tokenizer = WordTokenizer.from_captions(CAPTIONS, max_length=4)
    assert list(tokenizer.words) == sorted(set(tokenizer.words))
    assert "apple" in tokenizer.words and "Apple" not in tokenizer.words
    assert tokenizer.vocab_size == len(tokenizer.words) + 2
    ids, mask = tokenizer.encode(["red apple", "apple red"])
    apple, red = tokenizer.word_id("apple"), tokenizer.word_id("red")
    assert apple == tokenizer.words.index("apple") + 2
    assert ids.tolist() == [[red, apple, PAD_ID, PAD_ID], [apple, red, PAD_ID, PAD_ID]]
    assert mask.tolist() == [[True, True, False, False]] * 2


def test_unknown_words_truncation_and_empty_captions():
    tokenizer = WordTokenizer.from_captions(CAPTIONS, max_length=3)
    ids, mask = tokenizer.encode(["green apple", "woman: medium skin tone", ""])
    assert ids[0].tolist() == [UNKNOWN_ID, tokenizer.word_id("apple"), PAD_ID]
    assert mask[1].all() and ids[1, -1] == tokenizer.word_id("skin")  # "tone" is cut
    assert not mask[2].any()  # no words: the same as a dropped caption
    assert tokenizer.unknown_words(["green apple", "blue APPLE"]) == ["blue", "green"]
    assert tokenizer.truncated(CAPTIONS) == 2


@pytest.mark.parametrize("depth", [0, 1])
def test_encoder_shapes_and_mask_covers_exactly_the_words(depth):
    torch.manual_seed(0)
    config = TextEncoderConfig(dim=16, max_length=5, depth=depth, num_heads=2)
    encoder = build_caption_encoder(config, CAPTIONS)
    tokens, mask = encoder.encode(["red apple", "woman: medium skin tone", "", "pear"])
    assert tokens.shape == (4, 5, 16) and mask.shape == (4, 5) and mask.dtype == torch.bool
    assert mask.sum(dim=1).tolist() == [2, 4, 0, 1]
    assert torch.isfinite(tokens).all()
    assert (tokens[~mask] == 0).all() and (tokens[mask].abs().sum(dim=-1) > 0).all()


def test_padding_does_not_change_the_tokens_of_the_words():
    torch.manual_seed(0)
    encoder = build_caption_encoder(TextEncoderConfig(dim=8, max_length=6), CAPTIONS).eval()
    ids, mask = encoder.tokenizer.encode(["red apple"])
    short = encoder(ids[:, :3], mask[:, :3])
    full = encoder(ids, mask)
    torch.testing.assert_close(short[:, :2], full[:, :2])


def test_the_encoder_learns_from_a_loss_on_its_tokens():
    torch.manual_seed(0)
    encoder = build_caption_encoder(TextEncoderConfig(dim=8, max_length=4), CAPTIONS)
    tokens, _ = encoder.encode(["red apple"])
    tokens.pow(2).sum().backward()
    assert encoder.word_embedding.weight.grad[encoder.tokenizer.word_id("apple")].abs().sum() > 0
    assert encoder.word_embedding.weight.grad[encoder.tokenizer.word_id("woman")].abs().sum() == 0


def test_checkpoint_round_trip_of_vocabulary_and_weights():
    torch.manual_seed(0)
    arch, config = model_config("unet-tiny-text")
    net = build_model(arch, config)
    encoder = build_caption_encoder(TextEncoderConfig(dim=config.context_dim), CAPTIONS)
    attach_caption_encoder(net, encoder)
    assert caption_encoder_of(net) is encoder
    assert any(key.startswith("text_encoder.word_embedding") for key in net.state_dict())
    meta = caption_encoder_meta(encoder)
    rebuilt = caption_encoder_from_meta(meta, "model.safetensors")
    assert rebuilt.tokenizer == encoder.tokenizer and rebuilt.config == encoder.config
    copy = attach_caption_encoder(build_model(arch, config), rebuilt)
    copy.load_state_dict(net.state_dict())
    captions = ["red apple", "medal"]
    torch.testing.assert_close(rebuilt.encode(captions), encoder.encode(captions))


def test_bad_settings_and_entries_give_one_sentence():
    with pytest.raises(DifflabError, match="num_heads=3 does not divide"):
        TextEncoderConfig.from_dict({"dim": 16, "num_heads": 3}, "model.text_encoder")
    with pytest.raises(DifflabError, match="captions must be one of"):
        TextEncoderConfig.from_dict({"dim": 16, "captions": "names"}, "model.text_encoder")
    with pytest.raises(DifflabError, match=r"unknown config key .model\.text_encoder\.width."):
        TextEncoderConfig.from_dict({"dim": 16, "width": 3}, "model.text_encoder")
    with pytest.raises(DifflabError, match=r"m\.safetensors: the text_encoder entry"):
        caption_encoder_from_meta({"config": {"dim": 4}}, "m.safetensors")
    with pytest.raises(DifflabError, match="sorted and without repeats"):
        caption_encoder_from_meta({"config": {"dim": 4}, "vocabulary": ["b", "a"]}, "m")
    arch, config = model_config("unet-tiny-text")
    wrong = CaptionEncoder(TextEncoderConfig(dim=8), WordTokenizer(("a",), 16))
    with pytest.raises(DifflabError, match="width 8 but the network cross-attends to width 16"):
        attach_caption_encoder(build_model(arch, config), wrong)
