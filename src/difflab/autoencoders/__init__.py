"""Autoencoders: VQ-VAE with its vector quantiser and its autoregressive code prior; Latent
Diffusion's perceptual autoencoder (KL- or VQ-regularised) with its PatchGAN and training loss."""

from difflab.autoencoders.discriminator import PatchDiscriminator
from difflab.autoencoders.kl import (
    AUTOENCODER_ARCH,
    AUTOENCODER_KIND,
    AUTOENCODER_PRESETS,
    AutoencoderConfig,
    AutoencoderOutput,
    DiagonalGaussian,
    PerceptualAutoencoder,
    autoencoder_config,
    load_autoencoder,
)
from difflab.autoencoders.ldm_loss import (
    AutoencoderLoss,
    AutoencoderWithLoss,
    LossConfig,
    adaptive_weight,
    generator_loss,
    hinge_d_loss,
    loss_config,
)
from difflab.autoencoders.prior import (
    PRIOR_KIND,
    PRIOR_PRESETS,
    CodePrior,
    CodePriorConfig,
    bits_per_code,
    bits_per_image_dim,
    code_nll,
    prior_config,
)
from difflab.autoencoders.quantizer import (
    QuantizerOutput,
    VectorQuantizer,
    kmeans,
    nearest_code,
    perplexity_of,
)
from difflab.autoencoders.vqvae import (
    VQVAE,
    VQVAE_KIND,
    VQVAE_PRESETS,
    VQVAEConfig,
    vqvae_config,
    vqvae_loss,
)

__all__ = [
    "AUTOENCODER_ARCH",
    "AUTOENCODER_KIND",
    "AUTOENCODER_PRESETS",
    "PRIOR_KIND",
    "PRIOR_PRESETS",
    "VQVAE",
    "VQVAE_KIND",
    "VQVAE_PRESETS",
    "AutoencoderConfig",
    "AutoencoderLoss",
    "AutoencoderOutput",
    "AutoencoderWithLoss",
    "CodePrior",
    "CodePriorConfig",
    "DiagonalGaussian",
    "LossConfig",
    "PatchDiscriminator",
    "PerceptualAutoencoder",
    "QuantizerOutput",
    "VQVAEConfig",
    "VectorQuantizer",
    "adaptive_weight",
    "autoencoder_config",
    "bits_per_code",
    "bits_per_image_dim",
    "code_nll",
    "generator_loss",
    "hinge_d_loss",
    "kmeans",
    "load_autoencoder",
    "loss_config",
    "nearest_code",
    "perplexity_of",
    "prior_config",
    "vqvae_config",
    "vqvae_loss",
]
