"""Static and dynamic x0 thresholding, and their place after the classifier-free combine."""

from __future__ import annotations

import pytest
import torch

from difflab.diffusion import Conditioning, Denoiser, NoiseSchedule, timestep_sequence
from difflab.errors import DifflabError
from difflab.samplers import (
    WRAPPER_ORDER,
    ClassifierFreeGuidance,
    ClassifierGuidance,
    DynamicThreshold,
    Guidance,
    StaticThreshold,
    get_sampler,
)


class ConstantX0Net(torch.nn.Module):
    """Predicts x0 = +0.9 for a label and -0.9 for "no label": each branch within [-1, 1]."""

    prediction = "x0"

    def forward(self, x_t, t, cond):
        sign = torch.where(cond.labels >= 0, 0.9, -0.9).reshape(-1, 1, 1, 1)
        return sign.expand_as(x_t).to(x_t.dtype)


class WildX0Net(torch.nn.Module):
    prediction = "x0"

    def forward(self, x_t, t, cond):
        return 3 * x_t


@pytest.fixture
def schedule():
    return NoiseSchedule.from_name("linear", 1000)


def consistent(pred, x_t, t, schedule):
    a = schedule.alpha_bar_at(t, x_t)
    return torch.allclose(a.sqrt() * pred.x0 + (1 - a).sqrt() * pred.eps, x_t, atol=1e-5)


def test_static_threshold_clamps_x0_and_keeps_eps_consistent(schedule):
    x_t, t = torch.randn(2, 1, 3, 3), torch.tensor([500, 500])
    pred = StaticThreshold(Denoiser(WildX0Net(), schedule))(x_t, t)
    assert pred.x0.abs().max().item() == 1.0
    assert consistent(pred, x_t, t, schedule)


def test_dynamic_threshold_follows_imagen(schedule):
    """s = max(1, quantile(|x0|, p)) per sample, x0 <- clip(x0, -s, s) / s."""
    x_t = torch.randn(3, 2, 4, 4, generator=torch.Generator().manual_seed(0))
    x_t[2] *= 0.1  # this sample's x0 = 3 x_t stays within [-1, 1]: s = 1, unchanged
    t = torch.tensor([400, 400, 400])
    inner = Denoiser(WildX0Net(), schedule)
    pred = DynamicThreshold(inner, percentile=0.9)(x_t, t)
    raw = inner(x_t, t).x0
    for i in range(3):
        s = max(1.0, torch.quantile(raw[i].abs().flatten(), 0.9).item())
        expected = raw[i].clamp(-s, s) / s
        assert torch.allclose(pred.x0[i], expected, atol=1e-6)
    assert torch.equal(pred.x0[2], raw[2])
    assert pred.x0.abs().max() <= 1.0
    assert consistent(pred, x_t, t, schedule)


def test_dynamic_threshold_keeps_float64(schedule):
    x_t, t = torch.randn(2, 1, 4, 4, dtype=torch.float64), torch.tensor([10, 10])
    pred = DynamicThreshold(Denoiser(WildX0Net(), schedule))(x_t, t)
    assert pred.x0.dtype == torch.float64


@pytest.mark.parametrize("percentile", [0.0, 1.5, float("nan")])
def test_bad_percentiles_are_refused(schedule, percentile):
    with pytest.raises(DifflabError, match="percentile"):
        DynamicThreshold(Denoiser(WildX0Net(), schedule), percentile)
    with pytest.raises(DifflabError, match="percentile"):
        Guidance(threshold="dynamic", threshold_percentile=percentile)


def test_guided_x0_is_clipped_after_the_classifier_free_combine(schedule):
    """--clip-x0 --guidance-scale 3: both branches lie in [-1, 1], the combine reaches
    (1 - 3)(-0.9) + 3(0.9) = 4.5; the x0 the sampler sees must stay in [-1, 1]."""
    x_t, t = torch.randn(4, 1, 2, 2), torch.full((4,), 300)
    cond = Conditioning(labels=torch.tensor([0, 1, 2, 3]))
    denoiser = Denoiser(ConstantX0Net(), schedule)
    assert ClassifierFreeGuidance(denoiser, 3.0)(x_t, t, cond).x0.max().item() == pytest.approx(4.5)
    for threshold in ("static", "dynamic"):
        guidance = Guidance(guidance_scale=3.0, threshold=threshold)
        wrapped = guidance.wrap(denoiser, get_sampler("ddim"), timestep_sequence(1000, 10))
        x0 = wrapped(x_t, t, cond).x0
        assert x0.abs().max().item() <= 1.0 + 1e-6


def test_the_wrapper_order_is_fixed_and_visible(schedule):
    assert WRAPPER_ORDER == ("classifier-free", "threshold", "classifier")

    def classifier(x_t, t):
        return x_t.flatten(1)[:, :4]

    guidance = Guidance(classifier, 1.0, 2.0, "static")
    assert guidance.wrappers == WRAPPER_ORDER
    outer = guidance.wrap(
        Denoiser(ConstantX0Net(), schedule), get_sampler("ddim"), timestep_sequence(1000, 5)
    )
    assert isinstance(outer, ClassifierGuidance)
    assert isinstance(outer.inner, StaticThreshold)
    assert isinstance(outer.inner.inner, ClassifierFreeGuidance)
    assert Guidance(threshold="dynamic").wrappers == ("threshold",)
    with pytest.raises(DifflabError, match="unknown thresholding"):
        Guidance(threshold="soft")
