"""The perceptual autoencoder of Latent Diffusion (Rombach et al. 2022, sec. 3.1 and appendix G).

The first stage of a latent diffusion model: an encoder E maps an image x (B, C, H, W) to a latent
z = E(x) (B, c, H/f, W/f) and a decoder D maps it back, x̃ = D(z), so that the diffusion model
works on an f²·C/c times smaller tensor. The network is LDM's (taming-transformers' ``Encoder`` /
``Decoder``):

* encoder: 3x3 conv to ``base_channels``; one level per entry of ``channel_mult``, each
  ``num_res_blocks`` ResNet blocks (GroupNorm, SiLU, 3x3 conv, twice, plus a 1x1 skip where the
  width changes) of width ``base_channels * mult``, and a stride-2 3x3 convolution between levels,
  so the downsampling factor is f = 2^(len(channel_mult) - 1); a mid block (ResNet, optional
  self-attention, ResNet); GroupNorm, SiLU and a 3x3 conv to the latent's moments;
* decoder: the mirror image with ``num_res_blocks + 1`` blocks per level and nearest-neighbour
  upsampling plus a 3x3 conv between levels; its last 3x3 convolution (:attr:`last_layer`) is where
  the adaptive GAN weight is measured (:mod:`difflab.autoencoders.ldm_loss`).

Two regularisations of the latent space (sec. 3.1), chosen by ``regularizer``:

* ``"kl"`` (KL-reg): the encoder outputs the mean μ and log-variance log σ² of a diagonal Gaussian
  posterior q(z|x) = N(μ, diag σ²); training decodes a sample z = μ + σ ⊙ ε, ε ~ N(0, I) (the
  reparameterisation trick) and penalises, with a small weight (~1e-6, in the loss),

      KL(q(z|x) ‖ N(0, I)) = ½ Σ_j (μ_j² + σ_j² − 1 − log σ_j²)      (summed over the c·h·w latents).

  :meth:`PerceptualAutoencoder.encode` returns the mean μ: deterministic, so the latents of a
  data set can be cached. (LDM's own code draws a sample there; with σ small, the two differ by a
  little noise that the diffusion model's own noising drowns.)
* ``"vq"`` (VQ-reg): a 1x1 convolution and the project's vector quantiser
  (:class:`~difflab.autoencoders.quantizer.VectorQuantizer`, codes of size c). The codebook is
  "absorbed into the decoder": :meth:`~PerceptualAutoencoder.encode` returns the continuous
  pre-quantisation latents and :meth:`~PerceptualAutoencoder.decode` quantises them first, so a
  latent diffusion model works on continuous z and its samples are snapped to codes on decoding.

The autoencoder contract of difflab: ``encode(x) -> z`` (B, c, H/f, W/f), ``decode(z) -> x``, and
``latent_scale`` (1 / the standard deviation of z over the training set, measured when training
ends and stored in the checkpoint), the factor a latent diffusion model multiplies z by.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from difflab.autoencoders.quantizer import UPDATES, QuantizerOutput, VectorQuantizer
from difflab.config import dataclass_from_dict
from difflab.errors import DifflabError
from difflab.io.checkpoint import (
    build_within_file,
    load_checkpoint,
    load_weights_strict,
    split_prefix,
)
from difflab.nn.attention import SpatialSelfAttention
from difflab.nn.blocks import Downsample, Upsample, group_norm

AUTOENCODER_KIND = "autoencoder"
AUTOENCODER_ARCH = "ldm-autoencoder"
REGULARIZERS: tuple[str, ...] = ("kl", "vq")
LOGVAR_RANGE = (-30.0, 20.0)  # log σ² is clamped to this range, as in LDM
LATENT_SCALE_IMAGES_KEY = "latent_scale_images"  # how many images measured latent_scale


@dataclass
class AutoencoderConfig:
    """Sizes of a perceptual autoencoder (module docstring).

    ``channel_mult`` has one entry per resolution level: f = 2^(len(channel_mult) - 1), so (1,) is
    f = 1, (1, 2) f = 2, (1, 2, 4) f = 4 and (1, 2, 4, 4) f = 8. ``latent_channels`` is c.
    The ``num_codes`` ... ``restart_after`` fields configure the quantiser of ``regularizer: vq``
    (``beta`` weights its commitment term, as in VQ-VAE); a KL autoencoder ignores them.
    """

    image_size: int = 64
    in_channels: int = 3
    base_channels: int = 64
    channel_mult: tuple[int, ...] = (1, 2, 4)
    num_res_blocks: int = 2
    mid_attention: bool = True
    latent_channels: int = 3
    regularizer: str = "kl"
    num_codes: int = 8192
    beta: float = 0.25
    codebook_update: str = "ema"
    kmeans_init: bool = True
    restart_after: int = 100
    latent_scale: float = 1.0

    @property
    def downsample_factor(self) -> int:
        """f: how many pixels a side one latent stands for."""
        return 2 ** (len(self.channel_mult) - 1)

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """(c, H/f, W/f): the shape of one image's latent."""
        side = self.image_size // self.downsample_factor
        return (self.latent_channels, side, side)

    def check(self) -> None:
        """Refuse sizes the network cannot be built with, naming the key and the fix."""
        for name in ("image_size", "in_channels", "base_channels", "num_res_blocks"):
            if getattr(self, name) < 1:
                raise DifflabError(f"model.{name} must be at least 1, got {getattr(self, name)}.")
        if self.latent_channels < 1:
            raise DifflabError(
                f"model.latent_channels must be at least 1, got {self.latent_channels}."
            )
        if not self.channel_mult or any(m < 1 for m in self.channel_mult):
            raise DifflabError(
                f"model.channel_mult must be a non-empty list of positive integers, got "
                f"{list(self.channel_mult)}."
            )
        f = self.downsample_factor
        if self.image_size % f:
            raise DifflabError(
                f"model.image_size {self.image_size} is not divisible by the downsampling factor "
                f"f = {f} (channel_mult has {len(self.channel_mult)} levels); use images whose "
                "side is a multiple of f, or fewer levels."
            )
        if self.regularizer not in REGULARIZERS:
            raise DifflabError(
                f"model.regularizer {self.regularizer!r} is unknown; use 'kl' or 'vq'."
            )
        if self.regularizer == "vq":
            if self.num_codes < 2:
                raise DifflabError(f"model.num_codes must be at least 2, got {self.num_codes}.")
            if self.codebook_update not in UPDATES:
                raise DifflabError(
                    f"model.codebook_update {self.codebook_update!r} is unknown; use 'loss' or "
                    "'ema'."
                )
            if self.beta < 0:
                raise DifflabError(f"model.beta must be >= 0, got {self.beta}.")
        if not self.latent_scale > 0:
            raise DifflabError(f"model.latent_scale must be positive, got {self.latent_scale}.")


