"""DPM-Solver++(2M) (+ SDE), Euler, Euler-ancestral and Heun against diffusers' schedulers.

Each oracle is driven by the same deterministic toy network on the same integer timesteps, with
the same noise for the stochastic ones (one draw per step from a generator seeded alike), and the
final samples must agree to 1e-5. The EDM schedulers of diffusers work in EDM's unscaled state
``x_hat = x_t / sqrt(a_t)``, so their x_T is ours divided by ``sqrt(a_{t_0})`` and their network
input is scaled back by ``scale_model_input``.
"""

import pytest
import torch
from diffusers import (
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    HeunDiscreteScheduler,
    UniPCMultistepScheduler,
)

from difflab.diffusion import Conditioning, Denoiser, NoiseSchedule, timestep_sequence
from difflab.samplers import (
    SAMPLERS,
    SamplerOptions,
    ddim_sample,
    dpm_solver_pp_2m_sample,
    euler_ancestral_sample,
    euler_sample,
    heun_sample,
    unipc_sample,
)
from difflab.samplers import heun as heun_module
from tests.helpers import GaussianOptimalEps, RandomLinearNet

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # inside diffusers
T = 1000
SCHEDULE = NoiseSchedule.from_name("linear", T)


class ToyEps(torch.nn.Module):
    """The exact eps of Gaussian data plus a fixed nonlinear, t-dependent perturbation: smooth
    like a trained network, but not linear in x_t (so a wrong multistep weight shows)."""

    prediction = "eps"

    def __init__(self) -> None:
        super().__init__()
        self.exact = GaussianOptimalEps(SCHEDULE)
        self.wobble = RandomLinearNet(seed=3)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        return self.exact(x_t, t, cond) + 0.1 * self.wobble(x_t, t, cond)


NET = ToyEps()
DENOISER = Denoiser(NET, SCHEDULE)


def x_T() -> torch.Tensor:
    return torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(0))  # (B, C, H, W)


def run_diffusers(scheduler, start: torch.Tensor, stochastic: bool = True) -> torch.Tensor:
    """The scheduler's loop as a diffusers pipeline writes it (set_timesteps already called)."""
    generator = torch.Generator().manual_seed(7)
    x = start
    for t in scheduler.timesteps:
        model_input = scheduler.scale_model_input(x, t)
        eps = NET(model_input, t.round().long().expand(x.shape[0]), Conditioning())
        noise = {"generator": generator} if stochastic else {}
        x = scheduler.step(eps, t, x, **noise).prev_sample
    return x


def diffusers_config() -> dict:
    return dict(num_train_timesteps=T, trained_betas=SCHEDULE.betas.tolist())


def edm_start(timesteps: torch.Tensor) -> torch.Tensor:
    """Our x_T in diffusers' EDM coordinates: x_T / sqrt(a_{t_0})."""
    return x_T() / SCHEDULE.alpha_bar[int(timesteps[0])].sqrt().float()


@pytest.mark.parametrize("sde", [False, True])
@pytest.mark.parametrize("steps,spacing", [(6, "uniform"), (16, "karras")])
def test_dpm_solver_pp_2m_matches_diffusers(sde, steps, spacing):
    """Fails if the 2M weights (1 + 1/2r, -1/2r) are swapped, if the first step is not first
    order, if the final step onto clean data is second order, or if the SDE's noise scale is off."""
    timesteps = timestep_sequence(T, steps, spacing, SCHEDULE)
    algorithm = "sde-dpmsolver++" if sde else "dpmsolver++"
    scheduler = DPMSolverMultistepScheduler(**diffusers_config(), algorithm_type=algorithm)
    scheduler.set_timesteps(timesteps=timesteps.tolist())
    theirs = run_diffusers(scheduler, x_T())
    ours = dpm_solver_pp_2m_sample(
        DENOISER, x_T(), timesteps, sde=sde, generator=torch.Generator().manual_seed(7)
    )
    assert (ours - theirs).abs().max() <= 1e-5


@pytest.mark.parametrize("steps,spacing", [(6, "linspace"), (12, "trailing")])
def test_unipc_matches_diffusers(steps, spacing):
    """Fails if the corrector's (rho_1, rho_c) solve, the predictor's 1/2 D1 or the lower-order
    first and last steps change. (UniPCMultistepScheduler takes no custom timesteps: ours run
    on its integer ones.)"""
    scheduler = UniPCMultistepScheduler(**diffusers_config(), timestep_spacing=spacing)
    scheduler.set_timesteps(steps)
    timesteps = scheduler.timesteps.long()
    theirs = run_diffusers(scheduler, x_T(), stochastic=False)
    assert (unipc_sample(DENOISER, x_T(), timesteps) - theirs).abs().max() <= 1e-5


@pytest.mark.parametrize("spacing", ["uniform", "karras"])
def test_euler_matches_diffusers_and_is_ddim(spacing):
    """Fails if the step uses sigma_{i+1} / sigma_i the wrong way round or skips the VP scaling."""
    timesteps = timestep_sequence(T, 8, spacing, SCHEDULE)
    scheduler = EulerDiscreteScheduler(**diffusers_config())
    scheduler.set_timesteps(timesteps=timesteps.tolist())
    ours = euler_sample(DENOISER, x_T(), timesteps)
    assert (ours - run_diffusers(scheduler, edm_start(timesteps))).abs().max() <= 1e-5
    assert (ours - ddim_sample(DENOISER, x_T(), timesteps)).abs().max() <= 1e-5


