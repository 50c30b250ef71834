"""The autoencoder stage of a latent diffusion model: which autoencoder, checked by its SHA-256.

A latent model's checkpoint records ``autoencoder: {path, sha256, image_shape, latent_scale}``.
Loading finds the file (the recorded path, then beside the checkpoint, then a shipped name),
refuses one whose SHA-256 differs (another autoencoder's latents would decode to noise, silently),
and hands the pipeline an autoencoder whose ``decode(z / latent_scale)`` gives images.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from difflab.autoencoders import PerceptualAutoencoder, load_autoencoder
from difflab.errors import DifflabError
from difflab.metrics.features import file_digest
from difflab.pipelines.recorded import recorded_file


@dataclass
class LatentStage:
    """A frozen autoencoder and the file it came from."""

    autoencoder: PerceptualAutoencoder
    path: Path
    sha256: str

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of the images it decodes to."""
        config = self.autoencoder.config
        return (config.in_channels, config.image_size, config.image_size)

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """(c, H/f, W/f) of the latents the diffusion model denoises."""
        return self.autoencoder.config.latent_shape

    def meta(self) -> dict[str, Any]:
        """What a latent model's checkpoint records about its autoencoder."""
        return {
            "path": str(self.path),
            "sha256": self.sha256,
            "image_shape": list(self.image_shape),
            "latent_scale": self.autoencoder.latent_scale,
        }


def open_latent_stage(path: str | Path) -> LatentStage:
    """Load the autoencoder at ``path`` (a ``kind: autoencoder`` checkpoint) with its SHA-256."""
    path = Path(path).expanduser()
    if not path.is_file():
        what = "is a folder, not a checkpoint file" if path.is_dir() else "does not exist"
        raise DifflabError(
            f"the autoencoder {path} {what}; give the model.safetensors of a `kind: autoencoder` "
            "run (e.g. configs/ae_emoji_f4.yaml) as 'autoencoder:'."
        )
    return LatentStage(load_autoencoder(path), path, file_digest(path))


def latent_stage_of(recorded: dict[str, Any], checkpoint: Path) -> LatentStage:
    """The autoencoder a latent model's checkpoint names, found and checked
    (:func:`~difflab.pipelines.recorded.recorded_file`)."""
    found, digest = recorded_file(
        recorded,
        checkpoint,
        entry="autoencoder",
        role="the autoencoder",
        mismatch="its latents would decode wrongly",
    )
    return LatentStage(load_autoencoder(found), found, digest)
