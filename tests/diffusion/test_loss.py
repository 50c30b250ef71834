"""Min-SNR-γ loss weighting, checked against the paper's weights computed by hand."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from difflab.config import load_config
from difflab.diffusion import NoiseSchedule, denoising_loss, draw_noise
from difflab.diffusion.loss import min_snr_weight, prediction_target
from difflab.errors import DifflabError


def test_min_snr_weights_equal_a_hand_computation():
    """alpha_bar = 0.5 (SNR 1), 0.9 (SNR 9), 0.99 (SNR 99) with γ = 5: x0 weights min(SNR, 5) =
    1, 5, 5; eps weights min(SNR, 5) / SNR = 1, 5/9, 5/99; v weights min(SNR, 5) / (SNR + 1) =
    1/2, 5/10, 5/100. Fails if eps and v swap their denominators, or if the clamp becomes a max
    (tried: both)."""
    alpha_bar = torch.tensor([0.5, 0.9, 0.99], dtype=torch.float64)
    expected = {
        "x0": [1.0, 5.0, 5.0],
        "eps": [1.0, 5 / 9, 5 / 99],
        "v": [0.5, 0.5, 0.05],
    }
    for prediction, weights in expected.items():
        got = min_snr_weight(prediction, alpha_bar, 5.0)
        torch.testing.assert_close(got, torch.tensor(weights, dtype=torch.float64))
    # pure noise (SNR 0): the eps loss keeps weight 1 instead of 0 / 0
    assert min_snr_weight("eps", torch.tensor([0.0], dtype=torch.float64), 5.0).item() == 1.0


class Constant(torch.nn.Module):
    """A network whose output is a fixed tensor, so the loss is known in closed form."""

    def __init__(self, prediction: str, output: torch.Tensor) -> None:
        super().__init__()
        self.prediction = prediction
        self.output = output

    def forward(self, x_t, t, cond):
        return self.output


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_weighted_loss_is_the_per_sample_weighted_mean_and_none_is_unchanged(prediction):
    """The loss with γ equals mean_b w_b mean_pixels (output - target)², w from the SNR of each
    sample's t, computed here from the schedule's alpha_bar; without γ it is F.mse_loss bit for
    bit. Fails if the weights are applied to the wrong samples (tried: flipped) or averaged
    before squaring."""
    schedule = NoiseSchedule.from_name("linear", 100)
    generator = torch.Generator().manual_seed(0)
    x0 = torch.rand(6, 1, 4, 4, generator=generator) * 2 - 1
    t, eps = draw_noise(schedule, tuple(x0.shape), generator)
    output = torch.randn(6, 1, 4, 4, generator=generator)
    net = Constant(prediction, output)
    a = schedule.alpha_bar[t].view(-1, 1, 1, 1)  # float64, by hand below
    target = {
        "eps": eps.double(),
        "x0": x0.double(),
        "v": a.sqrt() * eps.double() - (1 - a).sqrt() * x0.double(),
    }[prediction]
    snr = a / (1 - a)
    weight = {
        "eps": snr.clamp(max=5) / snr,
        "x0": snr.clamp(max=5),
        "v": snr.clamp(max=5) / (snr + 1),
    }
    per_sample = (output.double() - target).square().mean(dim=(1, 2, 3), keepdim=True)
    expected = (weight[prediction] * per_sample).mean()
    got = denoising_loss(net, schedule, x0, noise=(t, eps), min_snr_gamma=5.0)
    torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-7)
    plain = denoising_loss(net, schedule, x0, noise=(t, eps))
    unweighted = prediction_target(prediction, x0, eps, schedule.alpha_bar_at(t, x0))
    assert torch.equal(plain, F.mse_loss(output, unweighted))


def test_config_checks_the_recipe_fields():
    """γ must be > 0; lr_decay must be constant or cosine; the defaults keep the old recipe."""
    train = load_config(None).train
    assert (train.min_snr_gamma, train.lr_decay, train.ema_warmup) == (None, "constant", True)
    with pytest.raises(DifflabError, match=r"train\.min_snr_gamma must be greater than 0"):
        load_config(None, ["train.min_snr_gamma=0"])
    with pytest.raises(DifflabError, match=r"train\.lr_decay must be one of constant, cosine"):
        load_config(None, ["train.lr_decay=linear"])
    with pytest.raises(DifflabError, match=r"train\.lr_floor must lie in \[0, 1\]"):
        load_config(None, ["train.lr_floor=2"])
