import math

import pytest
import torch

from difflab.diffusion import SCHEDULE_NAMES, NoiseSchedule
from difflab.errors import DifflabError


@pytest.mark.parametrize("name", SCHEDULE_NAMES)
def test_alpha_bar_decreases_from_near_one_towards_zero(name):
    schedule = NoiseSchedule.from_name(name, 1000)
    alpha_bar = schedule.alpha_bar
    assert alpha_bar.dtype == torch.float64 and alpha_bar.shape == (1000,)
    assert (alpha_bar[1:] < alpha_bar[:-1]).all()
    assert 0.99 < alpha_bar[0] < 1
    assert alpha_bar[-1] < 0.01
    assert torch.allclose(alpha_bar, torch.cumprod(1 - schedule.betas, 0))


def test_linear_schedule_matches_ddpm_endpoints():
    betas = NoiseSchedule.from_name("linear", 1000).betas
    assert betas[0].item() == pytest.approx(1e-4) and betas[-1].item() == pytest.approx(0.02)
    assert torch.allclose(
        betas.diff(), torch.full((999,), (0.02 - 1e-4) / 999, dtype=torch.float64)
    )


def test_scaled_linear_is_linear_in_sqrt_beta():
    betas = NoiseSchedule.from_name("scaled_linear", 1000).betas
    assert betas[0].item() == pytest.approx(0.00085) and betas[-1].item() == pytest.approx(0.012)
    assert torch.allclose(betas.sqrt().diff(), betas.sqrt().diff()[0].expand(999))


def test_cosine_alpha_bar_follows_improved_ddpm_formula():
    T, s = 1000, 0.008
    alpha_bar = NoiseSchedule.from_name("cosine", T).alpha_bar
    f = lambda t: math.cos((t / T + s) / (1 + s) * math.pi / 2) ** 2  # noqa: E731
    for t in (0, 100, 500, 900):
        assert alpha_bar[t].item() == pytest.approx(f(t + 1) / f(0), rel=1e-9)


def test_alpha_bar_at_minus_one_is_clean_data():
    schedule = NoiseSchedule.from_name("linear", 10)
    x = torch.zeros(3, 1, 2, 2)
    values = schedule.alpha_bar_at(torch.tensor([-1, 0, 9]), x)
    assert values.shape == (3, 1, 1, 1)
    assert values[0].item() == 1.0
    assert values[1].item() == pytest.approx(schedule.alpha_bar[0].item())


def test_forward_process_statistics():
    """q(x_t | x0) = N(sqrt(a_t) x0, (1 - a_t) I): check mean and variance empirically."""
    schedule = NoiseSchedule.from_name("linear", 1000)
    generator = torch.Generator().manual_seed(0)
    x0 = torch.full((20000, 1, 2, 2), 0.7)
    for t in (0, 250, 999):
        eps = torch.randn(x0.shape, generator=generator)
        x_t = schedule.q_sample(x0, torch.full((20000,), t), eps)
        a = schedule.alpha_bar[t].item()
        assert x_t.mean().item() == pytest.approx(math.sqrt(a) * 0.7, abs=0.01)
        assert x_t.var().item() == pytest.approx(1 - a, abs=0.02 * (1 - a) + 1e-5)


@pytest.mark.parametrize(
    "kwargs",
    [dict(name="wavy"), dict(name="linear", num_timesteps=0), dict(name="linear", beta_end=1.5)],
)
def test_bad_schedule_arguments_are_clear_errors(kwargs):
    with pytest.raises(DifflabError):
        NoiseSchedule.from_name(**kwargs)
