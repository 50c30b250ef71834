"""What a network is conditioned on, in one frozen dataclass of named fields.

Every field is an optional tensor whose first dimension is the batch. A field a network does not
use is ignored, not an error, so one sampler call serves every backbone; a backbone lists the
fields it reads in ``net.conditioning_fields``.

The operations samplers and guidance need (:meth:`~Conditioning.drop`, :meth:`~Conditioning.cat`,
:meth:`~Conditioning.to`, indexing) are written once over all fields, driven by each field's
metadata, so a new kind of conditioning is one new field here and no new code:

* ``null``: the value of a dropped sample (classifier-free guidance's "nothing"), or absent when
  the field is never dropped (a control image or a low-resolution image is the same in both
  branches of classifier-free guidance).
* ``pad``: the value that fills sequences of unequal length in :meth:`~Conditioning.cat` (dim 1).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from difflab.errors import DifflabError

NULL_LABEL = -1
"""The "no label" class: networks map it to their reserved extra embedding row."""


def _metadata(null: float | bool | None = None, pad: float | bool | None = None) -> dict[str, Any]:
    return {"null": null, "pad": pad}


@dataclass(frozen=True, eq=False)
class Conditioning:
    """Conditioning signals for a batch of B samples (every field optional).

    Attributes:
        labels: (B,) int64 class labels, ``NULL_LABEL`` for "no label".
        tokens: (B, L, D) float token embeddings, e.g. a frozen text encoder's output (Imagen,
            Latent Diffusion's cross-attention); dropped to zeros.
        token_mask: (B, L) bool, True where ``tokens`` holds a real token; dropped to all False
            (a network must then attend to its own null token or skip cross-attention).
        control: (B, C, H, W) a control image (ControlNet: edges, depth, a sketch), in [-1, 1].
        low_res: (B, C, h, w) the low-resolution image a super-resolution stage starts from.
        noise_level: (B,) float in [0, 1], the augmentation noise applied to ``low_res``
            (Imagen's noise conditioning augmentation); continuous, never rounded to a timestep.
    """

    labels: torch.Tensor | None = field(default=None, metadata=_metadata(null=NULL_LABEL))
    tokens: torch.Tensor | None = field(default=None, metadata=_metadata(null=0.0, pad=0.0))
    token_mask: torch.Tensor | None = field(default=None, metadata=_metadata(null=False, pad=False))
    control: torch.Tensor | None = field(default=None, metadata=_metadata())
    low_res: torch.Tensor | None = field(default=None, metadata=_metadata())
    noise_level: torch.Tensor | None = field(default=None, metadata=_metadata())

    def __post_init__(self) -> None:
        sizes = {name: value.shape[0] for name, value in self.items()}
        if len(set(sizes.values())) > 1:
            listed = ", ".join(f"{name} {size}" for name, size in sizes.items())
            raise DifflabError(f"conditioning fields disagree on the batch size ({listed}).")
        if (self.tokens is None) != (self.token_mask is None):
            raise DifflabError("tokens and token_mask come together; give both or neither.")

    @staticmethod
    def field_names() -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(Conditioning))

    def items(self) -> list[tuple[str, torch.Tensor]]:
        """``(name, tensor)`` of the fields that are set, in declaration order."""
        return [
            (name, value)
            for name in self.field_names()
            if (value := getattr(self, name)) is not None
        ]

    @property
    def batch_size(self) -> int | None:
        """B, or None for an empty Conditioning (unconditional)."""
        present = self.items()
        return present[0][1].shape[0] if present else None

    def drop(self, mask: torch.Tensor) -> Conditioning:
        """The samples where ``mask`` (B,) bool is true get every droppable field's null value."""
        changes = {}
        for f in dataclasses.fields(self):
            value, null = getattr(self, f.name), f.metadata["null"]
            if value is None or null is None:
                continue
            where = mask.to(value.device).reshape(-1, *([1] * (value.ndim - 1)))
            changes[f.name] = torch.where(where, torch.as_tensor(null, dtype=value.dtype), value)
        return replace(self, **changes)

    def dropped(self) -> Conditioning:
        """The same batch with every droppable field set to "nothing" (CFG's unconditional branch)."""
        size = self.batch_size
        return self if size is None else self.drop(torch.ones(size, dtype=torch.bool))

    def to(self, device: torch.device | str) -> Conditioning:
        return replace(self, **{name: value.to(device) for name, value in self.items()})

    def __getitem__(self, index: slice | torch.Tensor) -> Conditioning:
        """The samples ``index`` selects (a slice, (k,) indices or a (B,) bool mask)."""
        return replace(self, **{name: value[index] for name, value in self.items()})

    @staticmethod
    def cat(parts: list[Conditioning]) -> Conditioning:
        """Concatenate batches along dim 0 (one batched forward over several branches).

        A field missing from any part is missing from the result. Fields with a ``pad`` value
        (token sequences) of unequal length L are padded at the end of dim 1.
        """
        joined = {}
        for f in dataclasses.fields(Conditioning):
            values = [getattr(p, f.name) for p in parts]
            if any(v is None for v in values):
                continue
            pad = f.metadata["pad"]
            if pad is not None:
                length = max(v.shape[1] for v in values)
                values = [_pad_dim1(v, length, pad) for v in values]
            joined[f.name] = torch.cat(values)
        return Conditioning(**joined)


def _pad_dim1(value: torch.Tensor, length: int, pad: float | bool) -> torch.Tensor:
    """``value`` (B, L, ...) extended to (B, length, ...) with ``pad``."""
    missing = length - value.shape[1]
    if missing == 0:
        return value
    filler = torch.full(
        (value.shape[0], missing, *value.shape[2:]), pad, dtype=value.dtype, device=value.device
    )
    return torch.cat([value, filler], dim=1)
