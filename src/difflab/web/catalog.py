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
from difflab.diffusion import AUTO, Conditioning
from difflab.errors import DifflabError
from difflab.io.checkpoint import load_checkpoint_meta
from difflab.io.weights import resolve_checkpoint, shipped_names
from difflab.models.controlnet import CONTROL_KIND, ControlledNetwork
from difflab.pipelines import DiffusionPipeline, load_pipeline
from difflab.pipelines.cascade import (
    DEFAULT_GUIDANCE_SCALE,
    SHIPPED_CASCADE,
    CascadePipeline,
    StageSettings,
)
from difflab.samplers import Guidance, StepInfo
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

CASCADE_SEPARATOR = ","
"""``--model base.safetensors,sr.safetensors`` serves the stages as one text-to-image cascade."""

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
class CascadeRun:
    """One checked text-to-image request for a cascade: every stage's steps in one progress bar."""

    cascade: CascadePipeline
    prompts: list[str]
    settings: list[StageSettings]
    seed: int
    hint: None = None  # a cascade reads no control image

    @property
    def total_steps(self) -> int:
        return sum(stage.steps for stage in self.settings)

    def run(self, on_step: StepPreview) -> torch.Tensor:
        """(n, C, H, W) images of the last stage in [-1, 1]; ``on_step`` sees each stage's x0."""
        offsets = np.cumsum([0] + [stage.steps for stage in self.settings]).tolist()

        def callback(stage: int, info: StepInfo) -> None:
            on_step(offsets[stage] + info.index + 1, self.total_steps, info.x0.float())

        images = self.cascade.generate(
            self.prompts, self.settings, seed=self.seed, callback=callback
        )
        return images.float()  # type: ignore[union-attr]


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

    @property
    def takes_prompt(self) -> bool:
        """Whether the model reads a text prompt (a caption model's learned encoder)."""
        return self.pipeline.text_encoder is not None

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
            "prompt": self.takes_prompt,
            # a prompt model's guidance box starts at the Imagen cascade's measured best w (3;
            # ldm_emoji's measured FD is also lower at w = 3 than at 1); an empty prompt with it
            # is refused in one sentence (guidance needs a prompt to guide towards)
            "guidance_default": DEFAULT_GUIDANCE_SCALE
            if self.takes_prompt and self.takes_guidance
            else None,
            "stages": 1,
            "source": self.source,
        }

    def prepare(self, request: GenerateRequest, limits: ServeLimits) -> SamplingRun:
        """Check ``request`` against this model and ``limits``; a :class:`RequestRefused` (4xx,
        one sentence) says what does not fit."""
        request.check_limits(limits)
        self._check_prompt(request)
        labels = self._labels(request)
        guidance = self._guidance(request)
        hint = self._hint(request, limits)
        fields: dict[str, torch.Tensor] = {}
        if self.takes_prompt:
            captions = [request.prompt_text] * request.n
            fields.update(self.pipeline.caption_conditioning(captions).items())
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
            "spacing": request.spacing or AUTO,  # generate() resolves it for model and guidance
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
            raise RequestRefused(422, f"model {self.name} takes no label; leave the label empty.")
        if request.label >= classes:
            raise RequestRefused(
                422,
                f"label {request.label} is out of range; model {self.name} has labels 0..{classes - 1}.",
            )
        return torch.full((request.n,), request.label, dtype=torch.long)  # (n,)

    def _guidance(self, request: GenerateRequest) -> Guidance | None:
        if request.guidance_scale is None:
            return None if request.threshold is None else Guidance(threshold=request.threshold)
        if not self.takes_guidance:
            raise RequestRefused(
                422,
                f"model {self.name} was not trained for classifier-free guidance (it needs a "
                "conditional model trained with label dropout); leave the guidance scale empty.",
            )
        reads_labels = "labels" in self.pipeline.description.conditioning_fields
        targets = [
            what
            for what, read in (("a label", reads_labels), ("a prompt", self.takes_prompt))
            if read
        ]
        if targets and request.label is None and not request.prompt_text:
            raise RequestRefused(
                422,
                f"classifier-free guidance needs {' or '.join(targets)} to guide towards; give one.",
            )
        return Guidance(guidance_scale=request.guidance_scale, threshold=request.threshold)

    def _check_prompt(self, request: GenerateRequest) -> None:
        """A prompt only for a model that reads one, in words its caption encoder knows."""
        prompt = request.prompt_text
        if not prompt:
            return
        if not self.takes_prompt:
            raise RequestRefused(
                422,
                f"model {self.name} does not read a prompt; leave the prompt empty or pick a "
                "text-to-image model.",
            )
        tokenizer = self.pipeline.text_encoder.tokenizer  # type: ignore[union-attr]
        unknown = tokenizer.unknown_words([prompt])
        if unknown:
            raise RequestRefused(
                422,
                f"model {self.name} does not know the word(s) {', '.join(unknown[:5])}; use the "
                "words of its training captions.",
            )
        if tokenizer.truncated([prompt]):
            raise RequestRefused(
                422,
                f"the prompt is longer than the {tokenizer.max_length} words model {self.name} "
                "reads; shorten it.",
            )

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


