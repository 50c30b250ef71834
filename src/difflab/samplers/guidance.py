"""Guidance as Denoiser wrappers: classifier guidance and classifier-free guidance.

Every wrapper is called like a :class:`~difflab.diffusion.Denoiser`, ``(x_t, t, cond) ->
Prediction(eps, x0)``, and has its ``.schedule``, so wrappers stack and every sampler runs them
without knowing they are there. With ``a = alpha_bar_t``, ``y`` the target labels and
``g = ∇_{x_t} log p_φ(y | x_t)`` the gradient of a noisy classifier's log-probability:

* :class:`ClassifierGuidance` — Dhariwal & Nichol 2021, Algorithm 2 (DDIM and any sampler that
  reads eps)::

      eps_hat = eps_θ(x_t) - s · sqrt(1 - a) · g            x0_hat = x0 + s · (1 - a) / sqrt(a) · g

  (``x0_hat`` is the x0 consistent with ``eps_hat``: ``x_t = sqrt(a) x0_hat + sqrt(1 - a) eps_hat``.)
  It is eps_θ of the "conditional score" ``∇ log p(x_t) + s ∇ log p(y | x_t)`` (their sec. 4.2).

* :class:`AncestralClassifierGuidance` — Algorithm 1 (DDPM ancestral sampling)::

      x_{t-1} ~ N(μ + s · Σ · g, Σ)

  with μ, Σ the mean and variance of the step p_θ(x_{t-1} | x_t). The shift is applied through
  x0 (see the class), so :func:`~difflab.samplers.ddpm_sample` runs it unchanged; with a learned
  Σ (Improved DDPM eq. 15) the shift uses that Σ, per pixel.

* :class:`ClassifierFreeGuidance` — Ho & Salimans 2022, eq. 6, written with the weight ``w`` on
  the conditional branch::

      eps_hat = eps(x_t, ∅) + w · (eps(x_t, y) - eps(x_t, ∅))

  so ``w = 0`` is the unconditional model, ``w = 1`` the conditional one, and the paper's
  guidance strength is ``w - 1`` (their ``(1 + w) eps_c - w eps_u``). Both branches run in one
  batched forward pass.

Target labels are ``cond.labels`` (B,), one per sample: the same Conditioning a class-conditional
network reads, and one an unconditional network ignores. A sample labelled ``NULL_LABEL`` is not
guided by a classifier. :class:`~difflab.samplers.stack.Guidance` says which of these a sampling
run applies and stacks them in the fixed order.
"""

from __future__ import annotations

import math
from typing import Protocol

import torch

from difflab.diffusion.conditioning import NULL_LABEL, Conditioning
from difflab.diffusion.denoiser import Prediction, eps_from_x0
from difflab.diffusion.schedule import NoiseSchedule
from difflab.diffusion.vlb import learned_log_variance, step_log_variances
from difflab.errors import DifflabError
from difflab.samplers.common import DenoiserLike, transitions
from difflab.samplers.ddpm import VARIANCES


