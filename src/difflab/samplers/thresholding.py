"""x0 thresholding as Denoiser wrappers: static clipping and Imagen's dynamic thresholding.

Both replace the predicted ``x0`` and recompute ``eps`` to match at the same ``x_t``
(``eps = (x_t - sqrt(a) x0) / sqrt(1 - a)``), so every sampler, which reads either, moves towards
the thresholded image. In a pipeline they sit after the classifier-free combine (the guided x0 is
what goes out of range at large w) and before classifier guidance (see
:mod:`difflab.samplers.stack`). They are not invertible: do not use them for DDIM inversion.

* :class:`StaticThreshold`: ``x0 <- clip(x0, -1, 1)`` (DDPM practice).
* :class:`DynamicThreshold`: Saharia et al. 2022 (Imagen), sec. 2.3: per sample,
  ``s = max(1, quantile(|x0|, p))`` and ``x0 <- clip(x0, -s, s) / s``. Saturated pixels are
  pushed inwards instead of being clipped to a flat +-1, which keeps detail at large guidance.
"""

from __future__ import annotations

import math

import torch

from difflab.diffusion.conditioning import Conditioning
from difflab.diffusion.denoiser import Prediction, eps_from_x0
from difflab.errors import DifflabError
from difflab.samplers.common import DenoiserLike

DEFAULT_PERCENTILE = 0.995
"""Imagen's percentile p for dynamic thresholding (their sec. 2.3 and appendix)."""


class _X0Threshold:
    """A wrapper that maps the inner prediction's x0 through :meth:`threshold`."""

    def __init__(self, inner: DenoiserLike) -> None:
        self.inner = inner
        self.schedule = inner.schedule

    def threshold(self, x0: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def __call__(
        self, x_t: torch.Tensor, t: torch.Tensor, cond: Conditioning | None = None
    ) -> Prediction:
        pred = self.inner(x_t, t, cond)
        x0 = self.threshold(pred.x0)  # (B, C, H, W)
        t = torch.as_tensor(t, device=x_t.device).long().expand(x_t.shape[0])  # (B,)
        return pred._replace(eps=eps_from_x0(x_t, x0, self.schedule.alpha_bar_at(t, x_t)), x0=x0)


class StaticThreshold(_X0Threshold):
    """``x0 <- clip(x0, -limit, limit)``, eps recomputed to match."""

    def __init__(self, inner: DenoiserLike, limit: float = 1.0) -> None:
        super().__init__(inner)
        if not (math.isfinite(limit) and limit > 0):
            raise DifflabError(f"the clipping limit must be a finite number > 0, got {limit}.")
        self.limit = float(limit)

    def threshold(self, x0: torch.Tensor) -> torch.Tensor:
        return x0.clamp(-self.limit, self.limit)


class DynamicThreshold(_X0Threshold):
    """Imagen's dynamic thresholding: ``s = max(1, quantile(|x0|, p))``, ``x0 <- clip(x0, -s, s) / s``.

    Args:
        inner: the Denoiser (or wrapper) whose x0 to threshold.
        percentile: p in (0, 1], taken over each sample's pixels (all channels).
    """

    def __init__(self, inner: DenoiserLike, percentile: float = DEFAULT_PERCENTILE) -> None:
        super().__init__(inner)
        if not (math.isfinite(percentile) and 0 < percentile <= 1):
            raise DifflabError(
                f"the dynamic-thresholding percentile must lie in (0, 1], got {percentile}."
            )
        self.percentile = float(percentile)

    def threshold(self, x0: torch.Tensor) -> torch.Tensor:
        flat = x0.abs().flatten(1)  # (B, C*H*W)
        if flat.dtype not in (torch.float32, torch.float64):
            flat = flat.float()  # quantile runs in float32 or float64 only
        s = torch.quantile(flat, self.percentile, dim=1).clamp(min=1).to(x0.dtype)  # (B,)
        s = s.reshape(-1, *([1] * (x0.ndim - 1)))  # (B, 1, 1, 1)
        return torch.maximum(torch.minimum(x0, s), -s) / s
