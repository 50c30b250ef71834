import math

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler
from scipy import integrate, stats

from difflab.config import TrainConfig
from difflab.diffusion import Conditioning, Denoiser, NoiseSchedule, denoising_loss
from difflab.diffusion.vlb import bits_per_dim, discretized_gaussian_nll, normal_kl
from difflab.errors import DifflabError
from difflab.models.registry import build_model, model_config
from difflab.models.unet import UNet, UNetConfig
from difflab.samplers.ddpm import ddpm_sample
from difflab.samplers.guidance import AncestralClassifierGuidance
from difflab.training.loop import check_train_config


def test_normal_kl_equals_the_integral_of_p_log_p_over_q():
    """Fails if a term of the closed form is dropped or its sign flipped (tried: ``- 1`` -> ``+ 1``)."""
    cases = [(0.3, 0.5, -0.2, 1.4), (-1.0, 0.05, 0.7, 0.3), (0.0, 1.0, 0.0, 1.0)]
    for m1, v1, m2, v2 in cases:
        p, q = stats.norm(m1, math.sqrt(v1)), stats.norm(m2, math.sqrt(v2))
        integrand = lambda x, p=p, q=q: p.pdf(x) * (p.logpdf(x) - q.logpdf(x))  # noqa: E731
        expected, _ = integrate.quad(integrand, -30, 30)
        got = normal_kl(
            *(torch.tensor(v, dtype=torch.float64) for v in (m1, math.log(v1), m2, math.log(v2)))
        )
        assert float(got) == pytest.approx(expected, abs=1e-8)


def test_discretised_decoder_nll_equals_the_gaussian_mass_of_each_bin():
    """Fails if the bin is not 2/255 wide or the edge bins are not widened to infinity (tried:
    dropping the ``x0 > 1 - half_bin / 2`` case)."""
    x0 = torch.tensor([-1.0, -1 + 2 / 255 * 7, 0.0039215686, 1.0], dtype=torch.float64)
    mean = torch.tensor([-0.9, -0.95, 0.1, 0.98], dtype=torch.float64)
    log_var = torch.tensor([0.01, 0.001, 0.04, 0.0004], dtype=torch.float64).log()
    got = discretized_gaussian_nll(x0, mean, log_var)
    for i in range(4):
        dist = stats.norm(float(mean[i]), math.exp(0.5 * float(log_var[i])))
        low = -np.inf if i == 0 else float(x0[i]) - 1 / 255
        high = np.inf if i == 3 else float(x0[i]) + 1 / 255
        assert float(got[i]) == pytest.approx(-math.log(dist.cdf(high) - dist.cdf(low)), rel=1e-9)


class FixedLearnedSigmaNet(torch.nn.Module):
    """A deterministic "network" with learned variances: eps and v are fixed functions of (x, t)."""

    prediction = "eps"
    conditioning_fields: tuple[str, ...] = ()
    learn_sigma = True

    def forward(self, x_t, t, cond=None, *, with_variance=False):
        t = t.to(x_t).reshape(-1, 1, 1, 1)
        eps = 0.3 * x_t + torch.sin(t / 7)  # (B, C, H, W)
        v = torch.tanh(0.8 * x_t - t / 60)  # (B, C, H, W) in [-1, 1]
        return torch.cat([eps, v], dim=1) if with_variance else eps


