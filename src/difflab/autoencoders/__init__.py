"""Autoencoders: VQ-VAE with its vector quantiser and its autoregressive code prior."""

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
    "PRIOR_KIND",
    "PRIOR_PRESETS",
    "VQVAE",
    "VQVAE_KIND",
    "VQVAE_PRESETS",
    "CodePrior",
    "CodePriorConfig",
    "QuantizerOutput",
    "VQVAEConfig",
    "VectorQuantizer",
    "bits_per_code",
    "bits_per_image_dim",
    "code_nll",
    "kmeans",
    "nearest_code",
    "perplexity_of",
    "prior_config",
    "vqvae_config",
    "vqvae_loss",
]
