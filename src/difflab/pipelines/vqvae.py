"""Loading the two stages of VQ-VAE and generating with them.

A ``kind: vqvae`` checkpoint holds the autoencoder; a ``kind: vqvae_prior`` checkpoint holds the
prior and records the autoencoder it was trained on (``autoencoder.path`` and its SHA-256), which
:func:`load_code_prior` loads with it, refusing a file whose digest differs.
"""

from __future__ import annotations

from pathlib import Path

import torch

from difflab.autoencoders import (
    PRIOR_KIND,
    VQVAE,
    VQVAE_KIND,
    CodePrior,
    prior_config,
    vqvae_config,
)
from difflab.errors import DifflabError
from difflab.io.checkpoint import load_checkpoint, load_weights_strict, split_prefix
from difflab.pipelines.recorded import recorded_file

ENCODE_BATCH = 500


def load_vqvae(path: str | Path) -> VQVAE:
    """Load a ``kind: vqvae`` checkpoint (EMA weights) in eval mode with frozen weights."""
    path = Path(path)
    tensors, meta = load_checkpoint(path, kind=VQVAE_KIND)
    if "model" not in meta:
        raise DifflabError(
            f"{path} lacks the 'model' entry of a VQ-VAE checkpoint; re-export it with difflab."
        )
    model = VQVAE(vqvae_config("vqvae-mnist", **meta["model"]))
    load_weights_strict(model, split_prefix(tensors, "model"), path)
    return model.eval().requires_grad_(False)


def load_code_prior(
    path: str | Path, autoencoder: str | Path | None = None
) -> tuple[CodePrior, VQVAE]:
    """Load a ``kind: vqvae_prior`` checkpoint and the VQ-VAE whose codes it models.

    The VQ-VAE is ``autoencoder`` when given, else the path the checkpoint records, else a file of
    that name beside the checkpoint or among the shipped weights
    (:func:`~difflab.pipelines.recorded.recorded_file`). Its SHA-256 must be the one recorded at
    training time.
    """
    path = Path(path)
    tensors, meta = load_checkpoint(path, kind=PRIOR_KIND)
    if "model" not in meta or "autoencoder" not in meta:
        raise DifflabError(
            f"{path} lacks the 'model' or 'autoencoder' entry of a prior checkpoint; re-export it."
        )
    prior = CodePrior(prior_config("prior-mnist", **meta["model"]))
    load_weights_strict(prior, split_prefix(tensors, "model"), path)
    found, _ = recorded_file(
        meta["autoencoder"],
        path,
        entry="autoencoder",
        role="the VQ-VAE",
        mismatch="the prior's codes would decode to other images; give the VQ-VAE of that run",
        given=Path(autoencoder) if autoencoder else None,
    )
    return prior.eval().requires_grad_(False), load_vqvae(found)


def module_device(module: torch.nn.Module) -> torch.device:
    """The device of a module's first parameter (the CPU for a module without any)."""
    return next(module.parameters(), torch.empty(0)).device


@torch.no_grad()
def encode_to_codes(model: VQVAE, images: torch.Tensor) -> torch.Tensor:
    """Code grids of ``images`` (N, C, H, W) -> (N, h, w) int64 on the CPU, in batches."""
    device = module_device(model)
    return torch.cat(
        [
            model.encode_indices(images[s : s + ENCODE_BATCH].to(device)).cpu()
            for s in range(0, len(images), ENCODE_BATCH)
        ]
    )


@torch.no_grad()
def sample_vqvae(
    prior: CodePrior,
    autoencoder: VQVAE,
    count: int,
    labels: torch.Tensor | None = None,
    *,
    temperature: float = 1.0,
    seed: int = 0,
) -> torch.Tensor:
    """Draw code grids from the prior and decode them: (count, C, H, W) images in [-1, 1]."""
    if labels is not None and prior.config.num_classes == 0:
        raise DifflabError("this prior is unconditional; drop --label / --labels.")
    generator = torch.Generator().manual_seed(seed)
    codes = prior.sample(count, labels, temperature=temperature, generator=generator)
    return autoencoder.decode_indices(codes.to(module_device(autoencoder))).clamp(-1, 1).cpu()
