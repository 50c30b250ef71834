"""Imagen's U-Net additions: pooled text, 1/sqrt(2) skips, super-resolution input, noise level."""

from __future__ import annotations

import math

import pytest
import torch

from difflab.diffusion import Conditioning
from difflab.errors import DifflabError
from difflab.models import UNet, UNetConfig
from difflab.models.imagen_inputs import noise_augment

SR = UNetConfig(
    image_size=8, in_channels=3, out_channels=3, base_channels=8, channel_mult=(1, 2),
    attention_resolutions=(4,), num_heads=2, context_dim=16, pooled_text=True,
    skip_scale=1 / math.sqrt(2), low_res_channels=3,
)  # fmt: skip


def randomised(config: UNetConfig) -> UNet:
    """A network whose zero-initialised output layers are random, so every input can show."""
    torch.manual_seed(0)
    net = UNet(config).eval()
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0, 0.2)
    return net


def inputs(b: int = 2):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(b, 3, 8, 8, generator=g)
    tokens = torch.randn(b, 5, 16, generator=g)
    mask = torch.tensor([[True] * 5, [True, True, False, False, False]])[:b]
    low = torch.randn(b, 3, 4, 4, generator=g)
    return x, torch.tensor([3, 700])[:b], tokens, mask, low


def test_noise_level_and_low_res_pass_through_the_network():
    """Fails if cond.noise_level or cond.low_res is ignored, or if a sample's level leaks into
    another sample's output."""
    net = randomised(SR)
    x, t, tokens, mask, low = inputs()
    cond = Conditioning(
        tokens=tokens, token_mask=mask, low_res=low, noise_level=torch.tensor([0.1, 0.1])
    )
    out = net(x, t, cond)
    assert out.shape == (2, 3, 8, 8)
    moved = net(
        x,
        t,
        Conditioning(
            tokens=tokens, token_mask=mask, low_res=low, noise_level=torch.tensor([0.1, 0.6])
        ),
    )
    assert torch.equal(out[0], moved[0]) and not torch.allclose(out[1], moved[1])
    other_low = net(
        x,
        t,
        Conditioning(
            tokens=tokens,
            token_mask=mask,
            low_res=low.flip(0),
            noise_level=torch.tensor([0.1, 0.1]),
        ),
    )
    assert not torch.allclose(out, other_low)
    assert set(net.conditioning_fields) == {"tokens", "token_mask", "low_res", "noise_level"}


def test_pooled_text_and_null_prompt():
    """Fails if the pooled embedding ignores the mask (padding changes the output) or if a dropped
    prompt does not reach the learned null vector."""
    config = UNetConfig(**{**SR.__dict__, "low_res_channels": 0, "in_channels": 3})
    net = randomised(config)
    x, t, tokens, mask, _ = inputs()
    out = net(x, t, Conditioning(tokens=tokens, token_mask=mask))
    padded = tokens.clone()
    padded[1, 2:] = 99.0  # behind the mask
    assert torch.allclose(out, net(x, t, Conditioning(tokens=padded, token_mask=mask)), atol=1e-5)
    pooled = net.text_pool(tokens, torch.zeros_like(mask))
    assert torch.equal(pooled, net.text_pool.null.expand(2, -1))


def test_skip_scale_multiplies_the_skips():
    """Fails if skip_scale is not applied (the two networks would then agree)."""
    config = UNetConfig(
        image_size=8,
        in_channels=3,
        out_channels=3,
        base_channels=8,
        channel_mult=(1, 2),
        attention_resolutions=(),
    )
    net = randomised(config)
    scaled = UNet(UNetConfig(**{**config.__dict__, "skip_scale": 0.5})).eval()
    scaled.load_state_dict(net.state_dict())
    x, t, *_ = inputs()
    assert not torch.allclose(net(x, t), scaled(x, t))


def test_stages_that_do_not_chain_are_one_sentence():
    """Fails if a missing, mis-sized or mis-channelled low-res image gets past the network."""
    net = UNet(SR)
    x, t, tokens, mask, low = inputs()
    text = dict(tokens=tokens, token_mask=mask)
    with pytest.raises(DifflabError, match="no low_res image"):
        net(x, t, Conditioning(**text))
    with pytest.raises(DifflabError, match="channels do not chain"):
        net(x, t, Conditioning(**text, low_res=low[:, :1]))
    with pytest.raises(DifflabError, match="resolutions do not chain"):
        net(x, t, Conditioning(**text, low_res=torch.zeros(2, 3, 16, 16)))


def test_noise_augment_is_variance_preserving_and_exact_at_the_ends():
    """Fails if a = 0 does not return the image or a = 1 does not return the noise."""
    x, eps = torch.randn(3, 3, 4, 4), torch.randn(3, 3, 4, 4)
    out = noise_augment(x, torch.tensor([0.0, 1.0, 0.5]), eps)
    torch.testing.assert_close(out[0], x[0])
    torch.testing.assert_close(out[1], eps[1], atol=1e-6, rtol=0)
    torch.testing.assert_close(out[2], (x[2] + eps[2]) / math.sqrt(2))