@dataclass
class ServedCascade(ServedModel):
    """An Imagen cascade (or its base stage alone) under one name: prompts through the frozen
    text encoder, every stage sampled with the request's sampler, steps, guidance and
    thresholding, the super-resolution stages' inputs augmented at ``noise_level``."""

    cascade: CascadePipeline | None = None

    @classmethod
    def of(cls, name: str, cascade: CascadePipeline, source: str = "<python>") -> ServedCascade:
        return cls(name, cascade.stages[-1].pipeline, source, cascade=cascade)

    @property
    def chain(self) -> CascadePipeline:
        assert self.cascade is not None, "a ServedCascade is built with ServedCascade.of"
        return self.cascade

    @property
    def takes_prompt(self) -> bool:
        return True

    def summary(self) -> dict[str, Any]:
        return super().summary() | {
            "arch": f"imagen cascade, {len(self.chain.stages)} stage(s)",
            "conditioning": ["tokens", "token_mask"],
            "stages": len(self.chain.stages),
            "prompt_limit": self.chain.encoder.max_length,
        }

    def prepare(self, request: GenerateRequest, limits: ServeLimits) -> CascadeRun:  # type: ignore[override]
        """Check ``request`` (its prompt against the encoder's length) and make the run."""
        request.check_limits(limits)
        self._labels(request)  # a label is refused with one sentence
        self._hint(request, limits)  # and so is a sketch
        guidance = self._guidance(request)
        encoder = self.chain.encoder
        pieces = encoder.piece_count(request.prompt_text)
        if pieces > encoder.max_length:
            raise RequestRefused(
                422,
                f"the prompt has {pieces} word pieces but model {self.name}'s text encoder reads "
                f"at most {encoder.max_length}; shorten it.",
            )
        stage = StageSettings(
            steps=request.steps,
            sampler=request.sampler,
            spacing=request.spacing or AUTO,  # each stage's own (StageSettings.spacing)
            guidance_scale=None if guidance is None else guidance.guidance_scale,
            threshold=request.threshold,
            noise_level=request.noise_level,
            eta=request.eta,
        )
        settings = [stage] * len(self.chain.stages)
        return CascadeRun(self.chain, [request.prompt_text] * request.n, settings, request.seed)


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
        models: list[ServedModel] = []
        for given in chosen:
            parts = [part for part in given.split(CASCADE_SEPARATOR) if part]
            paths = [resolve_checkpoint(part) for part in parts]
            meta = load_checkpoint_meta(paths[0])
            if len(paths) > 1 or meta.get("imagen", {}).get("text_encoder_sha256"):
                name = "+".join(Path(part).stem for part in parts)
                cascade = CascadePipeline.load(paths, device)
                models.append(ServedCascade.of(name, cascade, ",".join(map(str, paths))))
                continue
            hint_kind = str(meta.get("hint", DEFAULT_HINT))
            pipeline = load_pipeline(paths[0], device)
            models.append(ServedModel(Path(given).stem, pipeline, str(paths[0]), hint_kind))
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
    """The shipped checkpoints a server offers when no ``--model`` is given: every diffusion and
    ControlNet model, and the shipped Imagen cascade as one model (its stages not alone)."""
    shipped = shipped_names()
    names = [
        name
        for name in shipped
        if (meta := load_checkpoint_meta(resolve_checkpoint(name))).get("kind") in SERVABLE_KINDS
        and "imagen" not in meta
    ]
    if set(SHIPPED_CASCADE) <= set(shipped):
        names.append(CASCADE_SEPARATOR.join(SHIPPED_CASCADE))
    return names
