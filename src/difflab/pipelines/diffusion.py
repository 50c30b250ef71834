"""One generation path for every diffusion model: :class:`DiffusionPipeline`.

A pipeline owns a network, the schedule it was trained with, its typed description, an optional
autoencoder stage (the network then denoises latents and the pipeline decodes them, as in Latent
Diffusion), the device and the precision. :meth:`DiffusionPipeline.generate` is the one batched
call the CLI, evaluation, training's sample grids and every benchmark go through::

    x_T ~ N(0, I)  ->  sampler(outermost wrapper, x_T, timesteps, cond)  ->  decode  ->  images

with the wrappers stacked in :data:`~difflab.samplers.WRAPPER_ORDER` (classifier-free combine,
then x0 thresholding, then classifier guidance) and the sampler taken from the registry
(:data:`~difflab.samplers.SAMPLERS`).
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch

from difflab.diffusion import (
    AUTO,
    Conditioning,
    Denoiser,
    NoiseSchedule,
    automatic_spacing,
    timestep_sequence,
)
from difflab.errors import DifflabError
from difflab.models.classifier import NoisyClassifier, check_classifier_fits
from difflab.models.controlnet import (
    ControlledNetwork,
    ControlSettings,
    active_steps,
    check_hint_content,
    checked_hint,
)
from difflab.models.text import CaptionEncoder, caption_encoder_of
from difflab.pipelines.description import ModelDescription
from difflab.samplers import (
    DEFAULT_SAMPLER,
    DEFAULT_STEPS,
    Guidance,
    SamplerOptions,
    check_eta,
    ddim_invert,
    ddim_sample,
    get_sampler,
    interpolate,
)
from difflab.samplers.common import Callback, DenoiserLike

PRECISIONS: tuple[str, ...] = ("fp32", "bf16", "fp64")
"""fp32; bf16 autocast of the network (weights stay fp32); fp64 (weights and state in float64)."""

Progress = Callable[[int, int], None]
"""Called after each batch of :meth:`DiffusionPipeline.generate` with ``(done, total)``."""


class Autoencoder(Protocol):
    """The autoencoder stage: ``encode(x) -> z``, ``decode(z) -> x`` and the ``latent_scale`` the
    model's z carries (the network denoises ``encode(x) * latent_scale``)."""

    latent_scale: float

    def encode(self, x: torch.Tensor) -> torch.Tensor: ...

    def decode(self, z: torch.Tensor) -> torch.Tensor: ...


