"""The ordered stack of Denoiser wrappers one sampling run applies.

The order is fixed and visible in :data:`WRAPPER_ORDER`, innermost first:

1. **classifier-free combine** (Ho & Salimans 2022): one batched forward over (nothing, y);
2. **x0 thresholding** (static clipping, or Imagen's dynamic thresholding): applied to the
   *combined* prediction, because the guided x0 is the one that leaves [-1, 1] at large w
   (as GLIDE, Imagen, DiT and diffusers do);
3. **classifier guidance** (Dhariwal & Nichol 2021): Algorithm 1 for ancestral samplers,
   Algorithm 2 otherwise; outermost, as guided-diffusion clips x0 before shifting the mean.

A sampler sees only the outermost wrapper.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from difflab.errors import DifflabError
from difflab.samplers.common import DenoiserLike
from difflab.samplers.guidance import (
    AncestralClassifierGuidance,
    ClassifierFreeGuidance,
    ClassifierGuidance,
    NoisyClassifierLike,
    checked_scale,
)
from difflab.samplers.registry import SamplerOptions, SamplerSpec
from difflab.samplers.thresholding import DEFAULT_PERCENTILE, DynamicThreshold, StaticThreshold

WRAPPER_ORDER: tuple[str, ...] = ("classifier-free", "threshold", "classifier")
"""The wrappers of a run, innermost first."""

THRESHOLDS: tuple[str, ...] = ("static", "dynamic")


@dataclass(frozen=True, eq=False)
class Guidance:
    """Which wrappers a sampling run applies; :meth:`wrap` stacks them in :data:`WRAPPER_ORDER`.

    Attributes:
        classifier: a noisy classifier ``(x_t, t) -> (B, K)`` logits, or None for no classifier
            guidance.
        classifier_scale: s >= 0 (used with a classifier).
        guidance_scale: classifier-free weight w >= 0, or None for no classifier-free guidance.
        threshold: ``"static"`` (clip x0 to [-1, 1]), ``"dynamic"`` (Imagen) or None.
        threshold_percentile: p of dynamic thresholding.
    """

    classifier: NoisyClassifierLike | None = None
    classifier_scale: float = 1.0
    guidance_scale: float | None = None
    threshold: str | None = None
    threshold_percentile: float = DEFAULT_PERCENTILE

    def __post_init__(self) -> None:
        checked_scale("classifier_scale", self.classifier_scale)
        if self.guidance_scale is not None:
            checked_scale("guidance_scale", self.guidance_scale)
        if self.threshold is not None and self.threshold not in THRESHOLDS:
            raise DifflabError(
                f"unknown thresholding {self.threshold!r}; choose one of {', '.join(THRESHOLDS)}."
            )
        p = self.threshold_percentile
        if not (isinstance(p, (int, float)) and math.isfinite(p) and 0 < p <= 1):
            raise DifflabError(f"the thresholding percentile must lie in (0, 1], got {p}.")

    @property
    def wrappers(self) -> tuple[str, ...]:
        """The names of the wrappers this run applies, innermost first."""
        applied = {
            "classifier-free": self.guidance_scale is not None,
            "threshold": self.threshold is not None,
            "classifier": self.classifier is not None,
        }
        return tuple(name for name in WRAPPER_ORDER if applied[name])

    @property
    def shifts_by_classifier(self) -> bool:
        """Whether a classifier's gradient moves the prediction (a classifier with s > 0)."""
        return self.classifier is not None and self.classifier_scale > 0

    @property
    def needs_labels(self) -> bool:
        """Whether the run needs target labels (classifier-free or classifier guidance)."""
        return self.classifier is not None or self.guidance_scale is not None

    def wrap(
        self,
        denoiser: DenoiserLike,
        sampler: SamplerSpec,
        timesteps: torch.Tensor,
        options: SamplerOptions | None = None,
    ) -> DenoiserLike:
        """``denoiser`` inside the wrappers of this run, for ``sampler`` over ``timesteps``.

        ``timesteps`` and ``options`` are the run's: Algorithm 1 shifts the mean of each step by
        its variance, so it must know the step's destination and variance choice.
        """
        options = options or SamplerOptions()
        for name in self.wrappers:
            if name == "classifier-free":
                assert self.guidance_scale is not None
                denoiser = ClassifierFreeGuidance(denoiser, self.guidance_scale)
            elif name == "threshold" and self.threshold == "static":
                denoiser = StaticThreshold(denoiser)
            elif name == "threshold":
                denoiser = DynamicThreshold(denoiser, self.threshold_percentile)
            elif sampler.ancestral:
                assert self.classifier is not None
                denoiser = AncestralClassifierGuidance(
                    denoiser,
                    self.classifier,
                    self.classifier_scale,
                    timesteps,
                    options.ddpm_variance,
                )
            else:
                assert self.classifier is not None
                denoiser = ClassifierGuidance(denoiser, self.classifier, self.classifier_scale)
        return denoiser

    def describe(self) -> str:
        """``"guidance scale 3, dynamic thresholding p=0.995, classifier scale 2"`` or ``"no guidance"``."""
        parts = []
        if self.guidance_scale is not None:
            parts.append(f"guidance scale {self.guidance_scale:g}")
        if self.threshold == "static":
            parts.append("x0 clipped")
        elif self.threshold == "dynamic":
            parts.append(f"dynamic thresholding p={self.threshold_percentile:g}")
        if self.classifier is not None:
            parts.append(f"classifier scale {self.classifier_scale:g}")
        return ", ".join(parts) or "no guidance"
