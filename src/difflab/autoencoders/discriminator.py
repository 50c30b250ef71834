"""The PatchGAN discriminator (Isola et al. 2017, "Image-to-Image Translation with Conditional
Adversarial Networks", sec. 3.2.2 and appendix 6.1.2), as Latent Diffusion and VQGAN use it.

An N-layer fully convolutional classifier whose every output logit judges one overlapping patch of
the input as real or fake:

    C64 - C128 - C256 - C512 - 1        (n_layers = 3, channels = 64: the 70x70 PatchGAN)

Ck is a 4x4 convolution with k filters, BatchNorm (not after the first) and LeakyReLU(0.2); the
first n_layers convolutions have stride 2, the last two stride 1, all padding 1; the width doubles
per layer up to 8 x ``channels``. Weights start as N(0, 0.02) and BatchNorm scales as N(1, 0.02),
the pix2pix / taming-transformers initialisation. A 64x64 image gives a 6x6 map of logits.

BatchNorm normalises each call's batch. Under data-parallel training each process normalises its
own slice, as taming-transformers under Lightning's DDP does (PyTorch's SyncBatchNorm runs on GPUs
only), so N processes do not take exactly the steps one process takes once the GAN is on.
"""

from __future__ import annotations

import torch
from torch import nn

from difflab.errors import DifflabError

LEAKY_SLOPE = 0.2
INIT_STD = 0.02


def patch_logits_side(image_size: int, n_layers: int) -> int:
    """Side of the logit map for square inputs of ``image_size``: n stride-2 4x4 convolutions
    (s -> floor(s / 2)), then two stride-1 4x4 convolutions with padding 1 (s -> s - 1 each)."""
    side = image_size
    for _ in range(n_layers):
        side = (side + 2 - 4) // 2 + 1
    return side - 2


def check_discriminator(image_size: int, n_layers: int, channels: int, where: str) -> None:
    """Refuse a PatchGAN that would not fit the images, in one sentence."""
    if n_layers < 1 or channels < 1:
        raise DifflabError(
            f"{where}: disc_layers and disc_channels must be at least 1, got {n_layers} and "
            f"{channels}."
        )
    if patch_logits_side(image_size, n_layers) < 1:
        fits = max(
            (n for n in range(1, n_layers) if patch_logits_side(image_size, n) >= 1), default=0
        )
        hint = f"at most {fits}" if fits else "larger images"
        raise DifflabError(
            f"{where}: a {n_layers}-layer PatchGAN needs images of at least "
            f"{_smallest_image(n_layers)}x{_smallest_image(n_layers)}, got {image_size}x"
            f"{image_size}; use {hint} disc_layers."
        )


def _smallest_image(n_layers: int) -> int:
    size = 1
    while patch_logits_side(size, n_layers) < 1:
        size += 1
    return size


class PatchDiscriminator(nn.Module):
    """(B, C, H, W) images -> (B, 1, h, w) logits, one per receptive-field patch (module docstring).

    Args:
        in_channels: C of the images.
        channels: filters of the first layer (64 in pix2pix and LDM).
        n_layers: number of stride-2 layers (3: the 70x70 PatchGAN).
    """

    def __init__(self, in_channels: int, channels: int = 64, n_layers: int = 3) -> None:
        super().__init__()
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, channels, 4, stride=2, padding=1),
            nn.LeakyReLU(LEAKY_SLOPE),
        ]
        width = channels
        for layer in range(1, n_layers + 1):
            out = channels * min(2**layer, 8)
            stride = 2 if layer < n_layers else 1
            layers += [
                nn.Conv2d(width, out, 4, stride=stride, padding=1, bias=False),
                nn.BatchNorm2d(out),
                nn.LeakyReLU(LEAKY_SLOPE),
            ]
            width = out
        layers.append(nn.Conv2d(width, 1, 4, stride=1, padding=1))
        self.main = nn.Sequential(*layers)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """pix2pix's init: convolutions N(0, 0.02), BatchNorm scale N(1, 0.02) and shift 0."""
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, 0.0, INIT_STD)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.normal_(module.weight, 1.0, INIT_STD)
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.main(x)  # (B, 1, h, w)