def test_learned_range_ddpm_on_a_respaced_sequence_equals_diffusers():
    """Same network output, same noise: equal samples to diffusers' DDPMScheduler with
    variance_type="learned_range" on 10 of 100 steps. Fails if the respaced beta_t is not
    ``1 - a_t / a_prev`` (tried: the original ``betas[t]``) or f is v instead of (v + 1) / 2."""
    T, S = 100, 10
    reference = DDPMScheduler(
        num_train_timesteps=T, variance_type="learned_range", clip_sample=False
    )
    reference.set_timesteps(S)
    net = FixedLearnedSigmaNet()
    x_T = torch.randn(3, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    ours = ddpm_sample(
        Denoiser(net, NoiseSchedule.from_name("linear", T)),
        x_T,
        reference.timesteps,
        generator=torch.Generator().manual_seed(1),
    )
    x, generator = x_T.clone(), torch.Generator().manual_seed(1)
    for t in reference.timesteps:
        output = net(x, t.expand(3), with_variance=True)
        x = reference.step(output, t, x, generator=generator).prev_sample
    assert torch.allclose(ours, x, atol=1e-4)
    net.learn_sigma = False  # the same eps with the fixed posterior variance differs
    fixed = ddpm_sample(
        Denoiser(net, NoiseSchedule.from_name("linear", T)),
        x_T,
        reference.timesteps,
        generator=torch.Generator().manual_seed(1),
    )
    assert not torch.allclose(ours, fixed, atol=1e-3)


def test_algorithm_1_guidance_shifts_the_mean_by_the_learned_sigma():
    """x0 moves by s Σ / c0 · g with the learned Σ (per pixel); fails if the wrapper keeps the
    fixed β̃ (tried) or drops the fraction so the sampler falls back to a fixed Σ."""
    T = 20
    schedule = NoiseSchedule.from_name("linear", T)
    denoiser = Denoiser(FixedLearnedSigmaNet(), schedule)
    weights = torch.randn(3, 16, generator=torch.Generator().manual_seed(2))

    def classifier(x, t):
        return x.flatten(1) @ weights.T  # (B, 3) logits, gradient = weights[y] - E[weights]

    steps = torch.tensor([15, 10, 5, 0])
    guided = AncestralClassifierGuidance(denoiser, classifier, 2.0, steps)
    x = torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(3))
    cond = Conditioning(labels=torch.tensor([0, 2]))
    t = torch.full((2,), 10)
    plain, shifted = denoiser(x, t), guided(x, t, cond)
    assert shifted.variance_fraction is not None
    a_t, a_prev = schedule.alpha_bar[10], schedule.alpha_bar[5]
    beta = 1 - a_t / a_prev
    beta_tilde = beta * (1 - a_prev) / (1 - a_t)
    f = plain.variance_fraction
    sigma = torch.exp(f * beta.log() + (1 - f) * beta_tilde.log()).float()
    c0 = float(a_prev.sqrt() * beta / (1 - a_t))
    probs = torch.softmax(classifier(x, t), dim=1)
    grad = (weights[cond.labels] - probs @ weights).reshape(x.shape)
    assert torch.allclose(shifted.x0, plain.x0 + 2.0 * sigma / c0 * grad, atol=1e-5)


def tiny_unet(learn_sigma: bool) -> UNet:
    config = UNetConfig(
        image_size=8,
        base_channels=8,
        channel_mult=(1, 2),
        attention_resolutions=(),
        learn_sigma=learn_sigma,
    )
    return UNet(config)


def test_learn_sigma_false_keeps_the_checkpoint_layout_and_the_prediction_half_is_unchanged():
    """A plain U-Net has the parameters it always had and the Denoiser gives no fraction; a
    learn_sigma U-Net whose first output half has the plain one's weights predicts the same. Fails
    if the variance channels come first (tried) or the plain head grows."""
    torch.manual_seed(0)
    plain, learned = tiny_unet(False), tiny_unet(True)
    assert plain.conv_out.out_channels == 1 and learned.conv_out.out_channels == 2
    for name, tensor in plain.state_dict().items():
        if not name.startswith("conv_out"):
            assert learned.state_dict()[name].shape == tensor.shape, name
    torch.nn.init.normal_(plain.conv_out.weight)
    state = plain.state_dict()
    state["conv_out.weight"] = torch.cat(
        [state["conv_out.weight"], torch.randn_like(state["conv_out.weight"])]
    )
    state["conv_out.bias"] = torch.cat([state["conv_out.bias"], torch.ones(1)])
    learned.load_state_dict(state)
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([3, 7])
    schedule = NoiseSchedule.from_name("linear", 10)
    a, b = Denoiser(plain, schedule)(x, t), Denoiser(learned, schedule)(x, t)
    assert a.variance_fraction is None and b.variance_fraction is not None
    assert torch.equal(a.eps, b.eps) and torch.equal(learned(x, t), plain(x, t))