AUTOENCODER_PRESETS: dict[str, dict[str, Any]] = {
    # for tests: f = 2, a few thousand parameters
    "ae-tiny": dict(
        base_channels=8, channel_mult=(1, 2), num_res_blocks=1, latent_channels=2, num_codes=16
    ),
    # LDM's shapes at a width this project can train on a CPU (LDM uses base_channels 128);
    # c as in the paper's table 8: 3 channels up to f = 4, 4 at f = 8
    "ae-f1": dict(channel_mult=(1,), latent_channels=3),
    "ae-f2": dict(channel_mult=(1, 2), latent_channels=3),
    "ae-f4": dict(channel_mult=(1, 2, 4), latent_channels=3),
    "ae-f8": dict(channel_mult=(1, 2, 4, 4), latent_channels=4),
}


def autoencoder_config(preset: str, **overrides: Any) -> AutoencoderConfig:
    """The :class:`AutoencoderConfig` of ``preset`` with ``overrides`` (unknown keys refused)."""
    if preset not in AUTOENCODER_PRESETS:
        raise DifflabError(
            f"unknown autoencoder preset {preset!r}; choose one of "
            f"{', '.join(AUTOENCODER_PRESETS)}."
        )
    values = {**AUTOENCODER_PRESETS[preset], **overrides}
    config = dataclass_from_dict(AutoencoderConfig, values, "model")
    config.check()
    return config


