"""The sampler registry: a name -> the sampling function and what it supports.

A sampler stays a short pure function over a Denoiser (its own module, the paper's algorithm line
by line); this file adapts each one to one call shape, :data:`SamplerRun`, and says what it
supports, so pipelines, the CLI and benchmarks never compare sampler names. Adding a sampler is its
module plus one :class:`SamplerSpec` line in :data:`SAMPLERS`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from difflab.diffusion.conditioning import Conditioning
from difflab.errors import DifflabError
from difflab.samplers.common import Callback, DenoiserLike
from difflab.samplers.ddim import ddim_sample
from difflab.samplers.ddpm import ddpm_sample
from difflab.samplers.dpm_solver import dpm_solver_pp_2m_sample
from difflab.samplers.euler import euler_sample
from difflab.samplers.euler_ancestral import euler_ancestral_sample
from difflab.samplers.heun import heun_nfe, heun_sample
from difflab.samplers.unipc import unipc_sample


@dataclass(frozen=True)
class SamplerOptions:
    """The knobs a run may set; a sampler reads those it supports.

    Attributes:
        eta: DDIM's eta >= 0 (0 deterministic, 1 DDPM-like); samplers without it ignore it.
        sigma_hat: the larger variance: DDIM's sigma-hat, DDPM's beta_t instead of the posterior's
            beta-tilde.
    """

    eta: float = 0.0
    sigma_hat: bool = False

    @property
    def ddpm_variance(self) -> str:
        """``"beta"`` with ``sigma_hat``, else ``"posterior"`` (DDPM's two variance choices)."""
        return "beta" if self.sigma_hat else "posterior"


SamplerRun = Callable[
    [
        DenoiserLike,
        torch.Tensor,  # x_T (B, C, H, W)
        torch.Tensor,  # timesteps (S,) decreasing
        Conditioning,
        SamplerOptions,
        torch.Generator | None,
        Callback | None,
    ],
    torch.Tensor,
]


@dataclass(frozen=True)
class SamplerSpec:
    """A registered sampler.

    Attributes:
        name: the CLI and config name.
        run: the sampler in the common call shape.
        uses_eta: whether :attr:`SamplerOptions.eta` changes anything.
        ancestral: True for a DDPM-style ancestral sampler, whose classifier guidance is
            Dhariwal & Nichol's Algorithm 1 (a shift of the step's mean); False for samplers
            guided by Algorithm 2 (a modified eps).
        summary: one line for ``--help`` and ``difflab info``.
        nfe: network evaluations of a run over S timesteps (S for one-evaluation steps).
        spacing: the timestep spacing it is meant for (its paper's), the CLI's default for it:
            ``"uniform"`` for DDIM and DDPM, ``"karras"`` for DPM-Solver++ and the EDM samplers.
    """

    name: str
    run: SamplerRun
    uses_eta: bool
    ancestral: bool
    summary: str
    nfe: Callable[[int], int] = int
    spacing: str = "uniform"


def _adapted(
    sample: Callable[..., torch.Tensor],
    options_of: Callable[[SamplerOptions], dict[str, Any]] = lambda options: {},
    draws_noise: bool = False,
) -> SamplerRun:
    """``sample`` in the common call shape: the :class:`SamplerOptions` it reads
    (``options_of``) become keyword arguments, and a sampler that ``draws_noise`` gets the
    generator."""

    def run(
        denoiser: DenoiserLike,
        x_T: torch.Tensor,
        timesteps: torch.Tensor,
        cond: Conditioning,
        options: SamplerOptions,
        generator: torch.Generator | None,
        callback: Callback | None,
    ) -> torch.Tensor:
        extra = options_of(options)
        if draws_noise:
            extra["generator"] = generator
        return sample(denoiser, x_T, timesteps, cond, callback=callback, **extra)

    return run


SAMPLERS: dict[str, SamplerSpec] = {
    spec.name: spec
    for spec in (
        SamplerSpec(
            "ddim",
            _adapted(
                ddim_sample, lambda o: {"eta": o.eta, "sigma_hat": o.sigma_hat}, draws_noise=True
            ),
            True,
            False,
            "DDIM (Song et al. 2021), any eta >= 0",
        ),
        SamplerSpec(
            "ddpm",
            _adapted(ddpm_sample, lambda o: {"variance": o.ddpm_variance}, draws_noise=True),
            False,
            True,
            "DDPM ancestral sampling (Ho et al. 2020)",
        ),
        SamplerSpec(
            "dpm++2m",
            _adapted(functools.partial(dpm_solver_pp_2m_sample, sde=False), draws_noise=True),
            False,
            False,
            "DPM-Solver++(2M) (Lu et al. 2022)",
            spacing="karras",
        ),
        SamplerSpec(
            "dpm++2m-sde",
            _adapted(functools.partial(dpm_solver_pp_2m_sample, sde=True), draws_noise=True),
            False,
            False,
            "SDE-DPM-Solver++(2M), stochastic",
            spacing="karras",
        ),
        SamplerSpec(
            "euler",
            _adapted(euler_sample),
            False,
            False,
            "Euler, EDM (Karras et al. 2022)",
            spacing="karras",
        ),
        SamplerSpec(
            "euler-a",
            _adapted(euler_ancestral_sample, draws_noise=True),
            False,
            False,
            "Euler ancestral, EDM formulation",
            spacing="karras",
        ),
        SamplerSpec(
            "heun",
            _adapted(heun_sample),
            False,
            False,
            "Heun 2nd order, EDM (2 S - 1 NFE)",
            nfe=heun_nfe,
            spacing="karras",
        ),
        SamplerSpec(
            "unipc",
            _adapted(unipc_sample),
            False,
            False,
            "UniPC-2 bh2 predictor-corrector (Zhao et al. 2023)",
            spacing="karras",
        ),
    )
}
SAMPLER_NAMES: tuple[str, ...] = tuple(SAMPLERS)
DEFAULT_SAMPLER, DEFAULT_STEPS = "dpm++2m", 20
"""What ``generate()``, ``difflab sample`` and the web app run unless told otherwise: DPM-Solver++(2M)
at 20 steps beat DDIM at 50 on ``mnist_ddim`` (0.88x its FD) and came within 6 % of it on the
retrained ``mnist_fast`` and ``mnist_cond_fast``, with 2.5x fewer network evaluations
(``benchmarks/results/samplers*.md``). ``evaluate_pipeline`` and ``difflab eval`` keep DDIM-50, the
setting of the README's FD tables."""


def check_eta(spec: SamplerSpec, eta: float) -> None:
    """A DifflabError when ``eta`` > 0 would be ignored (only DDIM has an eta)."""
    if eta and not spec.uses_eta:
        raise DifflabError(
            f"eta = {eta:g} changes nothing with the {spec.name} sampler (eta is DDIM's noise "
            "level); choose the ddim sampler (--sampler ddim) or drop eta."
        )


def get_sampler(name: str) -> SamplerSpec:
    """The registered sampler ``name``, or a DifflabError listing the names."""
    try:
        return SAMPLERS[name]
    except KeyError:
        raise DifflabError(
            f"unknown sampler {name!r}; choose one of {', '.join(SAMPLER_NAMES)}."
        ) from None
