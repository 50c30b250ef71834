"""A learned caption encoder τ_θ for cross-attention conditioning (Rombach et al. 2022, sec. 3.3).

Latent Diffusion conditions its U-Net on a token sequence τ_θ(y) (B, L, D) produced by a
domain-specific encoder trained jointly with the denoiser ("τ_θ and ε_θ are jointly optimised",
eq. 3). The paper's text-to-image model runs a transformer over BERT tokens; this is the small,
learned version of the same mechanism:

* :class:`WordTokenizer`: lower-case, split on anything that is not a letter or a digit, look each
  word up in a sorted vocabulary built from the training captions (an unknown word gets
  :data:`UNKNOWN_ID`), keep at most ``max_length`` words (the rest is cut), pad to ``max_length``
  with :data:`PAD_ID` and a False mask.
* :class:`CaptionEncoder`: a word embedding (vocab, D) plus a learned position embedding (L, D),
  optionally ``depth`` pre-norm transformer encoder layers, and a final LayerNorm -> tokens
  (B, L, D) (zero where the mask is False) and the mask (B, L).

Training attaches the encoder to the backbone as its ``text_encoder`` submodule
(:func:`attach_caption_encoder`), so the optimizer, the EMA, gradient clipping, data-parallel
training and the checkpoint (weights under ``model.text_encoder.*``) take it with no change; the
backbone's forward never calls it: the loss and the pipeline turn captions into
``Conditioning(tokens=..., token_mask=...)`` first. The checkpoint's JSON keeps the encoder's
settings and vocabulary under ``text_encoder`` (:func:`caption_encoder_meta`), from which
:func:`caption_encoder_from_meta` rebuilds it at load.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from difflab.config import dataclass_from_dict
from difflab.data import ImageDataset
from difflab.errors import DifflabError

PAD_ID = 0
"""The id of the padding after a caption's last word (its mask entry is False)."""
UNKNOWN_ID = 1
"""The id of every word the vocabulary lacks."""
SPECIAL_TOKENS: tuple[str, ...] = ("<pad>", "<unk>")  # ids 0 and 1; words start at 2

CAPTION_SOURCES: tuple[str, ...] = ("dataset", "class_names")

_WORD = re.compile(r"[^\W_]+")  # a run of Unicode letters or digits


def caption_words(caption: str) -> list[str]:
    """The words of a caption: lower-cased runs of letters or digits ("woman: medium skin tone"
    -> ["woman", "medium", "skin", "tone"])."""
    return _WORD.findall(caption.lower())


@dataclass(frozen=True)
class TextEncoderConfig:
    """Settings of a :class:`CaptionEncoder` (``model.text_encoder`` in an experiment config).

    Attributes:
        dim: D, the width of the tokens; always the U-Net's ``context_dim``.
        max_length: L, words kept per caption (later words are cut).
        depth: transformer encoder layers over the embeddings; 0 = embeddings only.
        num_heads: attention heads of those layers (must divide ``dim``).
        captions: where training captions come from: ``"dataset"`` (the dataset's own, e.g. the
            emoji's CLDR names) or ``"class_names"`` (each image's class name, e.g. "7" for the
            digits, for datasets without captions). Used only when training.
    """

    dim: int
    max_length: int = 16
    depth: int = 1
    num_heads: int = 2
    captions: str = "dataset"

    def check(self, where: str = "model.text_encoder") -> None:
        """A DifflabError naming the first bad setting."""
        for name in ("dim", "max_length", "num_heads"):
            if getattr(self, name) < 1:
                raise DifflabError(f"{where}.{name} must be at least 1, got {getattr(self, name)}.")
        if self.depth < 0:
            raise DifflabError(f"{where}.depth must be 0 or more, got {self.depth}.")
        if self.depth and self.dim % self.num_heads:
            raise DifflabError(
                f"{where}.num_heads={self.num_heads} does not divide the token width "
                f"{self.dim} (model.context_dim); choose a divisor."
            )
        if self.captions not in CAPTION_SOURCES:
            raise DifflabError(
                f"{where}.captions must be one of {', '.join(CAPTION_SOURCES)}, got "
                f"{self.captions!r}."
            )

    @classmethod
    def from_dict(cls, values: dict[str, Any], where: str) -> TextEncoderConfig:
        """Parse (and check) the JSON or YAML form; unknown keys and wrong types are named."""
        config = dataclass_from_dict(cls, values, where)
        config.check(where)
        return config


