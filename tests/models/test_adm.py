"""The ADM architecture options of "Diffusion Models Beat GANs" (issue 20) in the U-Net, the
noisy classifier and the ``adm-*`` presets."""

import dataclasses
import hashlib

import pytest
import torch

from difflab.diffusion import Conditioning
from difflab.errors import DifflabError
from difflab.models import UNet, UNetConfig, build_model, model_config
from difflab.models.classifier import NoisyClassifier, classifier_config
from difflab.nn import Downsample, ResBlock, Upsample

# sha256 of "key:shape;..." of UNet(UNetConfig()).state_dict() before the ADM options existed
# (computed from the commit before them): the default network, and so every shipped checkpoint's
# layout, must not change
DEFAULT_LAYOUT_SHA256 = "65afe8a05eca00fd94c9e565d991d0b99d6ec47eb536ea05c6ed4b4707bc2886"


def layout_digest(net: torch.nn.Module) -> str:
    described = ";".join(f"{k}:{tuple(v.shape)}" for k, v in net.state_dict().items())
    return hashlib.sha256(described.encode()).hexdigest()


def test_the_default_config_builds_the_earlier_network():
    """Fails if a new field's default adds, renames or reshapes any weight, or if the default
    network resamples with residual blocks instead of Downsample / Upsample."""
    net = UNet(UNetConfig())
    assert layout_digest(net) == DEFAULT_LAYOUT_SHA256
    assert not any(isinstance(m, ResBlock) and m.resample != "none" for m in net.modules())
    assert not any(isinstance(m, ResBlock) and m.rescale for m in net.modules())
    assert any(isinstance(m, Downsample) for m in net.modules())


@pytest.mark.parametrize(("size", "rescale"), [(28, False), (25, True), (13, False)])
def test_biggan_updown_unet_keeps_odd_sizes_and_starts_at_zero(size, rescale):
    """28 -> 14 -> 7 -> 14 -> 28, 25 -> 13 -> 7 -> 13 -> 25: the up blocks take the skip's size.
    The zero-initialised output conv makes the untrained net predict 0 (rescaled or not)."""
    config = UNetConfig(
        image_size=size,
        base_channels=8,
        attention_resolutions=(7,),
        resblock_updown=True,
        rescale_residual=rescale,
    )
    net = UNet(config)
    assert not any(isinstance(m, Downsample | Upsample) for m in net.modules())
    modes = [m.resample for m in net.modules() if isinstance(m, ResBlock)]
    assert modes.count("down") == modes.count("up") == len(config.channel_mult) - 1
    out = net(torch.randn(2, 1, size, size), torch.tensor([3, 700]))
    assert out.shape == (2, 1, size, size) and torch.count_nonzero(out) == 0


def test_the_options_change_the_function_and_every_weight_trains():
    """With random output layers, rescaling changes the output; one backward reaches every weight
    of an up/down, rescaled, multi-resolution, fixed-head-width U-Net."""
    base = dict(image_size=14, base_channels=8, channel_mult=(1, 2), attention_resolutions=(14, 7))
    torch.manual_seed(0)
    net = UNet(UNetConfig(**base, resblock_updown=True, head_channels=4))
    with torch.no_grad():
        for p in net.parameters():
            if not p.any():  # the zero-initialised output layers
                p.normal_(0, 0.1)
    rescaled = UNet(
        UNetConfig(**base, resblock_updown=True, head_channels=4, rescale_residual=True)
    )
    rescaled.load_state_dict(net.state_dict())
    x, t = torch.randn(2, 1, 14, 14), torch.tensor([5, 500])
    assert not torch.allclose(net(x, t), rescaled(x, t))
    rescaled(x, t).square().mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in rescaled.parameters())


def test_the_noisy_classifier_takes_the_options():
    """The classifier shares build_encoder: with resblock_updown its down path resamples in
    residual blocks and still ends at the attention pool's size."""
    config = classifier_config("classifier-tiny", resblock_updown=True, rescale_residual=True)
    clf = NoisyClassifier(config)
    assert any(isinstance(m, ResBlock) and m.resample == "down" for m in clf.modules())
    assert clf(torch.randn(3, 1, 28, 28), torch.tensor([0, 10, 999])).shape == (3, 10)


def meta_parameters(preset: str) -> int:
    """Parameters counted on the meta device; the class table, (classes + null row) x 4 x
    channels, is added by hand (a meta Embedding's normal_ init costs seconds of compile imports)."""
    arch, config = model_config(preset)
    with torch.device("meta"):
        net = build_model(arch, dataclasses.replace(config, num_classes=0))
    table = (config.num_classes + 1) * 4 * config.base_channels
    return sum(p.numel() for p in net.parameters()) + table


@pytest.mark.parametrize(
    ("preset", "paper_millions"), [("adm-64", 296), ("adm-128", 422), ("adm-256", 554)]
)
def test_imagenet_presets_have_the_papers_parameter_counts(preset, paper_millions):
    """Dhariwal & Nichol 2021, Table 10: 296M / 422M / 554M parameters (rounded to 1M; counted
    on the meta device, no memory). Fails if a preset's depth, widths, attention sites or
    BigGAN blocks differ from the appendix (e.g. channel_mult (1, 2, 3, 4) at 128: 402M)."""
    assert round(meta_parameters(preset) / 1e6) == paper_millions
    _, config = model_config(preset)
    assert (config.num_classes, config.learn_sigma, config.resblock_updown) == (1000, True, True)
    assert (config.attention_resolutions, config.head_channels) == ((32, 16, 8), 64)


def test_the_mnist_preset_is_class_conditional_with_learned_variances():
    """adm-mnist at half width (32 channels, one 64-channel head at 14 and 7)."""
    net = build_model(*model_config("adm-mnist", base_channels=32))
    x, t = torch.randn(2, 1, 28, 28), torch.tensor([1, 900])
    out = net(x, t, Conditioning(labels=torch.tensor([3, 7])), with_variance=True)
    assert out.shape == (2, 2, 28, 28)


def test_a_head_wider_than_its_attention_site_is_one_sentence():
    with pytest.raises(DifflabError, match="head_channels=64 is wider"):
        build_model(*model_config("adm-mnist", base_channels=16))
