"""Compositions of the components: a loaded pixel-space diffusion model (more to come)."""

from difflab.pipelines.pixel import DiffusionModel, load_diffusion_model, load_noisy_classifier

__all__ = ["DiffusionModel", "load_diffusion_model", "load_noisy_classifier"]
