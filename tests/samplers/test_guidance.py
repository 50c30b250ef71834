"""Guidance wrappers: Algorithm 1 and 2 of Dhariwal & Nichol (2021), classifier-free guidance."""

import math

import pytest
import torch
from torch import nn

from difflab.diffusion import (
    NULL_LABEL,
    Conditioning,
    Denoiser,
    NoiseSchedule,
    timestep_sequence,
)
from difflab.errors import DifflabError
from difflab.models import build_model, model_config
from difflab.models.classifier import NoisyClassifier, classifier_config
from difflab.pipelines import DiffusionPipeline
from difflab.samplers import (
    AncestralClassifierGuidance,
    ClassifierFreeGuidance,
    ClassifierGuidance,
    Guidance,
    StaticThreshold,
    classifier_log_prob_grad,
    ddim_sample,
    ddpm_sample,
    get_sampler,
)
from tests.helpers import GaussianOptimalEps, RandomLinearNet

SHAPE = (1, 4, 4)  # C, H, W of the analytic tests
NUM_CLASSES = 3


@pytest.fixture(scope="module")
def schedule():
    return NoiseSchedule.from_name("linear", 1000)


class LinearClassifier(nn.Module):
    """``log p(y | x_t) = c_t <w_y, x> - logsumexp_k c_t <w_k, x>`` with ``c_t = 1 + t / 1000``.

    Its gradient is known in closed form: ``∇_x log p(y | x) = c_t (w_y - Σ_k p_k w_k)``.
    """

    def __init__(self, num_classes: int = NUM_CLASSES, seed: int = 0) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.weight = nn.Parameter(
            torch.randn(num_classes, math.prod(SHAPE), generator=generator, dtype=torch.float64)
        )
        self.calls: list[tuple[torch.Tensor, torch.Tensor]] = []

    def scale(self, t: torch.Tensor) -> torch.Tensor:
        return 1 + t.double() / 1000

    def forward(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        self.calls.append((x_t.detach(), t.detach()))
        return self.scale(t)[:, None] * (x_t.flatten(1) @ self.weight.T)  # (B, K)

    def log_prob_grad(self, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        probs = torch.softmax(self.scale(t)[:, None] * (x.flatten(1) @ self.weight.T), dim=1)
        mean_w = probs @ self.weight  # (B, D)
        grad = self.scale(t)[:, None] * (self.weight[labels] - mean_w)
        return grad.reshape(x.shape)


class ConditionalLinearNet(nn.Module):
    """A class-conditional test network: a fixed function of (x_t, t) plus a per-label offset."""

    def __init__(self, prediction: str = "eps", num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        self.prediction = prediction
        self.base = RandomLinearNet(prediction)
        generator = torch.Generator().manual_seed(5)
        self.offsets = torch.randn(
            num_classes + 1, *SHAPE, generator=generator, dtype=torch.float64
        )
        self.batch_sizes: list[int] = []

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        self.batch_sizes.append(x_t.shape[0])
        labels = cond.labels if cond.labels is not None else torch.full_like(t, NULL_LABEL)
        rows = torch.where(labels == NULL_LABEL, len(self.offsets) - 1, labels)
        return self.base(x_t, t, cond) + 0.1 * self.offsets[rows].to(x_t.dtype)


class PatchTransformerNet(nn.Module):
    """A DiT-shaped network: 2×2 patches -> tokens (+ t and class tokens) -> transformer -> v."""

    prediction = "v"

    def __init__(self, channels: int = 1, size: int = 4, dim: int = 16) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.size, self.channels = size, channels
        self.patch = nn.Linear(4 * channels, dim)
        self.position = nn.Parameter(torch.randn((size // 2) ** 2, dim) * 0.1)
        self.time = nn.Linear(1, dim)
        self.label = nn.Embedding(NUM_CLASSES + 1, dim)
        self.block = nn.TransformerEncoderLayer(dim, 2, 32, dropout=0.0, batch_first=True)
        self.out = nn.Linear(dim, 4 * channels)
        self.double()

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        B, C, H, W = x_t.shape
        patches = x_t.reshape(B, C, H // 2, 2, W // 2, 2).permute(0, 2, 4, 1, 3, 5)
        tokens = self.patch(patches.reshape(B, -1, 4 * C)) + self.position  # (B, N, D)
        labels = cond.labels if cond.labels is not None else torch.full_like(t, NULL_LABEL)
        extra = self.time(t.double()[:, None] / 1000) + self.label(
            torch.where(labels == NULL_LABEL, NUM_CLASSES, labels)
        )  # (B, D)
        h = self.block(torch.cat([extra[:, None], tokens], dim=1))[:, 1:]  # (B, N, D)
        out = self.out(h).reshape(B, H // 2, W // 2, C, 2, 2).permute(0, 3, 1, 4, 2, 5)
        return out.reshape(B, C, H, W)


def noise(batch: int = 3, seed: int = 0) -> torch.Tensor:
    return torch.randn(
        batch, *SHAPE, generator=torch.Generator().manual_seed(seed), dtype=torch.float64
    )


def labels_cond(*labels: int) -> Conditioning:
    return Conditioning(labels=torch.tensor(labels))


# --------------------------------------------------------------------------- Algorithm 2


def test_algorithm2_with_scale_zero_equals_unguided_sampling_exactly(schedule):
    denoiser = Denoiser(RandomLinearNet(), schedule)
    guided = ClassifierGuidance(denoiser, LinearClassifier(), 0.0)
    timesteps = timestep_sequence(1000, 10)
    cond = labels_cond(0, 1, 2)
    for eta in (0.0, 1.0):
        expected = ddim_sample(
            denoiser, noise(), timesteps, cond, eta=eta, generator=torch.Generator().manual_seed(4)
        )
        got = ddim_sample(
            guided, noise(), timesteps, cond, eta=eta, generator=torch.Generator().manual_seed(4)
        )
        assert torch.equal(got, expected)


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_algorithm2_eps_matches_the_closed_form_gradient(schedule, prediction):
    denoiser = Denoiser(RandomLinearNet(prediction), schedule)
    classifier = LinearClassifier()
    scale = 2.5
    guided = ClassifierGuidance(denoiser, classifier, scale)
    x_t, t, cond = noise(), torch.tensor([10, 500, 990]), labels_cond(2, 0, 1)
    pred, plain = guided(x_t, t, cond), denoiser(x_t, t, cond)
    a = schedule.alpha_bar_at(t, x_t)
    grad = classifier.log_prob_grad(x_t, t, cond.labels)
    assert torch.allclose(pred.eps, plain.eps - scale * (1 - a).sqrt() * grad, atol=1e-12)
    # x0 is the one consistent with the guided eps
    assert torch.allclose(a.sqrt() * pred.x0 + (1 - a).sqrt() * pred.eps, x_t, atol=1e-10)
    # the classifier saw exactly (x_t, t)
    seen_x, seen_t = classifier.calls[-1]
    assert torch.equal(seen_x, x_t) and torch.equal(seen_t, t)


def test_gradient_is_computed_inside_no_grad_and_inference_mode(schedule):
    classifier = LinearClassifier()
    x, t, labels = noise(), torch.tensor([3, 3, 3]), torch.tensor([0, 1, 2])
    expected = classifier.log_prob_grad(x, t, labels)
    with torch.no_grad():
        assert torch.allclose(classifier_log_prob_grad(classifier, x, t, labels), expected)
    with torch.inference_mode():
        x_inf, t_inf = x.clone(), t.clone()
        assert torch.allclose(classifier_log_prob_grad(classifier, x_inf, t_inf, labels), expected)
    assert classifier.weight.grad is None  # only x_t is differentiated


def test_a_null_label_leaves_its_sample_unguided(schedule):
    denoiser = Denoiser(RandomLinearNet(), schedule)
    guided = ClassifierGuidance(denoiser, LinearClassifier(), 4.0)
    x_t, t = noise(), torch.tensor([400, 400, 400])
    pred = guided(x_t, t, labels_cond(1, NULL_LABEL, 2))
    plain = denoiser(x_t, t, None)
    assert torch.equal(pred.eps[1], plain.eps[1])
    assert not torch.allclose(pred.eps[0], plain.eps[0])


# --------------------------------------------------------------------------- Algorithm 1


def first_step(denoiser, x_T, timesteps, cond, variance):
    """The state after the first ancestral step (same noise for every call)."""
    states = []
    ddpm_sample(
        denoiser,
        x_T,
        timesteps,
        cond,
        variance=variance,
        generator=torch.Generator().manual_seed(9),
        callback=lambda info: states.append(info.x),
    )
    return states[0]


@pytest.mark.parametrize("variance", ["posterior", "beta"])
@pytest.mark.parametrize("steps", [1000, 20])
def test_algorithm1_shifts_the_ddpm_mean_by_s_sigma_grad(schedule, variance, steps):
    """Same noise, so x_guided - x_plain is the mean shift, which must be s Σ ∇ log p(y | x_t)."""
    denoiser = Denoiser(RandomLinearNet(), schedule)
    classifier = LinearClassifier()
    scale = 3.0
    timesteps = timestep_sequence(1000, steps)
    guided = AncestralClassifierGuidance(denoiser, classifier, scale, timesteps, variance)
    x_T, cond = noise(), labels_cond(0, 2, 1)
    shift = first_step(guided, x_T, timesteps, cond, variance) - first_step(
        denoiser, x_T, timesteps, cond, variance
    )
    t, t_prev = int(timesteps[0]), int(timesteps[1])
    a_t, a_prev = schedule.alpha_bar[t], schedule.alpha_bar[t_prev]
    beta = 1 - a_t / a_prev
    sigma2 = beta * (1 - a_prev) / (1 - a_t) if variance == "posterior" else beta
    grad = classifier.log_prob_grad(x_T, torch.full((3,), t), cond.labels)
    assert torch.allclose(shift, scale * sigma2 * grad, rtol=1e-9, atol=1e-12)


def test_algorithm1_equals_ddim_eta_one_and_leaves_the_last_step_alone(schedule):
    denoiser = Denoiser(RandomLinearNet(), schedule)
    timesteps = timestep_sequence(1000, 10)
    guided = AncestralClassifierGuidance(denoiser, LinearClassifier(), 2.0, timesteps)
    cond = labels_cond(0, 1, 2)
    ddpm = ddpm_sample(guided, noise(), timesteps, cond, generator=torch.Generator().manual_seed(1))
    ddim = ddim_sample(
        guided, noise(), timesteps, cond, eta=1.0, generator=torch.Generator().manual_seed(1)
    )
    assert torch.allclose(ddpm, ddim, atol=1e-9)
    # the last move goes to clean data without noise: Σ = 0, no shift
    x, t = noise(), torch.full((3,), int(timesteps[-1]))
    assert torch.equal(guided(x, t, cond).x0, denoiser(x, t, cond).x0)


def test_algorithm1_refuses_a_timestep_it_was_not_built_for(schedule):
    denoiser = Denoiser(RandomLinearNet(), schedule)
    guided = AncestralClassifierGuidance(
        denoiser, LinearClassifier(), 1.0, timestep_sequence(1000, 10)
    )
    with pytest.raises(DifflabError, match="timestep sequence"):
        guided(noise(), torch.full((3,), 7), labels_cond(0, 1, 2))


# --------------------------------------------------------------------------- classifier-free


@pytest.mark.parametrize("prediction", ["eps", "v"])
def test_cfg_with_w_one_is_conditional_and_w_zero_unconditional_sampling(schedule, prediction):
    denoiser = Denoiser(ConditionalLinearNet(prediction), schedule)
    timesteps, cond = timestep_sequence(1000, 8), labels_cond(0, 1, 2)
    for w, branch in ((1.0, cond), (0.0, cond.dropped())):
        for eta in (0.0, 0.5):
            expected = ddim_sample(
                denoiser,
                noise(),
                timesteps,
                branch,
                eta=eta,
                generator=torch.Generator().manual_seed(2),
            )
            got = ddim_sample(
                ClassifierFreeGuidance(denoiser, w),
                noise(),
                timesteps,
                cond,
                eta=eta,
                generator=torch.Generator().manual_seed(2),
            )
            assert torch.equal(got, expected)


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_cfg_is_one_batched_forward_with_the_papers_combination(schedule, prediction):
    net = ConditionalLinearNet(prediction)
    denoiser = Denoiser(net, schedule)
    w = 3.0
    x_t, t, cond = noise(), torch.tensor([100, 600, 900]), labels_cond(2, 0, 1)
    net.batch_sizes.clear()
    pred = ClassifierFreeGuidance(denoiser, w)(x_t, t, cond)
    assert net.batch_sizes == [6]  # one forward over the doubled batch
    conditional, unconditional = denoiser(x_t, t, cond), denoiser(x_t, t, cond.dropped())
    expected = unconditional.eps + w * (conditional.eps - unconditional.eps)
    assert torch.allclose(pred.eps, expected, atol=1e-12)
    a = schedule.alpha_bar_at(t, x_t)
    assert torch.allclose(a.sqrt() * pred.x0 + (1 - a).sqrt() * pred.eps, x_t, atol=1e-10)


def test_cfg_needs_conditioning_for_every_sample(schedule):
    guided = ClassifierFreeGuidance(Denoiser(ConditionalLinearNet(), schedule), 2.0)
    with pytest.raises(DifflabError, match="needs conditioning to drop"):
        guided(noise(), torch.tensor([1, 1, 1]), Conditioning())
    with pytest.raises(DifflabError, match="one per sample"):
        guided(noise(), torch.tensor([1, 1, 1]), labels_cond(0, 1))


# --------------------------------------------------------------------------- stacking, backbones


def test_wrappers_stack_cfg_inside_classifier_guidance(schedule):
    denoiser = Denoiser(ConditionalLinearNet(), schedule)
    classifier = LinearClassifier()
    cfg = ClassifierFreeGuidance(denoiser, 2.0)
    stacked = ClassifierGuidance(cfg, classifier, 1.5)
    x_t, t, cond = noise(), torch.tensor([50, 500, 950]), labels_cond(1, 2, 0)
    a = schedule.alpha_bar_at(t, x_t)
    grad = classifier.log_prob_grad(x_t, t, cond.labels)
    expected = cfg(x_t, t, cond).eps - 1.5 * (1 - a).sqrt() * grad
    assert torch.allclose(stacked(x_t, t, cond).eps, expected, atol=1e-12)
    # and with static thresholding inside, as guided-diffusion clips before guiding
    clipped = ClassifierGuidance(StaticThreshold(denoiser), classifier, 1.5)
    x0 = clipped(x_t, t, cond).x0
    assert torch.allclose(
        x0, StaticThreshold(denoiser)(x_t, t, cond).x0 + 1.5 * (1 - a) / a.sqrt() * grad
    )


def test_guidance_spec_builds_algorithm_1_for_ddpm_and_2_otherwise(schedule):
    denoiser = Denoiser(ConditionalLinearNet(), schedule)
    spec = Guidance(LinearClassifier(), 2.0, 3.0)
    timesteps = timestep_sequence(1000, 5)
    ddim = spec.wrap(denoiser, get_sampler("ddim"), timesteps)
    ddpm = spec.wrap(denoiser, get_sampler("ddpm"), timesteps)
    assert isinstance(ddim, ClassifierGuidance) and isinstance(ddim.inner, ClassifierFreeGuidance)
    assert isinstance(ddpm, AncestralClassifierGuidance)
    assert Guidance().wrap(denoiser, get_sampler("ddim"), timesteps) is denoiser
    assert spec.describe() == "guidance scale 3, classifier scale 2"


@pytest.mark.parametrize("sampler", ["ddim", "ddpm"])
def test_guidance_works_with_a_dit_shaped_network(schedule, sampler):
    """Any backbone that follows the contract: a patch transformer predicting v."""
    denoiser = Denoiser(PatchTransformerNet(), schedule)
    classifier = LinearClassifier()
    timesteps, cond = timestep_sequence(1000, 6), labels_cond(0, 1, 2)
    guided = Guidance(classifier, 2.0, 2.0).wrap(denoiser, get_sampler(sampler), timesteps)
    run = ddim_sample if sampler == "ddim" else ddpm_sample
    with torch.no_grad():
        images = run(guided, noise(), timesteps, cond, generator=torch.Generator().manual_seed(0))
        plain = run(denoiser, noise(), timesteps, cond, generator=torch.Generator().manual_seed(0))
    assert images.shape == (3, *SHAPE) and torch.isfinite(images).all()
    assert not torch.allclose(images, plain)
    # the Algorithm 2 formula holds for this backbone too
    x_t, t = noise(), torch.tensor([700, 700, 700])
    with torch.no_grad():
        pred = ClassifierGuidance(denoiser, classifier, 2.0)(x_t, t, cond)
        plain_eps = denoiser(x_t, t, cond).eps
    a = schedule.alpha_bar_at(t, x_t)
    grad = classifier.log_prob_grad(x_t, t, cond.labels)
    assert torch.allclose(pred.eps, plain_eps - 2.0 * (1 - a).sqrt() * grad, atol=1e-10)


def test_guidance_steers_gaussian_samples_toward_the_target_class(schedule):
    """Data N(0.3, 0.5²); a classifier that likes large pixels for class 1 and small for 0."""
    denoiser = Denoiser(GaussianOptimalEps(schedule), schedule)

    class SignClassifier(nn.Module):
        def forward(self, x_t, t):
            mean = x_t.flatten(1).mean(1, keepdim=True)  # (B, 1)
            return torch.cat([-4 * mean, 4 * mean], dim=1)  # (B, 2)

    cond = Conditioning(labels=torch.tensor([0, 1]).repeat(200))
    x_T = torch.randn(400, *SHAPE, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    timesteps = timestep_sequence(1000, 50)
    images = ddim_sample(ClassifierGuidance(denoiser, SignClassifier(), 3.0), x_T, timesteps, cond)
    means = images.flatten(1).mean(1)
    assert means[1::2].mean() > 0.3 + 0.1 > 0.3 - 0.1 > means[0::2].mean()


@pytest.mark.parametrize(
    "sampler,eta,steps", [("ddim", 0.0, 3), ("ddim", 0.7, 5), ("ddpm", 0.0, 4)]
)
def test_a_real_noisy_classifier_guides_a_real_unet(sampler, eta, steps):
    schedule = NoiseSchedule.from_name("linear", 100)
    torch.manual_seed(0)
    net = build_model(*model_config("unet-tiny", image_size=8, num_classes=10))
    for p in net.parameters():
        nn.init.normal_(p, std=0.05)
    classifier = NoisyClassifier(classifier_config("classifier-tiny", image_size=8)).eval()
    model = DiffusionPipeline.from_network(net, schedule)
    cond = Conditioning(labels=torch.tensor([0, 3, 9, 5]))
    common = dict(sampler=sampler, steps=steps, eta=eta, seed=1)
    plain = model.generate(4, cond, **common)
    guided = model.generate(4, cond, **common, guidance=Guidance(classifier, 5.0, 2.0))
    assert guided.shape == (4, 1, 8, 8) and torch.isfinite(guided).all()
    assert not torch.allclose(plain, guided)
    unguided = Guidance(classifier, 0.0, 1.0)
    assert torch.equal(model.generate(4, cond, **common, guidance=unguided), plain)


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("value", [-0.5, float("nan"), float("inf")])
def test_scales_must_be_finite_and_non_negative(schedule, value):
    denoiser = Denoiser(RandomLinearNet(), schedule)
    with pytest.raises(DifflabError, match="classifier_scale"):
        ClassifierGuidance(denoiser, LinearClassifier(), value)
    with pytest.raises(DifflabError, match="classifier_scale"):
        AncestralClassifierGuidance(denoiser, LinearClassifier(), value)
    with pytest.raises(DifflabError, match="guidance_scale"):
        ClassifierFreeGuidance(denoiser, value)
    with pytest.raises(DifflabError, match="guidance_scale"):
        Guidance(guidance_scale=value)


def test_labels_are_required_and_checked_against_the_classifier(schedule):
    guided = ClassifierGuidance(Denoiser(RandomLinearNet(), schedule), LinearClassifier(), 1.0)
    x_t, t = noise(), torch.tensor([5, 5, 5])
    with pytest.raises(DifflabError, match="target labels"):
        guided(x_t, t, None)
    with pytest.raises(DifflabError, match="one per sample"):
        guided(x_t, t, labels_cond(0, 1))
    with pytest.raises(DifflabError, match=r"target label 3 is out of range .* 3 classes"):
        guided(x_t, t, labels_cond(0, 3, 1))


def test_the_pipeline_explains_what_guidance_cannot_do():
    schedule = NoiseSchedule.from_name("linear", 100)
    unconditional = DiffusionPipeline.from_network(
        build_model(*model_config("unet-tiny", image_size=8)), schedule
    )
    classifier = NoisyClassifier(classifier_config("classifier-tiny", image_size=8)).eval()
    cond = Conditioning(labels=torch.tensor([1, 2]))
    with pytest.raises(DifflabError, match="needs a conditional model"):
        unconditional.generate(2, cond, steps=2, guidance=Guidance(guidance_scale=2.0))
    with pytest.raises(DifflabError, match="target labels"):
        unconditional.generate(2, steps=2, guidance=Guidance(classifier, 1.0))
    with pytest.raises(DifflabError, match=r"0\.\.9 for the classifier"):
        unconditional.generate(
            2, Conditioning(labels=torch.tensor([1, 10])), steps=2, guidance=Guidance(classifier)
        )
    other = NoisyClassifier(classifier_config("classifier-tiny", image_size=12)).eval()
    with pytest.raises(DifflabError, match="12×12 images but the model makes 1×8×8"):
        unconditional.generate(2, cond, steps=2, guidance=Guidance(other))
    # an unconditional model takes labels as the classifier's targets only
    images = unconditional.generate(2, cond, steps=2, guidance=Guidance(classifier))
    assert images.shape == (2, 1, 8, 8)
    with pytest.raises(DifflabError, match="unconditional"):
        unconditional.generate(2, cond, steps=2)
