"""VQ-VAE (van den Oord et al., "Neural Discrete Representation Learning", NeurIPS 2017).

The paper's image model (sec. 4.1): the encoder is ``num_downsamples`` strided 4x4 convolutions
(stride 2) and a stack of residual blocks (ReLU, 3x3 conv, ReLU, 1x1 conv), all of
``hidden_channels``; a 1x1 convolution maps to ``code_dim`` channels, the vector quantiser
(:mod:`difflab.autoencoders.quantizer`) snaps each position to a codebook entry, and the decoder
mirrors the encoder with 4x4 transposed convolutions. MNIST at 28x28 with two downsamplings has a
7x7 code grid (49 codes of log2(K) bits each).

The loss is the paper's eq. 3 with the reconstruction term as a mean squared error:

    L = ||x - D(z_e + sg(z_q - z_e))||^2 + β ||z_e - sg(z_q)||^2 + ||sg(z_e) - z_q||^2

(the last term is dropped when the codebook is updated by moving averages).

The autoencoder contract of difflab: :meth:`VQVAE.encode` ``x -> z`` gives the continuous
pre-quantisation latents (B, D, h, w), :meth:`VQVAE.decode` ``z -> x`` quantises them and decodes,
and ``latent_scale`` (1 / the standard deviation of z on the training set, measured when training
ends) is what a latent diffusion model multiplies z by. :meth:`encode_indices` and
:meth:`decode_indices` work on the discrete code grid the prior models.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from difflab.autoencoders.quantizer import QuantizerOutput, VectorQuantizer
from difflab.config import dataclass_from_dict
from difflab.errors import DifflabError

VQVAE_KIND = "vqvae"
VQVAE_ARCH = "vqvae"


@dataclass
class VQVAEConfig:
    """Sizes of a VQ-VAE; ``beta`` weights the commitment loss (the paper's β = 0.25)."""

    image_size: int = 28
    in_channels: int = 1
    hidden_channels: int = 128
    res_channels: int = 32
    num_res_blocks: int = 2
    num_downsamples: int = 2
    num_codes: int = 512
    code_dim: int = 64
    beta: float = 0.25
    codebook_update: str = "ema"
    ema_decay: float = 0.99
    kmeans_init: bool = True
    restart_after: int = 100
    latent_scale: float = 1.0

    @property
    def grid_size(self) -> int:
        """Side of the code grid: image_size / 2**num_downsamples."""
        return self.image_size // 2**self.num_downsamples

    def check(self) -> None:
        for name in ("image_size", "in_channels", "hidden_channels", "res_channels"):
            if getattr(self, name) < 1:
                raise DifflabError(f"model.{name} must be at least 1, got {getattr(self, name)}.")
        if self.num_downsamples < 1:
            raise DifflabError(
                f"model.num_downsamples must be at least 1, got {self.num_downsamples}."
            )
        if self.image_size % 2**self.num_downsamples:
            raise DifflabError(
                f"model.image_size {self.image_size} must be divisible by 2**num_downsamples = "
                f"{2**self.num_downsamples}; change one of them."
            )
        if self.beta < 0:
            raise DifflabError(f"model.beta must be >= 0, got {self.beta}.")


VQVAE_PRESETS: dict[str, dict[str, Any]] = {
    # for tests: a few thousand parameters, 7x7 grid of 16 codes at 28x28
    "vqvae-tiny": dict(
        hidden_channels=16,
        res_channels=8,
        num_res_blocks=1,
        num_codes=16,
        code_dim=8,
        restart_after=5,
    ),
    # the shipped MNIST model: 28 -> 14 -> 7, K = 512 codes of D = 64
    "vqvae-mnist": dict(),
    # a finer 14x14 grid (one downsampling)
    "vqvae-mnist-14": dict(num_downsamples=1),
}


def vqvae_config(preset: str, **overrides: Any) -> VQVAEConfig:
    """The :class:`VQVAEConfig` of ``preset`` with ``overrides`` applied (unknown keys refused)."""
    if preset not in VQVAE_PRESETS:
        raise DifflabError(
            f"unknown VQ-VAE preset {preset!r}; choose one of {', '.join(VQVAE_PRESETS)}."
        )
    config = dataclass_from_dict(VQVAEConfig, {**VQVAE_PRESETS[preset], **overrides}, "model")
    config.check()
    return config


class ResidualBlock(nn.Module):
    """x + conv1x1(relu(conv3x3(relu(x)))) (the paper's residual block)."""

    def __init__(self, channels: int, res_channels: int) -> None:
        super().__init__()
        self.conv3 = nn.Conv2d(channels, res_channels, 3, padding=1)
        self.conv1 = nn.Conv2d(res_channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv1(F.relu(self.conv3(F.relu(x))))


class ResidualStack(nn.Sequential):
    """``num_blocks`` residual blocks followed by a ReLU."""

    def __init__(self, channels: int, res_channels: int, num_blocks: int) -> None:
        super().__init__(
            *(ResidualBlock(channels, res_channels) for _ in range(num_blocks)), nn.ReLU()
        )


class Encoder(nn.Module):
    """(B, C, H, W) -> (B, D, H / 2**n, W / 2**n) pre-quantisation latents z_e."""

    def __init__(self, config: VQVAEConfig) -> None:
        super().__init__()
        hidden = config.hidden_channels
        layers: list[nn.Module] = []
        channels = config.in_channels
        for level in range(config.num_downsamples):
            width = hidden // 2 if level < config.num_downsamples - 1 else hidden
            layers += [nn.Conv2d(channels, width, 4, stride=2, padding=1), nn.ReLU()]
            channels = width
        layers.append(nn.Conv2d(channels, hidden, 3, padding=1))
        self.body = nn.Sequential(*layers)
        self.residual = ResidualStack(hidden, config.res_channels, config.num_res_blocks)
        self.to_code = nn.Conv2d(hidden, config.code_dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.to_code(self.residual(self.body(x)))


class Decoder(nn.Module):
    """(B, D, h, w) codes -> (B, C, h * 2**n, w * 2**n) images (no output non-linearity)."""

    def __init__(self, config: VQVAEConfig) -> None:
        super().__init__()
        hidden = config.hidden_channels
        self.from_code = nn.Conv2d(config.code_dim, hidden, 3, padding=1)
        self.residual = ResidualStack(hidden, config.res_channels, config.num_res_blocks)
        layers: list[nn.Module] = []
        channels = hidden
        for level in range(config.num_downsamples):
            last = level == config.num_downsamples - 1
            width = config.in_channels if last else hidden // 2
            layers.append(nn.ConvTranspose2d(channels, width, 4, stride=2, padding=1))
            if not last:
                layers.append(nn.ReLU())
            channels = width
        self.body = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.body(self.residual(self.from_code(z)))


@dataclass
class VQVAEOutput:
    """A forward pass: the reconstruction and everything the loss and the logs need."""

    reconstruction: torch.Tensor  # (B, C, H, W)
    quantized: QuantizerOutput


class VQVAE(nn.Module):
    """Encoder -> vector quantiser -> decoder; see the module docstring for the contract."""

    def __init__(self, config: VQVAEConfig) -> None:
        super().__init__()
        config.check()
        self.config = config
        self.encoder = Encoder(config)
        self.quantizer = VectorQuantizer(
            config.num_codes,
            config.code_dim,
            update=config.codebook_update,
            ema_decay=config.ema_decay,
            kmeans_init=config.kmeans_init,
            restart_after=config.restart_after,
        )
        self.decoder = Decoder(config)

    @property
    def latent_scale(self) -> float:
        return self.config.latent_scale

    def _check_images(self, x: torch.Tensor) -> None:
        expected = (self.config.in_channels, self.config.image_size, self.config.image_size)
        if x.dim() != 4 or tuple(x.shape[1:]) != expected:
            raise DifflabError(
                f"this VQ-VAE takes images of shape (B, {expected[0]}, {expected[1]}, "
                f"{expected[2]}), got {tuple(x.shape)}."
            )

    def forward(self, x: torch.Tensor) -> VQVAEOutput:
        """x (B, C, H, W) in [-1, 1] -> reconstruction through the straight-through codes."""
        self._check_images(x)
        quantized = self.quantizer(self.encoder(x))
        return VQVAEOutput(self.decoder(quantized.z_q), quantized)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Continuous latents z = z_e (B, D, h, w) (not yet multiplied by ``latent_scale``)."""
        self._check_images(x)
        return self.encoder(x)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Quantise latents z (B, D, h, w) to their nearest codes and decode to (B, C, H, W)."""
        return self.decoder(self.quantizer(z).z_q)

    def encode_indices(self, x: torch.Tensor) -> torch.Tensor:
        """Code grid of images: (B, C, H, W) -> (B, h, w) int64."""
        return self.quantizer(self.encode(x)).indices

    def decode_indices(self, indices: torch.Tensor) -> torch.Tensor:
        """Images of a code grid: (B, h, w) int64 -> (B, C, H, W)."""
        return self.decoder(self.quantizer.lookup(indices))


def vqvae_loss(model: VQVAE, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
    """The paper's eq. 3 on a batch ``x`` (B, C, H, W): (total loss, its terms and codebook stats).

    ``reconstruction`` is the mean squared error in the data's [-1, 1] units.
    """
    out = model(x)
    q = out.quantized
    reconstruction = F.mse_loss(out.reconstruction.float(), x.float())
    total = reconstruction + model.config.beta * q.commitment_loss + q.codebook_loss
    terms = {
        "reconstruction": reconstruction.item(),
        "commitment": q.commitment_loss.item(),
        "codebook": q.codebook_loss.item(),
        "perplexity": q.perplexity.item(),
        "usage": q.usage.item(),
    }
    return total, terms
