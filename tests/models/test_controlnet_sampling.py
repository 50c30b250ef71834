"""ControlNet sampling controls: scales, guess mode, start/end, several ControlNets, and their
composition with classifier-free guidance, classifier guidance and every registered sampler."""

import pytest
import torch

from difflab.config import DiffusionConfig
from difflab.diffusion import NULL_LABEL, Conditioning
from difflab.diffusion.schedule import schedule_from_config
from difflab.models import build_model, model_config
from difflab.models.controlnet import (
    GUESS_MODE_DECAY,
    ControlledNetwork,
    ControlNetConfig,
    ControlSettings,
    active_steps,
    build_controlnet,
)
from difflab.pipelines import DiffusionPipeline
from difflab.samplers import SAMPLER_NAMES, Guidance


def randomised(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0, 0.05)
    return module


@pytest.fixture(scope="module")
def parts():
    base = randomised(build_model(*model_config("unet-tiny", num_classes=10)), 0)
    base.requires_grad_(False)
    first = randomised(build_controlnet(base, ControlNetConfig()), 1)
    second = randomised(build_controlnet(base, ControlNetConfig()), 2)
    return base, first, second


def inputs(batch: int = 2, hint_channels: int = 1):
    generator = torch.Generator().manual_seed(3)
    x = torch.randn(batch, 1, 28, 28, generator=generator)
    hint = torch.rand(batch, hint_channels, 28, 28, generator=generator) * 2 - 1
    labels = torch.arange(batch) % 10
    return x, torch.full((batch,), 400), Conditioning(labels=labels, control=hint)


def test_per_block_scales_and_guess_mode_decay(parts):
    """Guess mode = control only where labels are not dropped, output i of K times 0.825^(K-1-i).
    Fails if guess mode controls the unconditional branch or drops the decay."""
    base, first, _ = parts
    x, t, cond = inputs()
    count = first(x, t, cond, cond.control).count  # skips + middle
    decayed = [GUESS_MODE_DECAY ** (count - 1 - i) for i in range(count)]
    guess = ControlledNetwork(base, [first], ControlSettings(guess_mode=True))
    per_block = ControlledNetwork(base, [first], ControlSettings(scale=decayed))
    torch.testing.assert_close(guess(x, t, cond), per_block(x, t, cond), rtol=0, atol=1e-6)
    dropped = cond.dropped()  # labels NULL_LABEL: the unconditional branch
    assert bool((dropped.labels == NULL_LABEL).all())
    assert torch.equal(guess(x, t, dropped), base(x, t, dropped))
    assert not torch.equal(per_block(x, t, dropped), base(x, t, dropped))


def test_start_and_end_fractions_gate_control_by_step(parts):
    """Step i of S is controlled when i/S >= start and (i+1)/S <= end; a timestep between two of
    the run's (a higher-order sampler's stage) counts as the step it lies in."""
    timesteps = torch.tensor([900, 600, 300, 0])  # S = 4
    table = active_steps(timesteps, 1000, start=0.5, end=1.0)
    assert [bool(table[t]) for t in (900, 700, 600, 300, 150, 0)] == [
        False, False, False, True, True, True,
    ]  # fmt: skip
    assert [bool(t) for t in active_steps(timesteps, 1000, 0.0, 0.5)[[900, 600, 300]]] == [
        True, True, False,
    ]  # fmt: skip
    base, first, _ = parts
    net = ControlledNetwork(base, [first], ControlSettings(start=0.5), table)
    x, _, cond = inputs()
    early, late = torch.full((2,), 900), torch.full((2,), 300)
    assert torch.equal(net(x, early, cond), base(x, early, cond))
    assert not torch.equal(net(x, late, cond), base(x, late, cond))


def test_two_controlnets_sum_their_outputs_each_with_its_scale(parts):
    """Fails if the residuals of several ControlNets are not summed, or a scale is shared."""
    base, first, second = parts
    x, t, cond = inputs(hint_channels=2)  # the two hints stacked along the channels
    one = Conditioning(labels=cond.labels, control=cond.control[:, :1])
    both = ControlledNetwork(base, [first, second], ControlSettings(scale=[1.0, 0.0]))
    assert torch.equal(both(x, t, cond), ControlledNetwork(base, [first])(x, t, one))
    a = first(x, t, cond, cond.control[:, :1])
    b = second(x, t, cond, cond.control[:, 1:])
    summed = both.with_settings(ControlSettings(scale=[0.5, 2.0])).residuals(x, t, cond)
    torch.testing.assert_close(summed.middle, 0.5 * a.middle + 2.0 * b.middle)


@pytest.mark.parametrize("sampler", SAMPLER_NAMES)
def test_every_sampler_composes_control_with_both_guidances(parts, sampler):
    """Every registered sampler runs a controlled network under classifier-free and classifier
    guidance; the hint changes the samples and scale 0 gives the base's exactly."""
    base, first, _ = parts
    schedule = schedule_from_config(DiffusionConfig())
    controlled = DiffusionPipeline.from_network(ControlledNetwork(base, [first]), schedule)
    plain = DiffusionPipeline.from_network(base, schedule)

    def classifier(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return torch.stack([x_t.mean(dim=(1, 2, 3)) * k for k in range(10)], dim=1)

    guidance = Guidance(classifier=classifier, classifier_scale=2.0, guidance_scale=3.0)
    _, _, cond = inputs()
    run = dict(steps=3, sampler=sampler, guidance=guidance, seed=5)
    images = controlled.generate(2, cond, **run)
    assert images.shape == (2, 1, 28, 28) and bool(torch.isfinite(images).all())
    other = Conditioning(labels=cond.labels, control=-cond.control)
    assert not torch.equal(images, controlled.generate(2, other, **run))
    labels_only = Conditioning(labels=cond.labels)
    assert torch.equal(
        controlled.generate(2, cond, control_scale=0.0, **run),
        plain.generate(2, labels_only, **run),
    )
