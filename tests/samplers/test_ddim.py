import itertools
import math

import pytest
import torch

from difflab.diffusion import Denoiser, NoiseSchedule, timestep_sequence
from difflab.errors import DifflabError
from difflab.samplers import ddim_invert, ddim_sample, ddim_step, ddim_step_std, ddpm_sample
from tests.helpers import GaussianOptimalEps, RandomLinearNet


@pytest.fixture(scope="module")
def schedule():
    return NoiseSchedule.from_name("linear", 1000)


def test_ddim_step_matches_a_hand_computed_case():
    a_t, a_prev = torch.tensor(0.25), torch.tensor(0.64)
    x0, eps, noise = torch.tensor(0.5), torch.tensor(-1.0), torch.tensor(2.0)
    eta = 0.5
    # sigma = eta * sqrt((1 - .64) / (1 - .25)) * sqrt(1 - .25 / .64)
    sigma = 0.5 * math.sqrt(0.36 / 0.75) * math.sqrt(1 - 0.390625)
    expected = 0.8 * 0.5 + math.sqrt(1 - 0.64 - sigma**2) * -1.0 + sigma * 2.0
    got = ddim_step(None, eps, x0, a_t, a_prev, eta=eta, noise=noise)
    assert got.item() == pytest.approx(expected, rel=1e-6)
    assert ddim_step_std(a_t, a_prev, eta).item() == pytest.approx(sigma, rel=1e-6)


def test_eta_one_gives_the_ddpm_posterior_variance(schedule):
    """sigma_t(1)^2 = beta-tilde_t = (1 - a_{t-1}) / (1 - a_t) * beta_t for consecutive steps."""
    a = schedule.alpha_bar
    t = torch.arange(1, 1000)
    beta_tilde = (1 - a[t - 1]) / (1 - a[t]) * schedule.betas[t]
    assert torch.allclose(ddim_step_std(a[t], a[t - 1], 1.0) ** 2, beta_tilde, rtol=1e-10)