def batch_seed(seed: int, index: int) -> int:
    """An independent seed for batch ``index`` of a run with ``seed`` (NumPy SeedSequence)."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0])


def _within(labels: torch.Tensor, num_classes: int) -> bool:
    return bool(((labels >= 0) & (labels < num_classes)).all())


@dataclass
class DiffusionPipeline:
    """A diffusion model ready to generate.

    Attributes:
        net: the backbone, ``net(x_t, t, cond)`` with ``net.prediction``.
        schedule: the schedule it was trained with.
        description: what the checkpoint says about it (shapes, classes, conditioning).
        autoencoder: None in pixel space; else the stage that decodes sampled latents.
        precision: one of :data:`PRECISIONS`.
    """

    net: torch.nn.Module
    schedule: NoiseSchedule
    description: ModelDescription
    autoencoder: Autoencoder | None = None
    precision: str = "fp32"

    def __post_init__(self) -> None:
        self.set_precision(self.precision)

    @classmethod
    def from_network(
        cls, net: torch.nn.Module, schedule: NoiseSchedule, **kwargs: Any
    ) -> DiffusionPipeline:
        """A pipeline around a network built in Python (see :meth:`ModelDescription.for_network`)."""
        return cls(net.eval(), schedule, ModelDescription.for_network(net), **kwargs)

    # --- properties --------------------------------------------------------------------------

    @property
    def device(self) -> torch.device:
        return next(self.net.parameters()).device

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return self.description.image_shape

    @property
    def num_classes(self) -> int:
        return self.description.num_classes

    def set_precision(self, precision: str) -> None:
        """Switch to ``precision`` (fp64 converts the weights; fp32 and bf16 keep them fp32)."""
        if precision not in PRECISIONS:
            raise DifflabError(
                f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}."
            )
        self.net.to(torch.float64 if precision == "fp64" else torch.float32)
        self.precision = precision

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of x_t during sampling."""
        return torch.float64 if self.precision == "fp64" else torch.float32

    @property
    def text_encoder(self) -> CaptionEncoder | None:
        """The learned caption encoder of a model trained on captions (else None)."""
        return caption_encoder_of(self.net)

    @torch.no_grad()
    def caption_conditioning(
        self, captions: Sequence[str], labels: torch.Tensor | None = None
    ) -> Conditioning:
        """The Conditioning of one caption per sample (tokens (B, L, D) and their mask), plus
        ``labels`` (B,) for a model that is also class-conditional. Unknown words become the
        unknown token (``self.text_encoder.tokenizer.unknown_words`` lists them); an empty caption
        is the unconditional "no caption"."""
        encoder = self.text_encoder
        if encoder is None:
            raise DifflabError(
                "this model has no caption encoder (it was not trained on captions); condition "
                "it with labels, or with nothing."
            )
        if isinstance(captions, str):
            raise DifflabError("give a list of captions, one per sample, not one string.")
        tokens, mask = encoder.encode(list(captions))
        return Conditioning(labels=labels, tokens=tokens, token_mask=mask)

    def target_classes(self, guidance: Guidance | None) -> int:
        """How many classes a run can ask for: the model's own when it is class-conditional,
        else those of the guiding classifier (0: no labels)."""
        classifier = guidance.classifier if guidance is not None else None
        if self.num_classes or not isinstance(classifier, NoisyClassifier):
            return self.num_classes
        return classifier.config.num_classes

    # --- building blocks ---------------------------------------------------------------------

    def denoiser(self) -> Denoiser:
        return Denoiser(self.net, self.schedule)

    def timesteps(self, steps: int, spacing: str = "uniform") -> torch.Tensor:
        return timestep_sequence(self.schedule.num_timesteps, steps, spacing, self.schedule)

    def auto_spacing(self, sampler: str, guidance: Guidance | None = None) -> str:
        """The spacing ``"auto"`` gives ``sampler`` on this model under ``guidance``
        (:func:`automatic_spacing`)."""
        preferred = get_sampler(sampler).spacing
        guided = guidance is not None and guidance.shifts_by_classifier
        return automatic_spacing(preferred, self.schedule, self.net.prediction, guided)

    def noise(self, n: int, seed: int) -> torch.Tensor:
        """(n, C, H, W) standard normal x_T, drawn on the CPU so a seed gives the same images on
        any device."""
        generator = torch.Generator().manual_seed(seed)
        noise = torch.randn(n, *self.description.sample_shape, generator=generator)
        return noise.to(self.device, self.dtype)

    def _autocast(self) -> contextlib.AbstractContextManager[object]:
        if self.precision != "bf16":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16)

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        """Sampled x (latents under an autoencoder stage) -> images (B, C, H, W)."""
        if self.autoencoder is None:
            return x
        return self.autoencoder.decode(x / self.autoencoder.latent_scale)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images (B, C, H, W) -> what the network denoises: the scaled latents
        ``E(x) * latent_scale`` under an autoencoder stage (as training saw them), else the images.
        """
        images = images.to(self.device, self.dtype)
        if self.autoencoder is None:
            return images
        return self.autoencoder.encode(images) * self.autoencoder.latent_scale

    def check_conditioning(self, cond: Conditioning, guidance: Guidance | None) -> None:
        """A DifflabError when ``cond`` cannot drive this model under ``guidance``."""
        if guidance is not None:
            self._check_guidance(cond, guidance)
        labels = cond.labels
        classifier_only = guidance is not None and guidance.classifier is not None
        if labels is not None and not self.num_classes and not classifier_only:
            raise DifflabError("this model is unconditional; drop --label/--labels.")
        if labels is not None and self.num_classes and not _within(labels, self.num_classes):
            raise DifflabError(f"labels must lie in 0..{self.num_classes - 1} for this model.")
        if isinstance(self.net, ControlledNetwork):
            hints = checked_hint(cond.control, list(self.net.controls), cond.batch_size or 0)
            check_hint_content(torch.cat(hints, dim=1))
        if self.text_encoder is not None and cond.tokens is None:
            raise DifflabError(
                "this model is conditioned on captions; pass pipe.caption_conditioning(captions) "
                "(difflab sample: --caption TEXT; an empty caption samples unconditionally)."
            )

    def _check_guidance(self, cond: Conditioning, guidance: Guidance) -> None:
        if guidance.guidance_scale is not None:
            if not set(self.description.conditioning_fields) - {"control"}:  # a hint is not dropped
                raise DifflabError(
                    "classifier-free guidance needs a conditional model trained with "
                    "conditioning dropout (train.label_dropout > 0); this model is unconditional."
                )
            if self.description.dropout_trained is False:
                raise DifflabError(
                    "classifier-free guidance needs a model trained with label dropout, but this "
                    "one had train.label_dropout = 0, so its 'no label' branch is untrained."
                )
        if guidance.needs_labels and cond.batch_size is None:
            raise DifflabError(
                "guidance needs target labels, one per sample (--label or --labels)."
            )
        if isinstance(guidance.classifier, NoisyClassifier) and cond.labels is not None:
            check_classifier_fits(guidance.classifier, self.description.sample_shape, cond.labels)

    def guided_denoiser(
        self,
        guidance: Guidance | None,
        sampler: str,
        timesteps: torch.Tensor,
        options: SamplerOptions,
        net: torch.nn.Module | None = None,
    ) -> DenoiserLike:
        """The Denoiser (of ``net``, default the pipeline's) inside the run's wrappers (see
        :mod:`difflab.samplers.stack`)."""
        denoiser = self.denoiser() if net is None else Denoiser(net, self.schedule)
        if guidance is None:
            return denoiser
        return guidance.wrap(denoiser, get_sampler(sampler), timesteps, options)

    # --- generation --------------------------------------------------------------------------

    @torch.no_grad()
    def generate(
        self,
        n: int,
        conditioning: Conditioning | None = None,
        *,
        seed: int = 0,
        sampler: str = DEFAULT_SAMPLER,
        steps: int = DEFAULT_STEPS,
        spacing: str = AUTO,
        eta: float = 0.0,
        sigma_hat: bool = False,
        guidance: Guidance | None = None,
        batch_size: int | None = None,
        callback: Callback | None = None,
        progress: Progress | None = None,
        control_scale: float | Sequence[float] | None = None,
        control: ControlSettings | None = None,
    ) -> torch.Tensor:
        """Generate ``n`` images (n, C, H, W), in [-1, 1] up to the model's error (clamp to show).

        Args:
            n: number of images.
            conditioning: per-sample conditioning for all n (labels, tokens, ...), or None.
            seed: with ``batch_size`` None, x_T comes from ``seed`` and the sampler's noise from
                ``seed + 1``; with batches, batch i uses ``SeedSequence([seed, i])`` likewise,
                so a result depends on (seed, batch_size) only.
            sampler: a registered sampler name (:data:`~difflab.samplers.SAMPLER_NAMES`); the
                default is the best measured trade-off, DPM-Solver++(2M) at 20 steps
                (:data:`~difflab.samplers.DEFAULT_SAMPLER`).
            steps, spacing: the timestep sub-sequence (S steps, see ``timestep_sequence``);
                ``"auto"``: :meth:`auto_spacing` (the sampler's own spacing; on a long-tailed
                schedule such as the cosine one, trailing for a v or x0 model and uniform under
                classifier guidance).
            eta, sigma_hat: see :class:`~difflab.samplers.SamplerOptions`; eta > 0 needs the
                ddim sampler (a DifflabError otherwise, rather than ignoring it).
            guidance: the wrappers of the run (classifier-free, thresholding, classifier).
            batch_size: images per forward batch (bounds memory); None for all at once.
            callback: per sampler step, with :class:`~difflab.samplers.StepInfo`.
            progress: per batch, with ``(done, n)``.
            control_scale: a ControlNet model's scale (one number, one per block, or one entry
                per ControlNet); overrides ``control.scale``.
            control: a ControlNet model's sampling controls (scale, guess mode, start and end
                fractions); the hint is ``conditioning.control`` (B, 1 or C, H, W) in [-1, 1].
        """
        spec = get_sampler(sampler)
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise DifflabError(f"the number of images must be at least 1, got {n!r}.")
        if not (isinstance(eta, (int, float)) and np.isfinite(eta) and eta >= 0):
            raise DifflabError(f"eta must be a finite number >= 0, got {eta}.")
        check_eta(spec, eta)
        if batch_size is not None and batch_size < 1:
            raise DifflabError(f"batch size must be at least 1, got {batch_size}.")
        cond = (conditioning or Conditioning()).to(self.device)
        if cond.batch_size not in (None, n):
            raise DifflabError(f"conditioning for {cond.batch_size} samples, but n = {n}.")
        self.check_conditioning(cond, guidance)
        if spacing == AUTO:
            spacing = self.auto_spacing(sampler, guidance)
        timesteps = self.timesteps(steps, spacing)
        options = SamplerOptions(eta=float(eta), sigma_hat=sigma_hat)
        net = self.network_for_run(timesteps, control, control_scale)
        denoiser = self.guided_denoiser(guidance, sampler, timesteps, options, net)
        size = n if batch_size is None else batch_size
        images = []
        for index, start in enumerate(range(0, n, size)):
            count = min(size, n - start)
            part_seed = seed if batch_size is None else batch_seed(seed, index)
            part = cond if cond.batch_size is None else cond[start : start + count]
            generator = torch.Generator().manual_seed(part_seed + 1)
            with self._autocast():
                x = spec.run(
                    denoiser, self.noise(count, part_seed), timesteps, part, options, generator,
                    callback,
                )  # fmt: skip
                images.append(self.decode(x))
            if progress is not None:
                progress(start + count, n)
        return torch.cat(images)

    def network_for_run(
        self,
        timesteps: torch.Tensor,
        control: ControlSettings | None = None,
        control_scale: float | Sequence[float] | None = None,
    ) -> torch.nn.Module:
        """The network of one run: a ControlNet model under that run's sampling controls (the
        start / end fractions refer to ``timesteps``); any other model as it is."""
        if not isinstance(self.net, ControlledNetwork):
            if control is not None or control_scale is not None:
                raise DifflabError(
                    "this model has no ControlNet; drop the control settings (--hint, "
                    "--control-scale), or load a ControlNet checkpoint."
                )
            return self.net
        settings = control or ControlSettings()
        if control_scale is not None:
            settings = dataclasses.replace(settings, scale=control_scale)
        active = None
        if (settings.start, settings.end) != (0.0, 1.0):
            active = active_steps(
                timesteps, self.schedule.num_timesteps, settings.start, settings.end
            )
        return self.net.with_settings(settings, active)

    # --- inversion and interpolation ----------------------------------------------------------

    @torch.no_grad()
    def invert(
        self,
        x0: torch.Tensor,
        steps: int,
        spacing: str = "uniform",
        conditioning: Conditioning | None = None,
        eps_at: str | None = None,
    ) -> torch.Tensor:
        """DDIM inversion of images x0 (B, C, H, W) -> x_T (see ``ddim_invert``).

        A latent pipeline inverts the scaled latents of x0 (``encode``): x_T is then (B, c, h, w),
        and :meth:`reconstruct` decodes it back to images.
        """
        extra = {} if eps_at is None else {"eps_at": eps_at}
        cond = (conditioning or Conditioning()).to(self.device)
        z0 = self.encode(x0)  # (B, C, H, W) or (B, c, h, w)
        return ddim_invert(self.denoiser(), z0, self.timesteps(steps, spacing), cond, **extra)

    @torch.no_grad()
    def reconstruct(
        self,
        x_T: torch.Tensor,
        steps: int,
        spacing: str = "uniform",
        conditioning: Conditioning | None = None,
    ) -> torch.Tensor:
        """Deterministic DDIM decoding of x_T (the inverse of :meth:`invert`)."""
        cond = (conditioning or Conditioning()).to(self.device)
        x = ddim_sample(self.denoiser(), x_T, self.timesteps(steps, spacing), cond, eta=0.0)
        return self.decode(x)

    @torch.no_grad()
    def interpolate(
        self,
        seed_a: int,
        seed_b: int,
        num_points: int,
        steps: int,
        spacing: str = "uniform",
        conditioning: Conditioning | None = None,
    ) -> torch.Tensor:
        """Decode the slerp path between the noises of two seeds: (num_points, C, H, W).

        ``conditioning`` is that of one sample; it is repeated along the path.
        """
        cond = (conditioning or Conditioning()).to(self.device)
        x = interpolate(
            self.denoiser(),
            self.noise(1, seed_a),
            self.noise(1, seed_b),
            num_points,
            self.timesteps(steps, spacing),
            cond,
        )
        return self.decode(x)
