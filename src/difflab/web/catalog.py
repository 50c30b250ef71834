"""The models a server offers, and the checks that turn a request into a ready sampling run."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from difflab.data.folder import convert_mode, resize_and_center_crop
from difflab.data.hints import make_hint
from difflab.diffusion import Conditioning
from difflab.errors import DifflabError
from difflab.io.checkpoint import load_checkpoint_meta
from difflab.io.weights import resolve_checkpoint, shipped_names
from difflab.models.controlnet import CONTROL_KIND, ControlledNetwork
from difflab.pipelines import DiffusionPipeline, load_pipeline
from difflab.samplers import SAMPLERS, Guidance, StepInfo
from difflab.web.images import decode_data_url, hint_tensor
from difflab.web.limits import ServeLimits
from difflab.web.schemas import GenerateRequest, RequestRefused

SERVABLE_KINDS: tuple[str, ...] = ("diffusion", CONTROL_KIND)
"""Checkpoint kinds :func:`~difflab.pipelines.load_pipeline` reads, offered by default."""

DEFAULT_HINT = "canny"
SKETCH_HINTS: tuple[str, ...] = ("canny", "sobel", "scribble")
"""Hint kinds that are grey line drawings, so a sketch or an upload's edges can stand for them."""

HINT_CHANNELS = 1
"""A control hint is one grey channel (edges, a sketch), in the pixel space of the images."""

StepPreview = Callable[[int, int, torch.Tensor], None]
"""Called per sampler step with ``(step, total, x0)``, x0 (B, C, H, W) decoded images."""


@dataclass
class SamplingRun:
    """One checked request, ready for the worker: :meth:`run` generates its images."""

    pipeline: DiffusionPipeline
    n: int
    conditioning: Conditioning | None
    options: dict[str, Any]
    hint: torch.Tensor | None = None  # (1, 1, H, W) in [-1, 1], as the model receives it

    @property
    def total_steps(self) -> int:
        return int(self.options["steps"])

    def run(self, on_step: StepPreview) -> torch.Tensor:
        """(n, C, H, W) images in [-1, 1]; ``on_step`` sees the predicted x0 of every step."""
        pipeline = self.pipeline

        def callback(info: StepInfo) -> None:
            on_step(info.index + 1, info.total, pipeline.decode(info.x0).float())

        return pipeline.generate(
            self.n, self.conditioning, callback=callback, **self.options
        ).float()