class ResnetBlock(nn.Module):
    """``skip(x) + conv(silu(norm(conv(silu(norm(x))))))``: LDM's ResNet block, no time input.

    Shapes: (B, in_ch, H, W) -> (B, out_ch, H, W).
    """

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.norm1 = group_norm(in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.norm2 = group_norm(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.skip = nn.Identity() if in_ch == out_ch else nn.Conv2d(in_ch, out_ch, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return self.skip(x) + h


class MidBlock(nn.Sequential):
    """ResNet block, self-attention over the h·w positions (optional), ResNet block."""

    def __init__(self, channels: int, attention: bool) -> None:
        super().__init__(
            ResnetBlock(channels, channels),
            SpatialSelfAttention(channels) if attention else nn.Identity(),
            ResnetBlock(channels, channels),
        )


class Encoder(nn.Module):
    """(B, C, H, W) -> (B, out_channels, H/f, W/f)."""

    def __init__(self, config: AutoencoderConfig, out_channels: int) -> None:
        super().__init__()
        widths = [config.base_channels * m for m in config.channel_mult]
        self.conv_in = nn.Conv2d(config.in_channels, config.base_channels, 3, padding=1)
        layers: list[nn.Module] = []
        channels = config.base_channels
        for level, width in enumerate(widths):
            for _ in range(config.num_res_blocks):
                layers.append(ResnetBlock(channels, width))
                channels = width
            if level < len(widths) - 1:
                layers.append(Downsample(channels))  # stride 2: H -> H/2
        self.down = nn.Sequential(*layers)
        self.mid = MidBlock(channels, config.mid_attention)
        self.norm_out = group_norm(channels)
        self.conv_out = nn.Conv2d(channels, out_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.mid(self.down(self.conv_in(x)))  # (B, width_last, H/f, W/f)
        return self.conv_out(F.silu(self.norm_out(h)))


class Decoder(nn.Module):
    """(B, c, h, w) -> (B, C, h·f, w·f); no output non-linearity."""

    def __init__(self, config: AutoencoderConfig) -> None:
        super().__init__()
        widths = [config.base_channels * m for m in config.channel_mult]
        channels = widths[-1]
        self.conv_in = nn.Conv2d(config.latent_channels, channels, 3, padding=1)
        self.mid = MidBlock(channels, config.mid_attention)
        self.levels = nn.ModuleList()
        for level in reversed(range(len(widths))):
            blocks: list[nn.Module] = []
            for _ in range(config.num_res_blocks + 1):
                blocks.append(ResnetBlock(channels, widths[level]))
                channels = widths[level]
            self.levels.append(nn.Sequential(*blocks))
        self.upsamples = nn.ModuleList(Upsample(widths[i]) for i in reversed(range(1, len(widths))))
        self.norm_out = group_norm(channels)
        self.conv_out = nn.Conv2d(channels, config.in_channels, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.mid(self.conv_in(z))  # (B, width_last, h, w)
        for index, blocks in enumerate(self.levels):
            h = blocks(h)
            if index < len(self.upsamples):
                h = self.upsamples[index](h, (2 * h.shape[2], 2 * h.shape[3]))  # x2 per level
        return self.conv_out(F.silu(self.norm_out(h)))  # (B, C, H, W)


@dataclass
class DiagonalGaussian:
    """The KL autoencoder's posterior q(z|x) = N(mean, diag exp(logvar)); tensors (B, c, h, w)."""

    mean: torch.Tensor
    logvar: torch.Tensor

    @classmethod
    def from_moments(cls, moments: torch.Tensor) -> DiagonalGaussian:
        """Split (B, 2c, h, w) encoder moments into mean and log σ² (clamped to LOGVAR_RANGE)."""
        mean, logvar = moments.chunk(2, dim=1)
        return cls(mean, logvar.clamp(*LOGVAR_RANGE))

    @property
    def std(self) -> torch.Tensor:
        return torch.exp(0.5 * self.logvar)

    def sample(self, noise: torch.Tensor | None = None) -> torch.Tensor:
        """z = μ + σ ⊙ ε (the reparameterisation trick); ε ~ N(0, I) drawn here when not given."""
        if noise is None:
            noise = torch.randn_like(self.mean)
        return self.mean + self.std * noise.to(self.mean.dtype)

    def kl(self) -> torch.Tensor:
        """KL(q ‖ N(0, I)) = ½ Σ (μ² + σ² − 1 − log σ²) summed over each image's latents: (B,)."""
        mean, logvar = self.mean.float(), self.logvar.float()
        return 0.5 * (mean.square() + logvar.exp() - 1.0 - logvar).flatten(1).sum(1)


@dataclass
class AutoencoderOutput:
    """A training forward pass: the reconstruction and the regulariser's state."""

    reconstruction: torch.Tensor  # (B, C, H, W)
    z: torch.Tensor  # (B, c, h, w): the decoded latent (a posterior sample, or the codes)
    posterior: DiagonalGaussian | None = None  # KL-reg
    quantized: QuantizerOutput | None = None  # VQ-reg

    def vq_loss(self, beta: float) -> torch.Tensor:
        """VQ-VAE's codebook terms ``‖sg(z_e) − z_q‖² + β ‖z_e − sg(z_q)‖²`` (0 for KL-reg)."""
        if self.quantized is None:
            return self.reconstruction.new_zeros((), dtype=torch.float32)
        return self.quantized.codebook_loss + beta * self.quantized.commitment_loss


class PerceptualAutoencoder(nn.Module):
    """LDM's first stage, KL- or VQ-regularised (module docstring); the contract is
    ``encode(x) -> z``, ``decode(z) -> x`` and ``latent_scale``."""

    def __init__(self, config: AutoencoderConfig) -> None:
        super().__init__()
        config.check()
        self.config = config
        c = config.latent_channels
        moments = 2 * c if config.regularizer == "kl" else c
        self.encoder = Encoder(config, moments)
        self.quant_conv = nn.Conv2d(moments, moments, 1)
        self.quantizer = (
            VectorQuantizer(
                config.num_codes,
                c,
                update=config.codebook_update,
                kmeans_init=config.kmeans_init,
                restart_after=config.restart_after,
            )
            if config.regularizer == "vq"
            else None
        )
        self.post_quant_conv = nn.Conv2d(c, c, 1)
        self.decoder = Decoder(config)

    @property
    def latent_scale(self) -> float:
        return self.config.latent_scale

    @property
    def last_layer(self) -> torch.Tensor:
        """The decoder's last convolution weight (C, width, 3, 3): G_L of the adaptive weight."""
        return self.decoder.conv_out.weight

    def _check_images(self, x: torch.Tensor) -> None:
        size, channels = self.config.image_size, self.config.in_channels
        if x.dim() != 4 or tuple(x.shape[1:]) != (channels, size, size):
            raise DifflabError(
                f"this autoencoder takes images of shape (B, {channels}, {size}, {size}), got "
                f"{tuple(x.shape)}."
            )

    def _check_latents(self, z: torch.Tensor) -> None:
        if z.dim() != 4 or tuple(z.shape[1:]) != self.config.latent_shape:
            raise DifflabError(
                f"this autoencoder decodes latents of shape (B, {', '.join(map(str, self.config.latent_shape))}), "
                f"got {tuple(z.shape)}."
            )

    def posterior(self, x: torch.Tensor) -> DiagonalGaussian:
        """q(z|x) of a KL autoencoder for images x (B, C, H, W)."""
        if self.config.regularizer != "kl":
            raise DifflabError("a VQ autoencoder has no Gaussian posterior; use encode(x).")
        self._check_images(x)
        return DiagonalGaussian.from_moments(self.quant_conv(self.encoder(x)))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Latents z (B, c, H/f, W/f) of images x (B, C, H, W) in [-1, 1], not yet multiplied by
        ``latent_scale``: the posterior mean (KL) or the pre-quantisation latents (VQ)."""
        if self.config.regularizer == "kl":
            return self.posterior(x).mean
        self._check_images(x)
        return self.quant_conv(self.encoder(x))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Images (B, C, H, W) of latents z (B, c, h, w); a VQ autoencoder first snaps z to codes."""
        self._check_latents(z)
        if self.quantizer is not None:
            z = self.quantizer(z).z_q
        return self.decoder(self.post_quant_conv(z))

    def forward(self, x: torch.Tensor, noise: torch.Tensor | None = None) -> AutoencoderOutput:
        """The training pass x (B, C, H, W) -> x̃: through a posterior sample z = μ + σ ⊙ ε (KL;
        ``noise`` is ε (B, c, h, w), drawn here when None) or through the codes (VQ). In eval
        mode a KL autoencoder decodes the mean."""
        if self.quantizer is None:
            posterior = self.posterior(x)
            z = posterior.sample(noise) if self.training else posterior.mean
            return AutoencoderOutput(self.decoder(self.post_quant_conv(z)), z, posterior=posterior)
        self._check_images(x)
        quantized = self.quantizer(self.quant_conv(self.encoder(x)))
        z_q = quantized.z_q  # (B, c, h, w) straight-through
        return AutoencoderOutput(self.decoder(self.post_quant_conv(z_q)), z_q, quantized=quantized)


def load_autoencoder(path: str | Path) -> PerceptualAutoencoder:
    """Load an exported ``kind: autoencoder`` checkpoint (``model.safetensors`` of
    ``difflab train``, or its ``difflab export --fp16`` copy) in eval mode with frozen float32
    weights; its config carries ``latent_scale``, measured on ``meta["latent_scale_images"]``
    training images (a file without that entry is refused)."""
    path = Path(path)
    tensors, meta = load_checkpoint(path, kind=AUTOENCODER_KIND)
    if "state" in meta or LATENT_SCALE_IMAGES_KEY not in meta:
        raise DifflabError(
            f"{path} holds no measured latent_scale (a training state, or a file exported from "
            "one); give the model.safetensors a finished `difflab train` run writes."
        )
    if not isinstance(meta.get("model"), dict):
        raise DifflabError(
            f"{path} lacks the 'model' entry of an autoencoder checkpoint; re-export it with "
            "difflab."
        )
    values = {k: v for k, v in meta["model"].items() if k != "preset"}
    try:
        config = dataclass_from_dict(AutoencoderConfig, values, "model")
        config.check()
    except DifflabError as error:
        raise DifflabError(f"{path}: {error}") from None
    model = build_within_file(lambda: PerceptualAutoencoder(config), tensors, path)
    load_weights_strict(model, split_prefix(tensors, "model"), path)
    return model.eval().requires_grad_(False)


def with_latent_scale(model: PerceptualAutoencoder, scale: float) -> PerceptualAutoencoder:
    """``model`` with ``config.latent_scale = scale`` (the config is replaced, not mutated)."""
    model.config = dataclasses.replace(model.config, latent_scale=float(scale))
    return model
