"""A trained diffusion model loaded from a checkpoint, with one-call sampling, inversion and interpolation.

Also loads the noisy classifiers that guide it (:func:`load_noisy_classifier`); ``sample`` takes
a :class:`~difflab.samplers.Guidance` that wraps the model's Denoiser for one run.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch

from difflab.diffusion import (
    ClippedDenoiser,
    Conditioning,
    Denoiser,
    NoiseSchedule,
    timestep_sequence,
)
from difflab.errors import DifflabError
from difflab.models import build_model, config_from_dict
from difflab.models.classifier import (
    CLASSIFIER_ARCH,
    CLASSIFIER_KIND,
    NoisyClassifier,
    classifier_config_from_dict,
)
from difflab.models.registry import ARCHITECTURES
from difflab.samplers import (
    SAMPLER_NAMES,
    Guidance,
    ddim_invert,
    ddim_sample,
    ddpm_sample,
    interpolate,
)
from difflab.samplers.common import Callback, DenoiserLike
from difflab.training.checkpoint import load_checkpoint, load_weights_strict, split_prefix


@dataclasses.dataclass
class DiffusionModel:
    """A network, the schedule it was trained with, and the checkpoint's description."""

    net: torch.nn.Module
    schedule: NoiseSchedule
    meta: dict[str, Any]

    @property
    def image_shape(self) -> tuple[int, int, int]:
        data = self.meta["data"]
        return (data["channels"], data["image_size"], data["image_size"])

    @property
    def num_classes(self) -> int:
        return int(getattr(self.net.config, "num_classes", 0))

    def target_classes(self, guidance: Guidance | None) -> int:
        """How many classes a run can ask for: the model's own when it is class-conditional,
        else those of the guiding classifier (0: no labels)."""
        classifier = guidance.classifier if guidance is not None else None
        return self.num_classes or (classifier.config.num_classes if classifier else 0)

    def denoiser(self, clip_x0: bool = False) -> Denoiser | ClippedDenoiser:
        denoiser = Denoiser(self.net, self.schedule)
        return ClippedDenoiser(denoiser) if clip_x0 else denoiser

    def timesteps(self, steps: int, spacing: str = "uniform") -> torch.Tensor:
        return timestep_sequence(self.schedule.num_timesteps, steps, spacing)

    def noise(self, n: int, seed: int) -> torch.Tensor:
        """(n, C, H, W) standard normal x_T from a seeded CPU generator."""
        noise = torch.randn(n, *self.image_shape, generator=torch.Generator().manual_seed(seed))
        return noise.to(
            self.device
        )  # drawn on the CPU so a seed gives the same images on any device

    @property
    def device(self) -> torch.device:
        return next(self.net.parameters()).device

    def conditioning(
        self, labels: torch.Tensor | None, *, targets_only: bool = False
    ) -> Conditioning:
        """``Conditioning(labels=...)`` for this model, with the labels checked.

        ``targets_only``: the labels are only the targets of classifier guidance, so an
        unconditional model accepts them (it ignores them).
        """
        if labels is None:
            return Conditioning()
        labels = labels.to(self.device)
        if not self.num_classes:
            if targets_only:
                return Conditioning(labels=labels)
            raise DifflabError("this model is unconditional; drop --label/--labels.")
        if bool(((labels < 0) | (labels >= self.num_classes)).any()):
            raise DifflabError(f"labels must lie in 0..{self.num_classes - 1} for this model.")
        return Conditioning(labels=labels)

    def check_guidance(self, guidance: Guidance, labels: torch.Tensor | None) -> None:
        """A :class:`DifflabError` if ``guidance`` cannot run on this model with ``labels``."""
        if guidance.guidance_scale is not None and not self.num_classes:
            raise DifflabError(
                "classifier-free guidance needs a class-conditional model trained with label "
                "dropout (train.label_dropout > 0); this model is unconditional."
            )
        trained = self.meta.get("experiment", {}).get("train", {})
        if guidance.guidance_scale is not None and trained.get("label_dropout", 1) == 0:
            raise DifflabError(
                "classifier-free guidance needs a model trained with label dropout, but this one "
                "had train.label_dropout = 0, so its 'no label' branch is untrained."
            )
        if labels is None and (
            guidance.classifier is not None or guidance.guidance_scale is not None
        ):
            raise DifflabError(
                "guidance needs target labels, one per sample (--label or --labels)."
            )
        if not isinstance(guidance.classifier, NoisyClassifier) or labels is None:
            return  # any other classifier is checked by the wrappers at the first step
        config = guidance.classifier.config
        channels, size, _ = self.image_shape
        if (config.in_channels, config.image_size) != (channels, size):
            raise DifflabError(
                f"the classifier takes {config.in_channels}×{config.image_size}×"
                f"{config.image_size} images but this model makes {channels}×{size}×{size} ones; "
                "use a classifier trained on the model's data."
            )
        if bool(((labels < 0) | (labels >= config.num_classes)).any()):
            raise DifflabError(
                f"labels must lie in 0..{config.num_classes - 1} for the classifier's "
                f"{config.num_classes} classes."
            )

    def guided_denoiser(
        self,
        guidance: Guidance | None,
        *,
        sampler: str,
        timesteps: torch.Tensor,
        variance: str = "posterior",
        clip_x0: bool = False,
    ) -> DenoiserLike:
        """The Denoiser (clipped if asked), wrapped by ``guidance`` for a run of ``sampler``."""
        denoiser = self.denoiser(clip_x0)
        if guidance is None:
            return denoiser
        return guidance.wrap(denoiser, sampler=sampler, timesteps=timesteps, variance=variance)

    @torch.no_grad()
    def sample(
        self,
        n: int,
        *,
        sampler: str = "ddim",
        steps: int = 50,
        eta: float = 0.0,
        sigma_hat: bool = False,
        spacing: str = "uniform",
        seed: int = 0,
        labels: torch.Tensor | None = None,
        clip_x0: bool = False,
        callback: Callback | None = None,
        guidance: Guidance | None = None,
    ) -> torch.Tensor:
        """(n, C, H, W) samples in [-1, 1]-ish (clamp for display). ``sampler`` is "ddim" or "ddpm".

        ``labels`` (n,) are the classes of a class-conditional model and the targets of
        ``guidance`` (classifier guidance: Algorithm 1 with "ddpm", Algorithm 2 with "ddim";
        classifier-free guidance: class-conditional models only).
        """
        if sampler not in SAMPLER_NAMES:
            raise DifflabError(
                f"unknown sampler {sampler!r}; choose one of {', '.join(SAMPLER_NAMES)}."
            )
        if eta < 0:
            raise DifflabError(f"eta must be >= 0, got {eta}.")
        x_T = self.noise(n, seed)
        generator = torch.Generator().manual_seed(seed + 1)
        if guidance is not None:
            self.check_guidance(guidance, labels)
        targets_only = guidance is not None and guidance.classifier is not None
        cond = self.conditioning(labels, targets_only=targets_only)
        timesteps = self.timesteps(steps, spacing)
        variance = "beta" if sigma_hat else "posterior"
        denoiser = self.guided_denoiser(
            guidance, sampler=sampler, timesteps=timesteps, variance=variance, clip_x0=clip_x0
        )
        if sampler == "ddpm":
            return ddpm_sample(
                denoiser,
                x_T,
                timesteps,
                cond,
                variance=variance,
                generator=generator,
                callback=callback,
            )
        return ddim_sample(
            denoiser,
            x_T,
            timesteps,
            cond,
            eta=eta,
            sigma_hat=sigma_hat,
            generator=generator,
            callback=callback,
        )

    @torch.no_grad()
    def invert(
        self,
        x0: torch.Tensor,
        steps: int,
        spacing: str = "uniform",
        labels: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """DDIM inversion x0 (B, C, H, W) -> x_T."""
        return ddim_invert(
            self.denoiser(), x0, self.timesteps(steps, spacing), self.conditioning(labels)
        )

    @torch.no_grad()
    def reconstruct(
        self,
        x_T: torch.Tensor,
        steps: int,
        spacing: str = "uniform",
        labels: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Deterministic DDIM decoding of x_T (the inverse of :meth:`invert`)."""
        return ddim_sample(
            self.denoiser(), x_T, self.timesteps(steps, spacing), self.conditioning(labels), eta=0.0
        )

    @torch.no_grad()
    def interpolate(
        self,
        seed_a: int,
        seed_b: int,
        num_points: int,
        steps: int,
        spacing: str = "uniform",
        label: int | None = None,
    ) -> torch.Tensor:
        """Decode the slerp path between the noises of two seeds: (num_points, C, H, W)."""
        labels = None if label is None else torch.tensor([label])
        return interpolate(
            self.denoiser(),
            self.noise(1, seed_a),
            self.noise(1, seed_b),
            num_points,
            self.timesteps(steps, spacing),
            self.conditioning(labels),
        )


def load_diffusion_model(path: str | Path, device: str | torch.device = "cpu") -> DiffusionModel:
    """Load a ``kind: diffusion`` checkpoint (the EMA weights of a run, or a file from weights/)."""
    path = Path(path)
    tensors, meta = load_checkpoint(path, kind="diffusion")
    for key in ("arch", "model", "diffusion", "data"):
        if key not in meta:
            raise DifflabError(
                f"{path} lacks the {key!r} entry of a diffusion checkpoint; re-export it with difflab."
            )
    if meta["arch"] not in ARCHITECTURES:
        raise DifflabError(
            f"{path} holds a model of unknown architecture {meta['arch']!r}; difflab builds "
            f"{', '.join(ARCHITECTURES)}: check that the file was written by this version of difflab."
        )
    net = build_model(meta["arch"], config_from_dict(meta["arch"], meta["model"]))
    weights = split_prefix(tensors, "ema") or split_prefix(tensors, "model")
    load_weights_strict(net, weights, path)
    diffusion = meta["diffusion"]
    schedule = NoiseSchedule.from_name(
        diffusion["schedule"],
        diffusion["num_timesteps"],
        diffusion.get("beta_start"),
        diffusion.get("beta_end"),
    )
    return DiffusionModel(net.to(device).eval(), schedule, meta)


def load_noisy_classifier(
    path: str | Path,
    device: str | torch.device = "cpu",
    *,
    model: DiffusionModel | None = None,
) -> NoisyClassifier:
    """Load a ``kind: classifier`` checkpoint (from ``difflab train`` of a classifier config).

    With ``model``, also check that the classifier fits it: same image channels and size, and
    trained on the noise of the same schedule (the same alpha_bar for every t).

    Returns:
        The classifier in eval mode with frozen weights (guidance differentiates only x_t).
    """
    path = Path(path)
    tensors, meta = load_checkpoint(path)
    if meta.get("kind") != CLASSIFIER_KIND:
        raise DifflabError(
            f"{path} holds a {meta.get('kind')!r} checkpoint, not a noisy classifier; give the "
            "model.safetensors of `difflab train configs/mnist_classifier.yaml`."
        )
    for key in ("arch", "model", "diffusion", "data"):
        if key not in meta:
            raise DifflabError(
                f"{path} lacks the {key!r} entry of a classifier checkpoint; retrain it with difflab."
            )
    if meta["arch"] != CLASSIFIER_ARCH:
        raise DifflabError(
            f"{path} is a classifier of unknown architecture {meta['arch']!r}; expected "
            f"{CLASSIFIER_ARCH!r}."
        )
    net = NoisyClassifier(classifier_config_from_dict(meta["model"], f"{path}: model"))
    load_weights_strict(net, split_prefix(tensors, "model"), path)
    net = net.to(device).eval().requires_grad_(False)
    net.meta = meta
    if model is not None:
        _check_classifier_fits(path, net, meta, model)
    return net


def _check_classifier_fits(
    path: Path, net: NoisyClassifier, meta: dict[str, Any], model: DiffusionModel
) -> None:
    channels, size, _ = model.image_shape
    config = net.config
    if (config.in_channels, config.image_size) != (channels, size):
        raise DifflabError(
            f"{path} was trained on {config.in_channels}×{config.image_size}×{config.image_size} "
            f"images but the model makes {channels}×{size}×{size} ones; train a classifier on the "
            "model's data (same data section)."
        )
    diffusion = meta["diffusion"]
    schedule = NoiseSchedule.from_name(
        diffusion["schedule"],
        diffusion["num_timesteps"],
        diffusion.get("beta_start"),
        diffusion.get("beta_end"),
    )
    same = schedule.num_timesteps == model.schedule.num_timesteps and torch.allclose(
        schedule.alpha_bar, model.schedule.alpha_bar
    )
    if not same:
        mine = model.meta.get("diffusion", {})
        raise DifflabError(
            f"{path} was trained on the noise of a {diffusion['schedule']} schedule with T = "
            f"{diffusion['num_timesteps']} but the model uses {mine.get('schedule')} with T = "
            f"{model.schedule.num_timesteps}; train the classifier with the model's diffusion section."
        )