def test_hybrid_loss_trains_sigma_only_through_the_vlb_and_the_mean_only_through_mse():
    """The vlb term's gradient reaches only the variance half of the head (stop-gradient on the
    mean). Fails if the prediction is not detached in the vlb term (tried)."""
    torch.manual_seed(0)
    net = tiny_unet(True)
    torch.nn.init.normal_(net.conv_out.weight, std=0.1)
    schedule = NoiseSchedule.from_name("linear", 10)
    x0 = torch.rand(4, 1, 8, 8) * 2 - 1
    noise = (torch.tensor([0, 3, 6, 9]), torch.randn(4, 1, 8, 8))
    grads = []
    for weight in (0.0, 0.001):
        net.zero_grad()
        denoising_loss(net, schedule, x0, noise=noise, vlb_weight=weight).backward()
        grads.append(net.conv_out.weight.grad.clone())  # (2, C, 3, 3): row 0 mean, row 1 Σ
    assert torch.equal(grads[0][0], grads[1][0])
    assert grads[0][1].abs().sum() == 0 and grads[1][1].abs().sum() > 0


def test_bits_per_dim_of_a_tiny_model_is_finite_and_positive():
    """The bound summed over all T terms plus the prior term; fails if a term is in nats rather
    than bits or negative (tried: dropping the decoder term at t = 0 leaves it far smaller)."""
    torch.manual_seed(0)
    denoiser = Denoiser(tiny_unet(True), NoiseSchedule.from_name("linear", 10))
    x0 = (torch.randint(0, 256, (2, 1, 8, 8)) / 127.5 - 1).float()
    bits = bits_per_dim(denoiser, x0, torch.Generator().manual_seed(0))
    assert bits.shape == (2,) and bool(torch.isfinite(bits).all()) and bool((bits > 0).all())
    # an untrained model cannot beat uniform bits over 256 levels by much: 8 bits/dim is the scale
    assert 1 < float(bits.mean()) < 100


def test_a_dit_trains_its_variance_head_with_the_hybrid_loss_and_samples_with_it():
    """DiT's existing learn_sigma head goes through the same path; fails if the DiT's forward
    ignores ``with_variance`` (tried: the Denoiser and the loss then cannot split its output)."""
    torch.manual_seed(0)
    net = build_model(*model_config("dit-tiny", image_size=8, patch_size=4, learn_sigma=True))
    torch.nn.init.normal_(net.final_layer.linear.weight, std=0.1)
    schedule = NoiseSchedule.from_name("linear", 10)
    x0 = torch.rand(2, 1, 8, 8) * 2 - 1
    denoising_loss(
        net, schedule, x0, noise=(torch.tensor([0, 5]), torch.randn(2, 1, 8, 8)), vlb_weight=0.001
    ).backward()
    rows = net.final_layer.linear.weight.grad.reshape(4, 4, 2, -1)  # (p, p, 2 C, D)
    assert rows[:, :, 1].abs().sum() > 0
    pred = Denoiser(net, schedule)(torch.randn(2, 1, 8, 8), torch.tensor([3, 4]))
    assert pred.variance_fraction is not None and pred.variance_fraction.shape == (2, 1, 8, 8)


def test_vlb_weight_without_learned_variances_is_refused_by_name():
    """Fails if a run with train.vlb_weight but a fixed-variance model starts (its vlb term would
    train nothing)."""
    with pytest.raises(DifflabError, match=r"model\.learn_sigma=true"):
        check_train_config(TrainConfig(vlb_weight=0.001), UNetConfig())
    check_train_config(TrainConfig(vlb_weight=0.001), UNetConfig(learn_sigma=True))
