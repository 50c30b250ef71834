import pytest
import torch

from difflab.diffusion import (
    PREDICTION_TYPES,
    Conditioning,
    Denoiser,
    NoiseSchedule,
    denoising_loss,
    prediction_target,
)
from difflab.errors import DifflabError


def target_by_hand(prediction, x0, eps, alpha_bar):
    """What a network of each type must output, written here from the papers, not from the code:
    eps, x0, or v = sqrt(alpha_bar) eps - sqrt(1 - alpha_bar) x0 (Salimans & Ho 2022, sec. 4)."""
    return {
        "eps": eps,
        "x0": x0,
        "v": alpha_bar.sqrt() * eps - (1 - alpha_bar).sqrt() * x0,
    }[prediction]


class OracleNet(torch.nn.Module):
    """Returns the exact target for a fixed (x0, eps) pair, for a given prediction type."""

    def __init__(self, prediction, schedule, x0, eps):
        super().__init__()
        self.prediction, self.schedule, self.x0, self.eps = prediction, schedule, x0, eps

    def forward(self, x_t, t, cond):
        return target_by_hand(
            self.prediction, self.x0, self.eps, self.schedule.alpha_bar_at(t, x_t)
        )


@pytest.mark.parametrize("prediction", PREDICTION_TYPES)
def test_prediction_target_is_the_formula_of_each_type(prediction):
    """Fails if v's sign or its weights are changed (the training target of v-prediction)."""
    generator = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(2, 3, 4, 4, generator=generator).double().unbind(0)
    alpha_bar = torch.tensor(0.3, dtype=torch.float64)
    expected = target_by_hand(prediction, x0, eps, alpha_bar)
    torch.testing.assert_close(prediction_target(prediction, x0, eps, alpha_bar), expected)


@pytest.mark.parametrize("prediction", PREDICTION_TYPES)
def test_denoiser_recovers_eps_and_x0_from_any_prediction_type(prediction):
    """The network outputs the hand-written target, so a Denoiser that converts v with the wrong
    sign fails here even when ``prediction_target`` carries the same sign error (tried: both
    negated together pass a round trip through the code's own target, and fail this test)."""
    schedule = NoiseSchedule.from_name("cosine", 1000)
    generator = torch.Generator().manual_seed(0)
    x0 = torch.rand(4, 3, 5, 5, generator=generator) * 2 - 1
    eps = torch.randn(4, 3, 5, 5, generator=generator)
    t = torch.tensor([0, 10, 500, 990])
    x_t = schedule.q_sample(x0.double(), t, eps.double())
    net = OracleNet(prediction, schedule, x0.double(), eps.double())
    pred = Denoiser(net, schedule)(x_t, t)
    assert torch.allclose(pred.eps, eps.double(), atol=1e-6)
    assert torch.allclose(pred.x0, x0.double(), atol=1e-6)


@pytest.mark.parametrize("prediction", PREDICTION_TYPES)
def test_loss_is_zero_for_a_perfect_network_and_positive_otherwise(prediction):
    schedule = NoiseSchedule.from_name("linear", 100)
    x0 = torch.rand(8, 1, 4, 4) * 2 - 1

    class Perfect(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.prediction = prediction

        def forward(self, x_t, t, cond):
            a = schedule.alpha_bar_at(t, x_t)
            eps = (x_t - a.sqrt() * x0) / (1 - a).sqrt()
            return target_by_hand(prediction, x0, eps, a)

    zero = denoising_loss(Perfect(), schedule, x0, generator=torch.Generator().manual_seed(0))
    assert zero.item() < 1e-8

    class Zero(Perfect):
        def forward(self, x_t, t, cond):
            return torch.zeros_like(x_t)

    assert (
        denoising_loss(Zero(), schedule, x0, generator=torch.Generator().manual_seed(0)).item()
        > 0.01
    )


def test_network_without_prediction_type_is_rejected():
    with pytest.raises(DifflabError, match="prediction"):
        Denoiser(torch.nn.Identity(), NoiseSchedule.from_name("linear", 10))


def test_conditioning_drop_uses_null_label():
    cond = Conditioning(labels=torch.tensor([1, 2, 3]))
    assert cond.drop(torch.tensor([True, False, True])).labels.tolist() == [-1, 2, -1]
    assert cond.dropped().labels.tolist() == [-1, -1, -1]
    assert Conditioning().drop(torch.tensor([True])).labels is None