def test_euler_ancestral_matches_diffusers_and_is_ddim_eta_one():
    """Fails if sigma_up / sigma_down are exchanged or noise is added on the last step."""
    scheduler = EulerAncestralDiscreteScheduler(**diffusers_config(), timestep_spacing="trailing")
    scheduler.set_timesteps(8)
    timesteps = scheduler.timesteps.round().long()
    ours = euler_ancestral_sample(
        DENOISER, x_T(), timesteps, generator=torch.Generator().manual_seed(7)
    )
    assert (ours - run_diffusers(scheduler, edm_start(timesteps))).abs().max() <= 1e-5
    ddim = ddim_sample(
        DENOISER, x_T(), timesteps, eta=1.0, generator=torch.Generator().manual_seed(7)
    )
    assert (ours - ddim).abs().max() <= 1e-5


@pytest.mark.parametrize("spacing", ["uniform", "karras"])
def test_heun_matches_diffusers(spacing):
    """Fails if the correction averages with the wrong slope or runs on the last step."""
    timesteps = timestep_sequence(T, 6, spacing, SCHEDULE)
    scheduler = HeunDiscreteScheduler(**diffusers_config())
    scheduler.set_timesteps(timesteps=timesteps.tolist())
    ours = heun_sample(DENOISER, x_T(), timesteps)
    theirs = run_diffusers(scheduler, edm_start(timesteps), stochastic=False)
    assert (ours - theirs).abs().max() <= 1e-5
    assert SAMPLERS["heun"].nfe(6) == len(scheduler.timesteps) == 11


def test_karras_spacing_rounds_diffusers_karras_timesteps():
    """Our karras timesteps are diffusers' fractional ones (use_karras_sigmas) rounded.
    Fails if rho, sigma_min / sigma_max or the log-sigma interpolation change."""
    scheduler = EulerDiscreteScheduler(**diffusers_config(), use_karras_sigmas=True)
    scheduler.set_timesteps(12)
    ours = timestep_sequence(T, 12, "karras", SCHEDULE)
    assert torch.equal(ours, scheduler.timesteps.double().round().long())


def exact_ode_solution(gaussian: GaussianOptimalEps, x_t: torch.Tensor, t: int) -> torch.Tensor:
    """The probability-flow ODE from (x_t, t) to clean data when x0 ~ N(m, s^2 I): the ODE keeps
    ``(x_t - sqrt(a) m) / sqrt(a s^2 + 1 - a)`` fixed, and at a = 1 that is ``(x0 - m) / s``."""
    a = gaussian.schedule.alpha_bar[t]
    z = (x_t - a.sqrt() * gaussian.mean) / (a * gaussian.std**2 + 1 - a).sqrt()
    return gaussian.mean + gaussian.std * z


@pytest.mark.parametrize("sampler", ["dpm++2m", "heun"])
def test_second_order_samplers_converge_at_second_order(sampler):
    """With the exact eps of Gaussian data the ODE's solution is known; doubling the steps from
    40 to 80 (uniform) cuts the error >= 3x (second order: 4x), while DDIM's only halves. Fails if
    the 2M history or Heun's correction is dropped (both become DDIM)."""
    gaussian = GaussianOptimalEps(SCHEDULE)
    exact = Denoiser(gaussian, SCHEDULE)
    start = x_T().double()  # (B, C, H, W)

    def error(name: str, steps: int) -> float:
        timesteps = timestep_sequence(T, steps)
        run = SAMPLERS[name].run
        got = run(exact, start, timesteps, Conditioning(), SamplerOptions(), None, None)
        return float((got - exact_ode_solution(gaussian, start, int(timesteps[0]))).abs().max())

    assert error(sampler, 40) / error(sampler, 80) >= 3
    assert error("ddim", 40) / error("ddim", 80) < 2.2


@pytest.mark.parametrize("steps", [3, 5, 10])
def test_heun_takes_an_euler_step_over_the_cosine_schedules_long_first_move(steps, monkeypatch):
    """On the cosine schedule sigma falls from 20,291 (t = 999) to a few units in the first move
    of a trailing sequence; Heun's trapezoid there amplifies the difference of two noise
    predictions by sigma. With the exact eps of Gaussian data: difflab's Heun (an Euler step for
    moves over MAX_CORRECTED_SIGMA_RATIO) beats DDIM, EDM's rule (always correct) is far off, and
    the skipped correction saves its evaluation. Fails if the ratio rule is removed or inverted."""
    cosine = NoiseSchedule.from_name("cosine", T)
    gaussian = GaussianOptimalEps(cosine)
    calls = []

    def counted(x_t, t, cond):
        calls.append(int(t[0]))
        return gaussian(x_t, t, cond)

    counted.prediction = "eps"
    exact = Denoiser(counted, cosine)
    start = x_T().double()  # (B, C, H, W)
    timesteps = timestep_sequence(T, steps, "trailing", cosine)
    solution = exact_ode_solution(gaussian, start, int(timesteps[0]))

    def error(name: str) -> float:
        got = SAMPLERS[name].run(
            exact, start, timesteps, Conditioning(), SamplerOptions(), None, None
        )
        return float((got - solution).abs().max())

    ddim_error = error("ddim")
    calls.clear()
    assert error("heun") < ddim_error
    assert len(calls) == SAMPLERS["heun"].nfe(steps) - 1  # the first move is an Euler step
    monkeypatch.setattr(heun_module, "MAX_CORRECTED_SIGMA_RATIO", float("inf"))
    assert error("heun") > 5
