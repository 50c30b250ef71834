"""ControlNet for the U-Net and the DiT: identity at initialisation, shapes, a locked base."""

import pytest
import torch

from difflab.diffusion import Conditioning, NoiseSchedule, denoising_loss
from difflab.errors import DifflabError
from difflab.models import build_model, model_config
from difflab.models.controlnet import (
    ControlledNetwork,
    ControlNetConfig,
    ControlSettings,
    build_controlnet,
)


def randomised(preset: str, **overrides) -> torch.nn.Module:
    """A base whose zero-initialised layers are random too, so that every path matters."""
    torch.manual_seed(0)
    net = build_model(*model_config(preset, **overrides))
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0, 0.1)
    return net


def batch(size: int = 28, channels: int = 1, hint_size: int | None = None):
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(2, channels, size, size, generator=generator)
    hint = torch.rand(2, 1, hint_size or size, hint_size or size, generator=generator) * 2 - 1
    return x, torch.tensor([5, 700]), Conditioning(labels=torch.tensor([3, 7]), control=hint)


@pytest.mark.parametrize(
    ("preset", "arch"), [("unet-tiny", "unet"), ("dit-tiny", "dit"), ("unet-tiny-text", "unet")]
)
def test_controlled_network_equals_the_base_exactly_at_initialisation(preset, arch):
    """Fails if a zero convolution / zero linear (or the hint encoder's joining layer) is
    initialised randomly, or if the copy is not initialised from the base."""
    extra = {"num_classes": 10} if preset != "unet-tiny-text" else {}
    base = randomised(preset, **extra)
    x, t, cond = batch()
    if preset == "unet-tiny-text":
        tokens = torch.randn(2, 3, 16)
        cond = Conditioning(
            tokens=tokens, token_mask=torch.ones(2, 3, dtype=bool), control=cond.control
        )
    net = ControlledNetwork(base, [build_controlnet(base, ControlNetConfig(base_arch=arch))])
    assert torch.equal(net(x, t, cond), base(x, t, cond))
    gaussian = build_controlnet(base, ControlNetConfig(base_arch=arch, zero_init=False))
    assert not torch.equal(ControlledNetwork(base, [gaussian])(x, t, cond), base(x, t, cond))


def test_the_copy_starts_as_the_base_and_the_zero_convolutions_get_a_gradient():
    """The trainable copy holds the base's weights; a loss step moves the zero convolutions (the
    paper's sec. 3.4: their weight gradient is nonzero although they output 0). Fails if the
    copy is re-initialised or the zero convolutions are frozen."""
    base = randomised("unet-tiny", num_classes=10)
    control = build_controlnet(base, ControlNetConfig())
    for name, value in base.state_dict().items():
        if name in control.copy.state_dict():
            assert torch.equal(control.copy.state_dict()[name], value), name
    base.requires_grad_(False)
    x, _, cond = batch()
    loss = denoising_loss(
        ControlledNetwork(base, [control]),
        NoiseSchedule.from_name("linear", 1000),
        x.clamp(-1, 1),
        cond,
    )
    loss.backward()
    assert all(conv.weight.grad.abs().sum() > 0 for conv in control.zero_convs)
    assert control.middle_zero_conv.weight.grad.abs().sum() > 0


@pytest.mark.parametrize(
    ("preset", "arch", "size", "channels", "hint_size", "expected"),
    [
        ("unet-tiny", "unet", 28, 1, 28, (2, 8, 28, 28)),  # pixel: no downsampling
        ("unet-tiny", "unet", 8, 4, 32, (2, 8, 8, 8)),  # latent f=4: 32 px hint -> 8x8 grid
        ("dit-tiny", "dit", 28, 1, 28, (2, 32, 7, 7)),  # pixel, patch 4: one token per patch
        ("dit-tiny", "dit", 8, 4, 32, (2, 32, 4, 4)),  # latent f=4, patch 2
    ],
)
def test_hint_encoder_maps_the_pixel_hint_to_the_first_feature_grid(
    preset, arch, size, channels, hint_size, expected
):
    """Fails if the hint encoder has the wrong number of stride-2 stages for a latent model."""
    overrides = dict(image_size=size, in_channels=channels, out_channels=channels)
    if arch == "dit" and size == 8:
        overrides["patch_size"] = 2
    base = randomised(preset, **overrides)
    control = build_controlnet(base, ControlNetConfig(base_arch=arch, hint_size=hint_size))
    assert control.hint_encoder(torch.randn(2, 1, hint_size, hint_size)).shape == expected
    x, t, cond = batch(size, channels, hint_size)
    with torch.no_grad():
        for p in control.parameters():
            p.normal_(0, 0.05)
    out = ControlledNetwork(base, [control])(x, t, cond)
    assert out.shape == x.shape and not torch.equal(out, base(x, t, cond))


def test_dit_control_reaches_only_through_the_copied_blocks():
    """The DiT ControlNet copies the first N blocks and adds one (B, T, D) per block; the hint
    changes the output once the zero linears are trained. Fails if the residuals are not added
    (the DiT hook) or the copy has the wrong depth."""
    base = randomised("dit-tiny", num_classes=10, depth=3)
    control = build_controlnet(base, ControlNetConfig(base_arch="dit", num_blocks=2))
    assert len(control.copy.blocks) == 2 and len(control.zero_linears) == 2
    with torch.no_grad():
        for p in control.parameters():
            p.normal_(0, 0.05)
    x, t, cond = batch()
    out = control(x, t, cond, cond.control)
    assert [tuple(f.shape) for f in out.features] == [(2, 49, 32)] * 2 and out.middle is None
    net = ControlledNetwork(base, [control])
    other = Conditioning(labels=cond.labels, control=-cond.control)
    assert not torch.equal(net(x, t, cond), net(x, t, other))


def test_bad_hints_and_a_controlnet_for_the_wrong_family_are_one_sentence_each():
    unet = randomised("unet-tiny", num_classes=10)
    dit = randomised("dit-tiny", num_classes=10)
    with pytest.raises(DifflabError, match="made for a unet but the base network is a DiT"):
        build_controlnet(dit, ControlNetConfig(base_arch="unet"))
    net = ControlledNetwork(unet, [build_controlnet(unet, ControlNetConfig())])
    x, t, cond = batch()
    for hint, words in [
        (None, "pass a hint"),
        (torch.zeros(2, 1, 14, 14), "resize it to 28x28"),
        (torch.zeros(2, 2, 28, 28), "has 2 channels"),
    ]:
        with pytest.raises(DifflabError, match=words):
            net(x, t, Conditioning(labels=cond.labels, control=hint))
    with pytest.raises(DifflabError, match="hint_size 30"):
        build_controlnet(unet, ControlNetConfig(hint_size=30))
    with pytest.raises(DifflabError, match="start"):
        ControlSettings(start=0.5, end=0.5)