def test_ddim_eta_one_and_ddpm_posterior_sample_identically(schedule):
    """Both are the DDPM posterior (mean and variance), written two ways; same noise, same result."""
    denoiser = Denoiser(RandomLinearNet(), schedule)
    x_T = torch.randn(3, 1, 4, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    timesteps = timestep_sequence(1000, 20)
    ddim = ddim_sample(
        denoiser, x_T, timesteps, eta=1.0, generator=torch.Generator().manual_seed(7)
    )
    ddpm = ddpm_sample(denoiser, x_T, timesteps, generator=torch.Generator().manual_seed(7))
    assert torch.allclose(ddim, ddpm, atol=1e-9)


def test_sigma_hat_equals_ddpm_with_the_larger_variance(schedule):
    denoiser = Denoiser(RandomLinearNet(), schedule)
    x_T = torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    timesteps = timestep_sequence(1000, 10)
    hat = ddim_sample(
        denoiser, x_T, timesteps, sigma_hat=True, generator=torch.Generator().manual_seed(3)
    )
    beta = ddpm_sample(
        denoiser, x_T, timesteps, variance="beta", generator=torch.Generator().manual_seed(3)
    )
    posterior = ddpm_sample(denoiser, x_T, timesteps, generator=torch.Generator().manual_seed(3))
    assert torch.allclose(hat, beta, atol=1e-9)
    assert not torch.allclose(hat, posterior, atol=1e-3)


def test_eta_zero_is_deterministic_and_eta_positive_depends_on_the_generator(schedule):
    denoiser = Denoiser(RandomLinearNet(), schedule)
    x_T = torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    timesteps = timestep_sequence(1000, 10)
    first = ddim_sample(
        denoiser, x_T, timesteps, eta=0.0, generator=torch.Generator().manual_seed(1)
    )
    second = ddim_sample(
        denoiser, x_T, timesteps, eta=0.0, generator=torch.Generator().manual_seed(2)
    )
    assert torch.equal(first, second)
    noisy1 = ddim_sample(
        denoiser, x_T, timesteps, eta=0.5, generator=torch.Generator().manual_seed(1)
    )
    noisy2 = ddim_sample(
        denoiser, x_T, timesteps, eta=0.5, generator=torch.Generator().manual_seed(2)
    )
    again = ddim_sample(
        denoiser, x_T, timesteps, eta=0.5, generator=torch.Generator().manual_seed(1)
    )
    assert not torch.allclose(noisy1, noisy2) and torch.equal(noisy1, again)


@pytest.mark.parametrize("spacing", ["uniform", "quadratic", "linspace", "trailing"])
def test_sampler_visits_exactly_the_given_timesteps(schedule, spacing):
    visited = []
    timesteps = timestep_sequence(1000, 7, spacing)
    denoiser = Denoiser(RandomLinearNet(), schedule)
    ddim_sample(
        denoiser, torch.randn(1, 1, 2, 2), timesteps, callback=lambda info: visited.append(info.t)
    )
    assert visited == timesteps.tolist()


@pytest.mark.parametrize("eps_at", ["source", "destination"])
def test_gaussian_data_inversion_is_near_exact_and_improves_with_more_steps(schedule, eps_at):
    """With the exact eps of Gaussian data the only error is the discretisation of the ODE."""
    denoiser = Denoiser(GaussianOptimalEps(schedule), schedule)
    generator = torch.Generator().manual_seed(0)
    x0 = (0.3 + 0.5 * torch.randn(16, 1, 4, 4, generator=generator)).double()
    errors = []
    for steps in (10, 50, 200, 1000):
        timesteps = timestep_sequence(1000, steps)
        x_T = ddim_invert(denoiser, x0, timesteps, eps_at=eps_at)
        recon = ddim_sample(denoiser, x_T, timesteps)
        errors.append(torch.mean((recon - x0) ** 2).item())
    # a first-order solver: the error (RMSE) falls roughly like 1/S, so the MSE like 1/S^2
    assert errors[-1] < 2e-5, errors
    assert all(later < 0.1 * earlier for earlier, later in itertools.pairwise(errors)), errors
    # the inverted noise is close to standard normal in scale
    x_T = ddim_invert(denoiser, x0, timestep_sequence(1000, 100), eps_at=eps_at)
    assert 0.7 < x_T.std().item() < 1.3


def round_trip_mse(denoiser, x0: torch.Tensor, steps: int, eps_at: str) -> float:
    """MSE of invert (``eps_at``) then regenerate (eta = 0) with ``steps`` uniform steps."""
    timesteps = timestep_sequence(1000, steps)
    x_T = ddim_invert(denoiser, x0, timesteps, eps_at=eps_at)
    return torch.mean((ddim_sample(denoiser, x_T, timesteps) - x0) ** 2).item()


def test_destination_inverts_gaussian_data_better_than_source(schedule):
    """With the exact eps of Gaussian data eps(x_prev, t) is the closer stand-in for the sampler's
    eps(x_t, t): the round trip error is less than half the source convention's at every S."""
    denoiser = Denoiser(GaussianOptimalEps(schedule), schedule)
    x0 = (0.3 + 0.5 * torch.randn(16, 1, 4, 4, generator=torch.Generator().manual_seed(0))).double()
    for steps in (10, 50, 200):
        source = round_trip_mse(denoiser, x0, steps, "source")
        destination = round_trip_mse(denoiser, x0, steps, "destination")
        assert destination < 0.5 * source, (steps, source, destination)


class ScaledIdentityNet(torch.nn.Module):
    """eps(x, t) = (t + 1) / 1000 * x: a linear network whose every call is recorded."""

    prediction = "eps"

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[int] = []

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, cond: object) -> torch.Tensor:
        self.calls.append(int(t[0]))
        return (t.double()[:, None, None, None] + 1) / 1000 * x_t


@pytest.mark.parametrize("eps_at", ["source", "destination"])
def test_inversion_matches_two_hand_computed_moves(schedule, eps_at):
    """Timesteps (500, 200): moves -1 -> 200 -> 500, each x_t = sqrt(a_t) x0_hat + sqrt(1-a_t) eps
    with x0_hat = (x - sqrt(1 - a_prev) eps) / sqrt(a_prev) (the step of diffusers and of the
    paper's eq. 12 with sigma = 0, written independently of the code's eq. 13 form)."""
    net = ScaledIdentityNet()
    a = schedule.alpha_bar.double()
    x = torch.tensor([[[[0.7, -1.2]]]], dtype=torch.float64)
    expected = x.clone()
    evaluated = {"source": [0, 200], "destination": [200, 500]}[eps_at]
    for (t, t_prev), t_eval in zip([(200, -1), (500, 200)], evaluated, strict=True):
        a_t, a_prev = a[t].item(), 1.0 if t_prev < 0 else a[t_prev].item()
        eps = (t_eval + 1) / 1000 * expected
        x0_hat = (expected - math.sqrt(1 - a_prev) * eps) / math.sqrt(a_prev)
        expected = math.sqrt(a_t) * x0_hat + math.sqrt(1 - a_t) * eps
    got = ddim_invert(Denoiser(net, schedule), x, torch.tensor([500, 200]), eps_at=eps_at)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    assert net.calls == evaluated


