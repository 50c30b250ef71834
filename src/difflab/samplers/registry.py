"""The sampler registry: a name -> the sampling function and what it supports.

A sampler stays a short pure function over a Denoiser (its own module, the paper's algorithm line
by line); this file adapts each one to one call shape, :data:`SamplerRun`, and says what it
supports, so pipelines, the CLI and benchmarks never compare sampler names. Adding a sampler is its
module plus one :class:`SamplerSpec` line in :data:`SAMPLERS`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

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


def _run_ddim(
    denoiser: DenoiserLike,
    x_T: torch.Tensor,
    timesteps: torch.Tensor,
    cond: Conditioning,
    options: SamplerOptions,
    generator: torch.Generator | None,
    callback: Callback | None,
) -> torch.Tensor:
    return ddim_sample(
        denoiser,
        x_T,
        timesteps,
        cond,
        eta=options.eta,
        sigma_hat=options.sigma_hat,
        generator=generator,
        callback=callback,
    )


def _run_ddpm(
    denoiser: DenoiserLike,
    x_T: torch.Tensor,
    timesteps: torch.Tensor,
    cond: Conditioning,
    options: SamplerOptions,
    generator: torch.Generator | None,
    callback: Callback | None,
) -> torch.Tensor:
    return ddpm_sample(
        denoiser,
        x_T,
        timesteps,
        cond,
        variance=options.ddpm_variance,
        generator=generator,
        callback=callback,
    )


def _run_dpm_solver(sde: bool) -> SamplerRun:
    def run(
        denoiser: DenoiserLike,
        x_T: torch.Tensor,
        timesteps: torch.Tensor,
        cond: Conditioning,
        options: SamplerOptions,
        generator: torch.Generator | None,
        callback: Callback | None,
    ) -> torch.Tensor:
        return dpm_solver_pp_2m_sample(
            denoiser, x_T, timesteps, cond, sde=sde, generator=generator, callback=callback
        )

    return run


def _run_euler_ancestral(
    denoiser: DenoiserLike,
    x_T: torch.Tensor,
    timesteps: torch.Tensor,
    cond: Conditioning,
    options: SamplerOptions,
    generator: torch.Generator | None,
    callback: Callback | None,
) -> torch.Tensor:
    return euler_ancestral_sample(
        denoiser, x_T, timesteps, cond, generator=generator, callback=callback
    )


def _deterministic(sample: Callable[..., torch.Tensor]) -> SamplerRun:
    """A sampler that reads no options and draws no noise, in the common call shape."""

    def run(
        denoiser: DenoiserLike,
        x_T: torch.Tensor,
        timesteps: torch.Tensor,
        cond: Conditioning,
        options: SamplerOptions,
        generator: torch.Generator | None,
        callback: Callback | None,
    ) -> torch.Tensor:
        return sample(denoiser, x_T, timesteps, cond, callback=callback)

    return run


SAMPLERS: dict[str, SamplerSpec] = {
    spec.name: spec
    for spec in (
        SamplerSpec("ddim", _run_ddim, True, False, "DDIM (Song et al. 2021), any eta >= 0"),
        SamplerSpec("ddpm", _run_ddpm, False, True, "DDPM ancestral sampling (Ho et al. 2020)"),
        SamplerSpec(
            "dpm++2m",
            _run_dpm_solver(False),
            False,
            False,
            "DPM-Solver++(2M) (Lu et al. 2022)",
            spacing="karras",
        ),
        SamplerSpec(
            "dpm++2m-sde",
            _run_dpm_solver(True),
            False,
            False,
            "SDE-DPM-Solver++(2M), stochastic",
            spacing="karras",
        ),
        SamplerSpec(
            "euler",
            _deterministic(euler_sample),
            False,
            False,
            "Euler, EDM (Karras et al. 2022)",
            spacing="karras",
        ),
        SamplerSpec(
            "euler-a",
            _run_euler_ancestral,
            False,
            False,
            "Euler ancestral, EDM formulation",
            spacing="karras",
        ),
        SamplerSpec(
            "heun",
            _deterministic(heun_sample),
            False,
            False,
            "Heun 2nd order, EDM (2 S - 1 NFE)",
            nfe=heun_nfe,
            spacing="karras",
        ),
        SamplerSpec(
            "unipc",
            _deterministic(unipc_sample),
            False,
            False,
            "UniPC-2 bh2 predictor-corrector (Zhao et al. 2023)",
            spacing="karras",
        ),
    )
}
SAMPLER_NAMES: tuple[str, ...] = tuple(SAMPLERS)


def get_sampler(name: str) -> SamplerSpec:
    """The registered sampler ``name``, or a DifflabError listing the names."""
    try:
        return SAMPLERS[name]
    except KeyError:
        raise DifflabError(
            f"unknown sampler {name!r}; choose one of {', '.join(SAMPLER_NAMES)}."
        ) from None