@dataclass
class ServedModel:
    """A loaded pipeline under the name the web page shows."""

    name: str
    pipeline: DiffusionPipeline
    source: str = field(default="<python>")
    hint_kind: str = DEFAULT_HINT  # the hints it was trained on (a ControlNet checkpoint's "hint")

    @property
    def reads_control(self) -> bool:
        return "control" in self.pipeline.description.conditioning_fields

    @property
    def has_controlnet(self) -> bool:
        """Whether the model is a base plus ControlNets (it then takes a control scale)."""
        return isinstance(self.pipeline.net, ControlledNetwork)

    @property
    def takes_guidance(self) -> bool:
        """Whether classifier-free guidance is meaningful: a model conditioned on something that
        is dropped (labels, captions; a hint is the same in both branches) whose "nothing" branch
        was trained."""
        description = self.pipeline.description
        droppable = set(description.conditioning_fields) - {"control"}
        return bool(droppable) and description.dropout_trained is not False

    def summary(self) -> dict[str, Any]:
        """What the page needs to set its controls (``GET /api/models``)."""
        description = self.pipeline.description
        return {
            "name": self.name,
            "arch": description.arch,
            "image_shape": list(description.image_shape),
            "num_classes": description.num_classes,
            "conditioning": list(description.conditioning_fields),
            "guidance": self.takes_guidance,
            "control": self.reads_control,
            "control_scale": self.has_controlnet,
            "hint": self.hint_kind if self.reads_control else None,
            "latent": self.pipeline.autoencoder is not None,
            "source": self.source,
        }

    def prepare(self, request: GenerateRequest, limits: ServeLimits) -> SamplingRun:
        """Check ``request`` against this model and ``limits``; a :class:`RequestRefused` (4xx,
        one sentence) says what does not fit."""
        request.check_limits(limits)
        if self.pipeline.text_encoder is not None:
            raise RequestRefused(
                422,
                f"model {self.name} is conditioned on captions, which the web app does not take "
                "yet; use difflab sample --caption.",
            )
        labels = self._labels(request)
        guidance = self._guidance(request)
        hint = self._hint(request, limits)
        fields: dict[str, torch.Tensor] = {}
        if labels is not None:
            fields["labels"] = labels
        if hint is not None:
            fields["control"] = hint.expand(request.n, -1, -1, -1)  # (n, 1, H, W)
        conditioning = Conditioning(**fields) if fields else None
        try:
            self.pipeline.check_conditioning(conditioning or Conditioning(), guidance)
        except DifflabError as error:
            raise RequestRefused(422, str(error)) from None
        options: dict[str, Any] = {
            "seed": request.seed,
            "sampler": request.sampler,
            "steps": request.steps,
            "spacing": request.spacing or SAMPLERS[request.sampler].spacing,
            "eta": request.eta,
            "guidance": guidance,
        }
        if self.has_controlnet:
            options["control_scale"] = request.control_scale
        return SamplingRun(self.pipeline, request.n, conditioning, options, hint)

    def edges(self, image: Image.Image) -> torch.Tensor:
        """The edges (1, 1, H, W) in [-1, 1] of an uploaded image at the model's image size, made
        as the model's training hints were (Canny, Sobel or scribbles: :mod:`difflab.data.hints`;
        white on black) from the image in grey, resized and centre-cropped as a dataset image is."""
        _, size, _ = self.pipeline.image_shape
        grey = resize_and_center_crop(convert_mode(image, "L"), size)
        kind = self.hint_kind if self.hint_kind in SKETCH_HINTS else DEFAULT_HINT
        return make_hint(kind, np.asarray(grey))[None]  # (1, 1, H, W)

    def _labels(self, request: GenerateRequest) -> torch.Tensor | None:
        classes = self.pipeline.num_classes
        if request.label is None:
            return None
        if not classes:
            raise RequestRefused(422, f"model {self.name} is unconditional; leave the label empty.")
        if request.label >= classes:
            raise RequestRefused(
                422,
                f"label {request.label} is out of range; model {self.name} has labels 0..{classes - 1}.",
            )
        return torch.full((request.n,), request.label, dtype=torch.long)  # (n,)

    def _guidance(self, request: GenerateRequest) -> Guidance | None:
        if request.guidance_scale is None:
            return None
        if not self.takes_guidance:
            raise RequestRefused(
                422,
                f"model {self.name} was not trained for classifier-free guidance (it needs a "
                "conditional model trained with label dropout); leave the guidance scale empty.",
            )
        if request.label is None and "labels" in self.pipeline.description.conditioning_fields:
            raise RequestRefused(
                422, "classifier-free guidance needs a label to guide towards; pick one."
            )
        return Guidance(guidance_scale=request.guidance_scale)

    def _hint(self, request: GenerateRequest, limits: ServeLimits) -> torch.Tensor | None:
        if request.hint is None:
            if self.has_controlnet:
                raise RequestRefused(
                    422,
                    f"model {self.name} follows a sketch; draw on the canvas (or upload an image "
                    "for its edges) and send the sketch.",
                )
            return None
        if not self.reads_control:
            raise RequestRefused(
                422,
                f"model {self.name} does not read a control image; turn the sketch off or pick "
                "a ControlNet model.",
            )
        image = decode_data_url(request.hint, limits, "hint")
        _, height, width = self.pipeline.image_shape
        return hint_tensor(image, (HINT_CHANNELS, height, width))  # (1, 1, H, W)


class ModelCatalog:
    """The models of one server, by name (the order the page lists them in)."""

    def __init__(self, models: Sequence[ServedModel]) -> None:
        if not models:
            raise DifflabError("the server needs at least one model; give --model NAME_OR_PATH.")
        self._models: dict[str, ServedModel] = {}
        for model in models:
            if model.name in self._models:
                raise DifflabError(
                    f"two models are named {model.name!r}; give each --model a different file name."
                )
            self._models[model.name] = model

    @classmethod
    def from_pipelines(cls, pipelines: dict[str, DiffusionPipeline]) -> ModelCatalog:
        """A catalog of pipelines built or loaded in Python."""
        return cls([ServedModel(name, pipe) for name, pipe in pipelines.items()])

    @classmethod
    def load(
        cls, names_or_paths: Sequence[str] | None = None, device: str | torch.device = "cpu"
    ) -> ModelCatalog:
        """Load checkpoints (paths or shipped names); by default every shipped diffusion model."""
        chosen = list(names_or_paths) if names_or_paths else default_model_names()
        models = []
        for given in chosen:
            path = resolve_checkpoint(given)
            hint_kind = str(load_checkpoint_meta(path).get("hint", DEFAULT_HINT))
            pipeline = load_pipeline(path, device)
            models.append(ServedModel(Path(given).stem, pipeline, str(path), hint_kind))
        return cls(models)

    def names(self) -> list[str]:
        return list(self._models)

    def get(self, name: str) -> ServedModel:
        """The model ``name``, or a :class:`RequestRefused` (422) listing the names."""
        try:
            return self._models[name]
        except KeyError:
            raise RequestRefused(
                422, f"unknown model {name!r}; choose one of {', '.join(self._models)}."
            ) from None

    def summaries(self) -> list[dict[str, Any]]:
        return [model.summary() for model in self._models.values()]


def default_model_names() -> list[str]:
    """The shipped checkpoints a server offers when no ``--model`` is given."""
    return [
        name
        for name in shipped_names()
        if (meta := load_checkpoint_meta(resolve_checkpoint(name))).get("kind") in SERVABLE_KINDS
        and "imagen" not in meta  # Imagen's stages take prompts: `difflab generate`, not the page
    ]
