"""The Denoiser: any network's output turned into both ``eps`` and ``x0``.

With ``a = alpha_bar_t`` and ``x_t = sqrt(a) x0 + sqrt(1 - a) eps`` (DDIM eq. 1), a network may
predict

* ``eps``: then ``x0 = (x_t - sqrt(1 - a) eps) / sqrt(a)`` (DDIM eq. 9's first term);
* ``x0``:  then ``eps = (x_t - sqrt(a) x0) / sqrt(1 - a)``;
* ``v = sqrt(a) eps - sqrt(1 - a) x0`` (Salimans & Ho 2022): then ``x0 = sqrt(a) x_t - sqrt(1 - a) v``
  and ``eps = sqrt(1 - a) x_t + sqrt(a) v``.

Samplers and guidance only ever see a Denoiser, never the network.

A network with ``learn_sigma`` (Improved DDPM's learned variances) is called with
``with_variance=True`` and returns twice the channels: the prediction, then the raw variance values
``v``; the Denoiser splits them and hands the fraction ``(v + 1) / 2`` of eq. 15 on in
``Prediction.variance_fraction``, which only the DDPM sampler (and Algorithm 1 guidance) read.
"""

from __future__ import annotations

from typing import NamedTuple, Protocol

import torch

from difflab.diffusion.conditioning import Conditioning
from difflab.diffusion.schedule import NoiseSchedule
from difflab.errors import DifflabError

PREDICTION_TYPES: tuple[str, ...] = ("eps", "x0", "v")


class Network(Protocol):
    """The backbone contract: ``net(x_t, t, cond) -> (B, C, H, W)`` plus what it predicts and
    which :class:`Conditioning` fields it reads (the others it ignores)."""

    prediction: str
    conditioning_fields: tuple[str, ...]

    def __call__(self, x_t: torch.Tensor, t: torch.Tensor, cond: Conditioning) -> torch.Tensor: ...


class Prediction(NamedTuple):
    eps: torch.Tensor  # (B, C, H, W)
    x0: torch.Tensor  # (B, C, H, W)
    variance_fraction: torch.Tensor | None = None  # (B, C, H, W) eq. 15's f, learned-Σ nets only


def learns_variance(net: object) -> bool:
    """Whether ``net`` outputs learned variances (its ``learn_sigma`` attribute is true)."""
    return bool(getattr(net, "learn_sigma", False))


def variance_fraction(values: torch.Tensor) -> torch.Tensor:
    """The raw variance output ``v`` in [-1, 1] as Improved DDPM eq. 15's fraction ``(v + 1) / 2``."""
    return (values + 1) / 2


def split_variance(output: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, 2C, H, W) -> (prediction (B, C, H, W), raw variance values v (B, C, H, W))."""
    prediction, values = output.chunk(2, dim=1)
    return prediction, values


def prediction_to_eps_x0(
    output: torch.Tensor, prediction: str, x_t: torch.Tensor, alpha_bar: torch.Tensor
) -> Prediction:
    """Convert a network output of type ``prediction`` to (eps, x0); ``alpha_bar`` broadcasts."""
    signal, noise = alpha_bar.sqrt(), (1 - alpha_bar).sqrt()
    if prediction == "eps":
        return Prediction(output, (x_t - noise * output) / signal)
    if prediction == "x0":
        return Prediction((x_t - signal * output) / noise, output)
    if prediction == "v":
        return Prediction(noise * x_t + signal * output, signal * x_t - noise * output)
    raise DifflabError(
        f"unknown prediction type {prediction!r}; choose one of {', '.join(PREDICTION_TYPES)}."
    )


def eps_from_x0(x_t: torch.Tensor, x0: torch.Tensor, alpha_bar: torch.Tensor) -> torch.Tensor:
    """The noise consistent with ``x_t`` and a (modified) ``x0``."""
    return (x_t - alpha_bar.sqrt() * x0) / (1 - alpha_bar).sqrt()


class Denoiser:
    """Wraps a network and its schedule; ``denoiser(x_t, t, cond)`` returns ``Prediction(eps, x0)``.

    Args:
        net: any module following the network contract (``net.prediction`` in eps / x0 / v).
        schedule: the schedule the network was trained with.
    """

    def __init__(self, net: Network, schedule: NoiseSchedule) -> None:
        if getattr(net, "prediction", None) not in PREDICTION_TYPES:
            raise DifflabError(
                f"the network must declare .prediction as one of {', '.join(PREDICTION_TYPES)}."
            )
        self.net = net
        self.schedule = schedule

    def __call__(
        self, x_t: torch.Tensor, t: torch.Tensor, cond: Conditioning | None = None
    ) -> Prediction:
        t = torch.as_tensor(t, device=x_t.device).long().expand(x_t.shape[0])  # (B,)
        cond = cond if cond is not None else Conditioning()
        alpha_bar = self.schedule.alpha_bar_at(t, x_t)  # (B, 1, 1, 1)
        if not learns_variance(self.net):
            output = self.net(x_t, t, cond)
            return prediction_to_eps_x0(output.to(x_t.dtype), self.net.prediction, x_t, alpha_bar)
        output, values = split_variance(self.net(x_t, t, cond, with_variance=True).to(x_t.dtype))
        pred = prediction_to_eps_x0(output, self.net.prediction, x_t, alpha_bar)
        return pred._replace(variance_fraction=variance_fraction(values))