class NoisyClassifierLike(Protocol):
    """``classifier(x_t (B, C, H, W), t (B,)) -> (B, K)`` logits of p_φ(y | x_t)."""

    def __call__(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor: ...


def checked_scale(name: str, value: float) -> float:
    """``value`` as a float if it is finite and >= 0, else a :class:`DifflabError` naming it."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise DifflabError(f"{name} must be a number >= 0, got {value!r}.")
    if not math.isfinite(value) or value < 0:
        raise DifflabError(f"{name} must be a finite number >= 0, got {value}.")
    return float(value)


def _batch_t(t: torch.Tensor | int, x_t: torch.Tensor) -> torch.Tensor:
    """(B,) int64 timesteps on ``x_t``'s device from a scalar or a (B,) tensor."""
    return torch.as_tensor(t, device=x_t.device).long().expand(x_t.shape[0])


def target_labels(cond: Conditioning | None, x_t: torch.Tensor, who: str) -> torch.Tensor:
    """``cond.labels`` (B,) int64 on ``x_t``'s device, or a DifflabError when there are none."""
    if cond is None or cond.labels is None:
        raise DifflabError(
            f"{who} needs target labels, one per sample; pass Conditioning(labels=...) "
            "(on the command line: --label or --labels)."
        )
    labels = cond.labels.to(x_t.device).long()
    if labels.shape != (x_t.shape[0],):
        raise DifflabError(
            f"{who}: {tuple(labels.shape)} labels for a batch of {x_t.shape[0]}; give one per sample."
        )
    return labels


def classifier_log_prob_grad(
    classifier: NoisyClassifierLike, x_t: torch.Tensor, t: torch.Tensor, labels: torch.Tensor
) -> torch.Tensor:
    """``∇_{x_t} log p_φ(y | x_t)`` (B, C, H, W): log-softmax of the logits at each sample's label.

    Runs with gradients enabled even inside ``torch.no_grad()`` or ``torch.inference_mode()``
    (the samplers' context); only ``x_t`` requires a gradient, not the classifier's weights.
    Samples labelled ``NULL_LABEL`` get a zero gradient. The classifier must treat samples
    independently (no batch norm in training mode), so the gradient of the summed log-probability
    is each sample's own gradient.

    Raises:
        DifflabError: a label outside ``0 .. K-1`` (other than ``NULL_LABEL``) or logits that are
            not (B, K).
    """
    with torch.inference_mode(False), torch.enable_grad():
        # clones are ordinary tensors even when x_t, t, labels were made under inference mode
        x = x_t.detach().clone().requires_grad_(True)
        labels = labels.detach().clone()
        guided = labels != NULL_LABEL  # (B,)
        logits = classifier(x, t.detach().clone())  # (B, K)
        if logits.ndim != 2 or logits.shape[0] != x.shape[0]:
            raise DifflabError(
                f"the classifier returned shape {tuple(logits.shape)}; it must return (B, K) logits."
            )
        num_classes = logits.shape[1]
        if bool(((labels < NULL_LABEL) | (labels >= num_classes)).any()):
            bad = labels[(labels < NULL_LABEL) | (labels >= num_classes)][0].item()
            raise DifflabError(
                f"target label {bad} is out of range for a classifier of {num_classes} classes "
                f"(0..{num_classes - 1})."
            )
        if logits.dtype not in (torch.float32, torch.float64):
            logits = logits.float()  # log-softmax in at least fp32
        log_probs = torch.log_softmax(logits, dim=1)  # (B, K)
        chosen = log_probs.gather(1, labels.clamp(min=0)[:, None]).squeeze(1)  # (B,)
        (grad,) = torch.autograd.grad(torch.where(guided, chosen, 0.0).sum(), x)
    return grad.detach().to(x_t.dtype)  # (B, C, H, W)


class ClassifierGuidance:
    """Classifier guidance for eps-based samplers (Dhariwal & Nichol 2021, Algorithm 2).

    ``eps_hat = eps - s · sqrt(1 - alpha_bar_t) · ∇_{x_t} log p_φ(y | x_t)``, and
    ``x0_hat = x0 + s · (1 - alpha_bar_t) / sqrt(alpha_bar_t) · ∇ log p_φ(y | x_t)``, the x0 that
    goes with ``eps_hat`` (substitute eps_hat into ``x0 = (x_t - sqrt(1 - a) eps) / sqrt(a)``).
    Works with DDIM at any η and S, and with any backbone and prediction type.

    Args:
        inner: the Denoiser (or wrapper) to guide.
        classifier: ``classifier(x_t, t) -> (B, K)`` logits, trained on x_t of ``inner.schedule``.
        classifier_scale: s ≥ 0; s = 0 returns ``inner``'s prediction unchanged.
    """

    def __init__(
        self, inner: DenoiserLike, classifier: NoisyClassifierLike, classifier_scale: float
    ) -> None:
        self.inner = inner
        self.schedule: NoiseSchedule = inner.schedule
        self.classifier = classifier
        self.classifier_scale = checked_scale("classifier_scale", classifier_scale)

    def __call__(
        self, x_t: torch.Tensor, t: torch.Tensor, cond: Conditioning | None = None
    ) -> Prediction:
        labels = target_labels(cond, x_t, "classifier guidance")
        pred = self.inner(x_t, t, cond)
        if self.classifier_scale == 0:
            return pred
        t = _batch_t(t, x_t)  # (B,)
        alpha_bar = self.schedule.alpha_bar_at(t, x_t)  # (B, 1, 1, 1)
        grad = classifier_log_prob_grad(self.classifier, x_t, t, labels)  # (B, C, H, W)
        s = self.classifier_scale
        eps = pred.eps - s * (1 - alpha_bar).sqrt() * grad
        x0 = pred.x0 + s * (1 - alpha_bar) / alpha_bar.sqrt() * grad
        return pred._replace(eps=eps, x0=x0)


class AncestralClassifierGuidance:
    """Classifier guidance for DDPM ancestral sampling (Dhariwal & Nichol 2021, Algorithm 1).

    Algorithm 1 samples ``x_{t-1} ~ N(μ + s Σ g, Σ)`` with ``g = ∇_{x_t} log p_φ(y | x_t)``.
    :func:`~difflab.samplers.ddpm_sample` computes the mean from x0 (DDPM eq. 7),
    ``μ = c0 · x0 + ct · x_t`` with ``c0 = sqrt(a_prev) β_t / (1 - a_t)`` and
    ``β_t = 1 - a_t / a_prev``, so returning

        ``x0_hat = x0 + s · Σ / c0 · g``      (and eps_hat consistent with x0_hat)

    makes the sampler's mean exactly ``μ + s Σ g``. For the posterior variance
    ``Σ = β_t (1 - a_prev) / (1 - a_t)`` this is ``x0 + s (1 - a_prev) / sqrt(a_prev) · g``;
    for ``Σ = β_t`` it is ``x0 + s (1 - a_t) / sqrt(a_prev) · g``. The final step (to clean data)
    adds no noise, so its Σ is 0 and it is not shifted.

    Why a wrapper and not a hook inside ``ddpm_sample``: the sampler stays the paper's algorithm
    line for line and never knows about guidance, and the shift stacks with other wrappers (clip
    x0 inside it, as guided-diffusion clips before shifting the mean). The price is that the
    wrapper must know the step's variance, i.e. the previous timestep of each t: pass the same
    ``timesteps`` and ``variance`` as to ``ddpm_sample``. DDIM with η = 1 (not σ̂) has the same
    mean as a function of (x_t, x0), so it gets the same shift; for DDIM at other η use
    :class:`ClassifierGuidance` (Algorithm 2), as the paper does.

    Args:
        inner: the Denoiser (or wrapper) to guide.
        classifier: ``classifier(x_t, t) -> (B, K)`` logits.
        classifier_scale: s ≥ 0; s = 0 returns ``inner``'s prediction unchanged.
        timesteps: (S,) strictly decreasing, the sampler's sequence; default all T steps (as
            ``ddpm_sample``'s default).
        variance: ``"posterior"`` (β̃_t) or ``"beta"`` (β_t), as given to ``ddpm_sample``.
    """

    def __init__(
        self,
        inner: DenoiserLike,
        classifier: NoisyClassifierLike,
        classifier_scale: float,
        timesteps: torch.Tensor | None = None,
        variance: str = "posterior",
    ) -> None:
        if variance not in VARIANCES:
            raise DifflabError(
                f"unknown DDPM variance {variance!r}; choose one of {', '.join(VARIANCES)}."
            )
        self.inner = inner
        self.schedule: NoiseSchedule = inner.schedule
        self.classifier = classifier
        self.classifier_scale = checked_scale("classifier_scale", classifier_scale)
        self.variance = variance
        T = self.schedule.num_timesteps
        if timesteps is None:
            timesteps = torch.arange(T - 1, -1, -1)
        # previous[t] = the timestep the sampler moves to from t; -2 marks "not in the sequence"
        self._previous = torch.full((T,), -2, dtype=torch.long)
        for t, t_prev in transitions(timesteps):
            if not 0 <= t < T:
                raise DifflabError(f"timestep {t} is outside 0..{T - 1} of the model's schedule.")
            self._previous[t] = t_prev

    def step_variance_over_c0(
        self, t: torch.Tensor, like: torch.Tensor, fraction: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``Σ / c0`` of the step from each ``t`` (B,), shaped (B, 1, 1, 1) like ``like``, or
        (B, C, H, W) for a learned Σ (Improved DDPM eq. 15 with ``fraction``, as ddpm_sample)."""
        t_prev = self._previous[t.cpu()].to(t.device)  # (B,)
        if bool((t_prev == -2).any()):
            bad = t[t_prev == -2][0].item()
            raise DifflabError(
                f"Algorithm 1 guidance was built for another timestep sequence (t = {bad} is not "
                "in it); pass the sampler's timesteps."
            )
        a_t = self.schedule.alpha_bar_at(t, like)  # (B, 1, 1, 1)
        a_prev = self.schedule.alpha_bar_at(t_prev, like)
        if fraction is not None:
            c0 = a_prev.sqrt() * (1 - a_t / a_prev) / (1 - a_t)
            ratio = learned_log_variance(fraction, *step_log_variances(a_t, a_prev)).exp() / c0
        elif self.variance == "posterior":
            ratio = (1 - a_prev) / a_prev.sqrt()  # β̃ / c0
        else:
            ratio = (1 - a_t) / a_prev.sqrt()  # β / c0
        last = (t_prev < 0).reshape(-1, *([1] * (like.ndim - 1)))
        return torch.where(last, torch.zeros_like(ratio), ratio)

    def __call__(
        self, x_t: torch.Tensor, t: torch.Tensor, cond: Conditioning | None = None
    ) -> Prediction:
        labels = target_labels(cond, x_t, "classifier guidance")
        pred = self.inner(x_t, t, cond)
        if self.classifier_scale == 0:
            return pred
        t = _batch_t(t, x_t)  # (B,)
        grad = classifier_log_prob_grad(self.classifier, x_t, t, labels)  # (B, C, H, W)
        ratio = self.step_variance_over_c0(t, x_t, pred.variance_fraction)
        x0 = pred.x0 + self.classifier_scale * ratio * grad
        return pred._replace(eps=eps_from_x0(x_t, x0, self.schedule.alpha_bar_at(t, x_t)), x0=x0)


class ClassifierFreeGuidance:
    """Classifier-free guidance (Ho & Salimans 2022): one batched forward over (∅, y).

    ``eps_hat = eps(x_t, ∅) + w · (eps(x_t, y) - eps(x_t, ∅))``, computed as
    ``(1 - w) eps_u + w eps_c`` so that w = 0 and w = 1 are exact; x0 is combined with the same
    weights, which keeps it consistent with eps_hat (x0 is affine in eps at fixed x_t). The
    network must be conditional and trained with conditioning dropout (its "nothing" input, e.g.
    the "no label" entry or an all-false token mask, is what :meth:`Conditioning.dropped` asks
    for; fields that are never dropped, such as a control image, feed both branches). w = 0 and w = 1 need one branch only and run it
    alone. Ho & Salimans' guidance strength is ``w - 1``.

    Args:
        inner: the Denoiser (or wrapper) to guide; it receives a batch of 2B.
        guidance_scale: w ≥ 0.
    """

    def __init__(self, inner: DenoiserLike, guidance_scale: float) -> None:
        self.inner = inner
        self.schedule: NoiseSchedule = inner.schedule
        self.guidance_scale = checked_scale("guidance_scale", guidance_scale)

    def __call__(
        self, x_t: torch.Tensor, t: torch.Tensor, cond: Conditioning | None = None
    ) -> Prediction:
        if cond is None or cond.batch_size is None:
            raise DifflabError(
                "classifier-free guidance needs conditioning to drop (labels or tokens), one per "
                "sample; pass Conditioning(labels=...) (on the command line: --label or --labels)."
            )
        if cond.batch_size != x_t.shape[0]:
            raise DifflabError(
                f"classifier-free guidance: conditioning for {cond.batch_size} samples but a "
                f"batch of {x_t.shape[0]}; give one per sample."
            )
        w = self.guidance_scale
        if w == 1:
            return self.inner(x_t, t, cond)
        if w == 0:
            return self.inner(x_t, t, cond.dropped())
        t = _batch_t(t, x_t)  # (B,)
        both = self.inner(
            torch.cat([x_t, x_t]),  # (2B, C, H, W)
            torch.cat([t, t]),
            Conditioning.cat([cond.dropped(), cond]),
        )
        eps_uncond, eps_cond = both.eps.chunk(2)  # (B, C, H, W) each
        x0_uncond, x0_cond = both.x0.chunk(2)
        # a learned Σ comes from the conditional branch, as in DiT's sampling code
        fraction = None if both.variance_fraction is None else both.variance_fraction.chunk(2)[1]
        return Prediction(
            (1 - w) * eps_uncond + w * eps_cond, (1 - w) * x0_uncond + w * x0_cond, fraction
        )
