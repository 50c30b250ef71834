"""What a diffusion checkpoint holds, parsed once at load into one typed record.

Everything a pipeline, the CLI or an evaluation asks of a model (the shape it samples, its classes,
which conditioning it reads, whether its "nothing" branch was trained, its dataset) is an
attribute here, checked when the checkpoint is read, instead of lookups into nested metadata
dictionaries at the places that need them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from difflab.config import DiffusionConfig, dataclass_from_dict
from difflab.errors import DifflabError
from difflab.models import config_from_dict
from difflab.models.registry import ARCHITECTURES

REQUIRED_KEYS: tuple[str, ...] = ("arch", "model", "diffusion", "data")


@dataclass(frozen=True)
class ModelDescription:
    """A diffusion model's description.

    Attributes:
        arch: the architecture name (``"unet"``, ``"dit"``).
        config: the architecture's config dataclass.
        diffusion: the schedule it was trained with.
        image_shape: (C, H, W) of the images the pipeline returns (decoded ones for a latent
            model: its checkpoint's ``autoencoder.image_shape``).
        sample_shape: (C, H, W) of what the network denoises (the latent shape under an
            autoencoder stage; the image shape in pixel space).
        num_classes: K > 0 for a class-conditional model, else 0.
        conditioning_fields: the :class:`~difflab.diffusion.Conditioning` fields it reads.
        dropout_trained: whether its "nothing" branch was trained (label dropout > 0); None when
            the checkpoint does not say (an imported model).
        dataset: the name of its training data (``"mnist"``, a folder, ``"imported"``).
        data_config: the run's data section (image size, padding, folder) for reference
            statistics; empty when unknown.
        source: the file it was read from.
        step: the training step of its weights (None when unknown).
    """

    arch: str
    config: Any
    diffusion: DiffusionConfig
    image_shape: tuple[int, int, int]
    sample_shape: tuple[int, int, int]
    num_classes: int
    conditioning_fields: tuple[str, ...]
    dropout_trained: bool | None
    dataset: str
    data_config: dict[str, Any]
    source: str
    step: int | None = None

    @staticmethod
    def architecture(meta: dict[str, Any], path: str | Path) -> tuple[str, Any]:
        """``(arch, config dataclass)`` of a checkpoint's JSON, checked."""
        for key in REQUIRED_KEYS:
            if key not in meta:
                raise DifflabError(
                    f"{path} lacks the {key!r} entry of a diffusion checkpoint; re-export it "
                    "with difflab."
                )
        arch = meta["arch"]
        if arch not in ARCHITECTURES:
            raise DifflabError(
                f"{path} holds a model of unknown architecture {arch!r}; difflab builds "
                f"{', '.join(ARCHITECTURES)}: check that the file was written by this version "
                "of difflab."
            )
        return arch, config_from_dict(arch, meta["model"])

    @classmethod
    def from_meta(
        cls, meta: dict[str, Any], path: str | Path, conditioning_fields: tuple[str, ...]
    ) -> ModelDescription:
        """Parse a ``kind: diffusion`` checkpoint's JSON; a DifflabError names what is wrong.

        ``conditioning_fields`` come from the network built from it (``net.conditioning_fields``).
        """
        arch, config = cls.architecture(meta, path)
        diffusion = dataclass_from_dict(DiffusionConfig, meta["diffusion"], f"{path}: diffusion")
        data = meta["data"]
        try:
            image_shape = (int(data["channels"]), int(data["image_size"]), int(data["image_size"]))
        except (KeyError, TypeError, ValueError):
            raise DifflabError(
                f"{path}: the data entry must give channels and image_size; re-export it."
            ) from None
        sample_shape = (config.in_channels, config.image_size, config.image_size)
        if isinstance(meta.get("autoencoder"), dict) and "image_shape" in meta["autoencoder"]:
            image_shape = tuple(int(v) for v in meta["autoencoder"]["image_shape"])  # decoded
        num_classes = int(config.num_classes)
        trained = meta.get("experiment", {}).get("train", {})
        dropout = trained.get("label_dropout")
        return cls(
            arch=arch,
            config=config,
            diffusion=diffusion,
            image_shape=image_shape,
            sample_shape=sample_shape,
            num_classes=num_classes,
            conditioning_fields=tuple(conditioning_fields),
            dropout_trained=None if dropout is None else float(dropout) > 0,
            dataset=str(data.get("name", "unknown")),
            data_config=dict(meta.get("experiment", {}).get("data", {})),
            source=str(path),
            step=None if meta.get("step") is None else int(meta["step"]),
        )

    @classmethod
    def for_network(cls, net: Any, diffusion: DiffusionConfig | None = None) -> ModelDescription:
        """The description of a network built in Python (not read from a checkpoint).

        ``net.config`` must give ``in_channels``, ``image_size`` and ``num_classes``, and ``net``
        its ``conditioning_fields`` (every difflab backbone does); its "nothing" branch counts as
        trained.
        """
        config = net.config
        shape = (int(config.in_channels), int(config.image_size), int(config.image_size))
        num_classes = int(config.num_classes)
        return cls(
            arch=type(net).__name__.lower(),
            config=config,
            diffusion=diffusion or DiffusionConfig(),
            image_shape=shape,
            sample_shape=shape,
            num_classes=num_classes,
            conditioning_fields=tuple(net.conditioning_fields),
            dropout_trained=None,
            dataset="unknown",
            data_config={},
            source="<python>",
        )