@pytest.mark.parametrize("spacing", ["uniform", "trailing"])
def test_inversion_evaluates_eps_at_the_chosen_end_of_each_move(schedule, spacing):
    timesteps = timestep_sequence(1000, 6, spacing)
    ascending = timesteps.flip(0).tolist()
    for eps_at, expected in (("destination", ascending), ("source", [0, *ascending[:-1]])):
        net = ScaledIdentityNet()
        ddim_invert(Denoiser(net, schedule), torch.ones(1, 1, 2, 2), timesteps, eps_at=eps_at)
        assert net.calls == expected, eps_at


@pytest.mark.parametrize("steps", [10, 50])
def test_destination_inversion_agrees_with_diffusers_inverse_scheduler(schedule, steps):
    """diffusers' DDIMInverseScheduler as an oracle: the same network, every move of the run."""
    diffusers = pytest.importorskip("diffusers")
    scheduler = diffusers.DDIMInverseScheduler(
        num_train_timesteps=1000,
        beta_start=1e-4,
        beta_end=0.02,
        beta_schedule="linear",
        clip_sample=False,
        set_alpha_to_one=True,
        timestep_spacing="leading",
    )
    scheduler.set_timesteps(steps)
    timesteps = timestep_sequence(1000, steps, "leading")
    assert scheduler.timesteps.tolist() == timesteps.flip(0).tolist()
    denoiser = Denoiser(RandomLinearNet(), schedule)
    x0 = torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    expected = x0
    for t in scheduler.timesteps:
        eps = denoiser(expected, t.repeat(2), None).eps
        expected = scheduler.step(eps, t, expected).prev_sample.double()
    got = ddim_invert(denoiser, x0, timesteps, eps_at="destination")
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
    source = ddim_invert(denoiser, x0, timesteps, eps_at="source")
    assert (source - expected).abs().max() > 1e-3  # the oracle tells the conventions apart


def test_unknown_eps_at_is_refused(schedule):
    with pytest.raises(DifflabError, match="eps_at"):
        ddim_invert(
            Denoiser(RandomLinearNet(), schedule),
            torch.zeros(1, 1, 2, 2),
            timestep_sequence(1000, 4),
            eps_at="middle",
        )


def test_gaussian_data_generation_has_the_right_statistics(schedule):
    """Deterministic DDIM with the exact score maps N(0, I) to the data distribution N(0.3, 0.5^2)."""
    denoiser = Denoiser(GaussianOptimalEps(schedule), schedule)
    x_T = torch.randn(
        4000, 1, 2, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64
    )
    samples = ddim_sample(denoiser, x_T, timestep_sequence(1000, 100))
    assert samples.mean().item() == pytest.approx(0.3, abs=0.02)
    assert samples.std().item() == pytest.approx(0.5, abs=0.02)


@pytest.mark.parametrize("eta", [0.0, 1.0])
@pytest.mark.parametrize("steps", [10, 50])
def test_ddim_step_agrees_with_diffusers_scheduler(schedule, eta, steps):
    """diffusers' DDIMScheduler as an oracle, on random tensors, every step of a leading-spaced run."""
    diffusers = pytest.importorskip("diffusers")
    scheduler = diffusers.DDIMScheduler(
        num_train_timesteps=1000,
        beta_start=1e-4,
        beta_end=0.02,
        beta_schedule="linear",
        clip_sample=False,
        set_alpha_to_one=True,
        timestep_spacing="leading",
    )
    scheduler.set_timesteps(steps)
    ours = timestep_sequence(1000, steps, "leading")
    assert scheduler.timesteps.tolist() == ours.tolist()
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 8, 8, generator=generator, dtype=torch.float64)
    for index, t in enumerate(ours.tolist()):
        t_prev = ours[index + 1].item() if index + 1 < len(ours) else -1
        eps = torch.randn(x.shape, generator=generator, dtype=torch.float64)
        noise = torch.randn(x.shape, generator=generator, dtype=torch.float64)
        expected = scheduler.step(eps, t, x, eta=eta, variance_noise=noise).prev_sample
        a_t = schedule.alpha_bar_at(torch.tensor([t]), x)
        a_prev = schedule.alpha_bar_at(torch.tensor([t_prev]), x)
        x0 = (x - (1 - a_t).sqrt() * eps) / a_t.sqrt()
        got = ddim_step(x, eps, x0, a_t, a_prev, eta=eta, noise=noise if t_prev >= 0 else None)
        assert torch.allclose(got, expected.double(), atol=1e-5), (t, (got - expected).abs().max())
        x = expected.double()