@dataclass(frozen=True)
class WordTokenizer:
    """Captions -> word ids (B, L) and a mask (B, L), with a fixed vocabulary.

    Attributes:
        words: the vocabulary, sorted and unique; word ``words[i]`` has id ``i + 2`` (ids 0 and 1
            are :data:`PAD_ID` and :data:`UNKNOWN_ID`).
        max_length: L, the words kept per caption.
    """

    words: tuple[str, ...]
    max_length: int

    def __post_init__(self) -> None:
        object.__setattr__(
            self, "_ids", {word: i + len(SPECIAL_TOKENS) for i, word in enumerate(self.words)}
        )

    @classmethod
    def from_captions(cls, captions: Iterable[str], max_length: int) -> WordTokenizer:
        """The tokenizer whose vocabulary is every word of ``captions``, sorted."""
        words = {word for caption in captions for word in caption_words(caption)}
        return cls(tuple(sorted(words)), max_length)

    @property
    def vocab_size(self) -> int:
        """Rows of the embedding: the words plus padding and unknown."""
        return len(self.words) + len(SPECIAL_TOKENS)

    def word_id(self, word: str) -> int:
        return self._ids.get(word, UNKNOWN_ID)  # type: ignore[attr-defined]

    def encode(self, captions: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(ids (B, L) int64, mask (B, L) bool)``: the first L words of each caption, then
        padding; a caption without words is all padding (the same as a dropped caption)."""
        ids = torch.full((len(captions), self.max_length), PAD_ID, dtype=torch.int64)
        for row, caption in enumerate(captions):
            words = caption_words(caption)[: self.max_length]
            ids[row, : len(words)] = torch.tensor(
                [self.word_id(w) for w in words], dtype=torch.int64
            )
        return ids, ids != PAD_ID

    def unknown_words(self, captions: Iterable[str]) -> list[str]:
        """The distinct words of ``captions`` outside the vocabulary, sorted."""
        return sorted(
            {w for caption in captions for w in caption_words(caption) if w not in self._ids}  # type: ignore[attr-defined]
        )

    def truncated(self, captions: Iterable[str]) -> int:
        """How many of ``captions`` have more than ``max_length`` words (and lose the rest)."""
        return sum(len(caption_words(caption)) > self.max_length for caption in captions)


class CaptionEncoder(nn.Module):
    """τ_θ: captions -> tokens (B, L, D) and their mask (B, L).

    ``tokens = LayerNorm(Encoder(E_word[ids] + E_pos))``, with padded positions set to zero.

    Args:
        config: the settings (``config.dim`` = the U-Net's ``context_dim``).
        tokenizer: the vocabulary and L (its ``max_length`` must equal ``config.max_length``).
    """

    def __init__(self, config: TextEncoderConfig, tokenizer: WordTokenizer) -> None:
        super().__init__()
        config.check()
        if tokenizer.max_length != config.max_length:
            raise ValueError("the tokenizer's max_length must equal config.max_length")
        self.config = config
        self.tokenizer = tokenizer
        D = config.dim
        self.word_embedding = nn.Embedding(tokenizer.vocab_size, D)
        self.position_embedding = nn.Parameter(torch.empty(config.max_length, D))
        self.layers = None
        if config.depth:
            layer = nn.TransformerEncoderLayer(
                D, config.num_heads, 4 * D, dropout=0.0, activation="gelu", batch_first=True,
                norm_first=True,
            )  # fmt: skip
            self.layers = nn.TransformerEncoder(layer, config.depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(D)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """Embeddings ~ N(0, 0.02²) (GPT-2/BERT); the transformer layers keep PyTorch's init."""
        nn.init.normal_(self.word_embedding.weight, std=0.02)
        nn.init.normal_(self.position_embedding, std=0.02)

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.vocab_size

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """ids (B, L) int64 and mask (B, L) bool -> tokens (B, L, D), zero where mask is False."""
        h = self.word_embedding(ids) + self.position_embedding[: ids.shape[1]]  # (B, L, D)
        if self.layers is not None:
            # a caption without words would leave its attention rows empty (softmax of nothing):
            # let such a row attend to its first (padding) position; its output is zeroed below
            attend = mask.clone()
            attend[:, 0] |= ~mask.any(dim=1)
            h = self.layers(h, src_key_padding_mask=~attend)  # (B, L, D)
        return self.norm(h) * mask.unsqueeze(-1).to(h.dtype)  # (B, L, D)

    def encode(self, captions: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(tokens (B, L, D), mask (B, L) bool)`` of ``captions``, on the encoder's device."""
        ids, mask = self.tokenizer.encode(captions)
        device = self.word_embedding.weight.device
        ids, mask = ids.to(device), mask.to(device)
        return self(ids, mask), mask


def dataset_captions(
    config: TextEncoderConfig, dataset: ImageDataset, index: Iterable[int]
) -> list[str] | None:
    """The captions a model with this encoder reads for the items ``index`` of ``dataset``: their
    own captions (``captions: dataset``, e.g. emoji names) or their class names (``class_names``);
    None when the dataset has none of that kind."""
    if config.captions == "class_names":
        names = dataset.class_names
        return [names[int(dataset.labels[i])] for i in index] if names else None
    return [dataset.captions[int(i)] for i in index] if dataset.captions else None


def build_caption_encoder(config: TextEncoderConfig, captions: Iterable[str]) -> CaptionEncoder:
    """A fresh encoder whose vocabulary is the words of the training ``captions``."""
    return CaptionEncoder(config, WordTokenizer.from_captions(captions, config.max_length))


def attach_caption_encoder(net: nn.Module, encoder: CaptionEncoder) -> nn.Module:
    """``net`` with ``encoder`` as its ``text_encoder`` submodule (trained, averaged and saved
    with it); returns ``net``. Its token width must be the network's ``context_dim``."""
    context_dim = getattr(net.config, "context_dim", 0)
    if encoder.config.dim != context_dim:
        raise DifflabError(
            f"the caption encoder makes tokens of width {encoder.config.dim} but the network "
            f"cross-attends to width {context_dim} (model.context_dim); they must be equal."
        )
    net.add_module("text_encoder", encoder)
    return net


def caption_encoder_of(net: nn.Module) -> CaptionEncoder | None:
    """The caption encoder attached to ``net``, or None."""
    encoder = getattr(net, "text_encoder", None)
    return encoder if isinstance(encoder, CaptionEncoder) else None


def caption_encoder_meta(encoder: CaptionEncoder) -> dict[str, Any]:
    """The JSON a checkpoint keeps of an encoder: its settings and its vocabulary."""
    return {"config": asdict(encoder.config), "vocabulary": list(encoder.tokenizer.words)}


def caption_encoder_from_meta(meta: Any, where: str) -> CaptionEncoder:
    """Rebuild an encoder (fresh weights) from :func:`caption_encoder_meta`'s JSON; a bad entry
    is a DifflabError naming ``where`` (the checkpoint)."""
    if not isinstance(meta, dict) or not isinstance(meta.get("vocabulary"), list):
        raise DifflabError(
            f"{where}: the text_encoder entry must hold 'config' and 'vocabulary'; re-export the "
            "checkpoint with difflab."
        )
    config = TextEncoderConfig.from_dict(meta.get("config", {}), f"{where}: text_encoder.config")
    words = tuple(str(word) for word in meta["vocabulary"])
    if list(words) != sorted(set(words)):
        raise DifflabError(
            f"{where}: the text_encoder vocabulary must be sorted and without repeats; re-export "
            "the checkpoint with difflab."
        )
    return CaptionEncoder(config, WordTokenizer(words, config.max_length))
