"""Frozen-encoder embeddings cached on disk: each prompt is encoded once per encoder.

Imagen's text encoder is frozen, so a prompt's tokens never change: a training set's captions are
encoded once, and a prompt sampled again is read back. The store is

    ``$DIFFLAB_CACHE/text/<encoder sha256[:16]>/<sha256(prompt)[:32]>.safetensors``

holding ``tokens`` (n, D) float16 (the n real tokens only; the rest of the L positions are zero)
and nothing else. The folder name is the encoder's hash (weights, tokenizer, config and L), so
another encoder or another ``max_length`` never reads these files. Files are written atomically.
:func:`encode_prompts` always returns the float16-rounded values, cached or fresh, so a result does
not depend on what the cache held.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save

from difflab.io.atomic import write_bytes_atomic
from difflab.io.cache import cache_dir
from difflab.models.frozen_text import FrozenTextEncoder

ENCODE_BATCH = 64  # prompts per encoder forward
STORE_DTYPE = torch.float16


def text_cache_dir(encoder: FrozenTextEncoder) -> Path:
    """The folder of ``encoder``'s cached embeddings."""
    return cache_dir() / "text" / encoder.sha256[:16]


def _entry(folder: Path, prompt: str) -> Path:
    return folder / f"{hashlib.sha256(prompt.encode()).hexdigest()[:32]}.safetensors"


def _read(path: Path) -> torch.Tensor | None:
    """The cached (n, D) tokens of one prompt, or None when absent or unreadable."""
    try:
        return load_file(str(path))["tokens"]
    except (OSError, SafetensorError, KeyError):
        return None


def encode_prompts(
    encoder: FrozenTextEncoder, prompts: Sequence[str], *, cache: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(tokens (B, L, D) float32, mask (B, L) bool)`` of ``prompts``, read from or added to
    the cache (``cache=False``: neither). The mask comes from the tokenizer, the tokens from the
    cache where present; prompts that are missing are encoded in batches and written."""
    prompts = list(prompts)
    ids, mask = encoder.token_ids(prompts)
    B, L = mask.shape
    tokens = torch.zeros(B, L, encoder.dim)
    folder = text_cache_dir(encoder)
    unique = list(dict.fromkeys(prompts))
    found: dict[str, torch.Tensor] = {}
    if cache:
        for prompt in unique:
            cached = _read(_entry(folder, prompt))
            if cached is not None:
                found[prompt] = cached
    missing = [p for p in unique if p not in found]
    rows = {prompt: prompts.index(prompt) for prompt in missing}
    for start in range(0, len(missing), ENCODE_BATCH):
        part = missing[start : start + ENCODE_BATCH]
        index = torch.tensor([rows[p] for p in part])
        fresh = encoder(ids[index], mask[index]).to(STORE_DTYPE)  # (b, L, D)
        for prompt, row, row_mask in zip(part, fresh, mask[index], strict=True):
            found[prompt] = row[: int(row_mask.sum())].clone()  # (n, D)
            if cache:
                write_bytes_atomic(_entry(folder, prompt), save({"tokens": found[prompt]}))
    for row, prompt in enumerate(prompts):
        n = int(mask[row].sum())
        tokens[row, :n] = found[prompt][:n].float()
    return tokens, mask
