"""The noisy classifier (the U-Net's encoder + attention pool) and the U-Net refactor it needed."""

import hashlib

import pytest
import torch

from difflab.errors import DifflabError
from difflab.models import build_model, model_config
from difflab.models.classifier import (
    CLASSIFIER_PRESETS,
    AttentionPool,
    NoisyClassifier,
    classifier_config,
)
from difflab.nn import ResBlock

# sha256 of "key:shape" lines of the U-Net state dicts, taken before the encoder was factored
# out of unet.py (build_encoder): checkpoints trained before must keep loading.
UNET_KEY_DIGESTS = {
    ("unet-tiny", 0): "49e2e1162808e54cd22c3edb0c0f2d52703bc40c449a165b1d8c73119f52f849",
    ("unet-tiny", 10): "390898b783462661eef0c01081179f07da58314e0e2eb10597c46d712ddefbc2",
    ("unet-mnist", 0): "3d1b2c554d0f24cc4f81ba467ec145341918dccd9c5e547be26bbdd965d33d40",
    ("unet-mnist", 10): "8c7e98298f376ac561baf435dafb223de3daba6259d2411f3adcac8fecb45544",
    ("unet-mnist-large", 0): "97f0346abd73a4cab5259da149a7030b7561f8e539798ee355884e151809036d",
}


def key_digest(module: torch.nn.Module) -> str:
    lines = "\n".join(f"{k}:{tuple(v.shape)}" for k, v in module.state_dict().items())
    return hashlib.sha256(lines.encode()).hexdigest()


@pytest.mark.parametrize("preset,num_classes", list(UNET_KEY_DIGESTS))
def test_unet_state_dict_names_and_shapes_are_unchanged(preset, num_classes):
    assert (
        key_digest(build_model(*model_config(preset, num_classes=num_classes)))
        == (UNET_KEY_DIGESTS[preset, num_classes])
    )


def tiny(**overrides) -> NoisyClassifier:
    return NoisyClassifier(classifier_config("classifier-tiny", **overrides))


def perturb_zero_inits(net: NoisyClassifier) -> NoisyClassifier:
    """Random weights for the zero-initialised residual outputs, so t reaches the logits."""
    torch.manual_seed(0)
    for module in net.modules():
        if isinstance(module, ResBlock):
            torch.nn.init.normal_(module.conv_out.weight, std=0.1)
    return net


@pytest.mark.parametrize("size", [8, 25, 28, 32])
def test_logits_have_shape_batch_by_classes_for_odd_and_even_sizes(size):
    net = tiny(image_size=size, in_channels=3, channel_mult=(1, 2, 2), num_classes=7)
    assert net(torch.randn(2, 3, size, size), torch.tensor([0, 999])).shape == (2, 7)


def test_the_encoder_is_the_unets_downsampling_half():
    """Same layers, names and shapes as the U-Net's conv_in, down path and middle block."""
    sizes = dict(image_size=28, channel_mult=(1, 2, 2), attention_resolutions=(7,))
    unet = build_model(*model_config("unet-tiny", **sizes)).state_dict()
    clf = tiny(**sizes).state_dict()
    shared = [k for k in unet if k.startswith(("time_embed", "conv_in", "down_blocks", "mid_"))]
    assert shared and all(clf[k].shape == unet[k].shape for k in shared)
    assert {k for k in clf if k.split(".")[0] not in ("norm_out", "pool")} == set(shared)


def test_logits_depend_on_the_timestep_and_on_each_sample_alone():
    net = perturb_zero_inits(tiny(image_size=8)).eval()
    x = torch.randn(3, 1, 8, 8, requires_grad=True)
    logits = net(x, torch.tensor([0, 0, 0]))
    assert not torch.allclose(logits, net(x, torch.tensor([900, 900, 900])))
    (grad,) = torch.autograd.grad(logits[0].sum(), x)
    assert grad[0].abs().sum() > 0 and torch.count_nonzero(grad[1:]) == 0  # no batch coupling


def test_attention_pool_matches_a_plain_softmax_implementation():
    torch.manual_seed(0)
    pool = AttentionPool(8, 6, num_heads=2, out_dim=3)
    x = torch.randn(2, 8, 2, 3)
    tokens = x.flatten(2).transpose(1, 2)
    tokens = torch.cat([tokens.mean(1, keepdim=True), tokens], 1) + pool.positional  # (2, 7, 8)
    q, k, v = pool.qkv(tokens).chunk(3, dim=-1)
    heads = [
        torch.softmax(
            q[:, :1, h * 4 : (h + 1) * 4] @ k[..., h * 4 : (h + 1) * 4].transpose(1, 2) / 2, -1
        )
        @ v[..., h * 4 : (h + 1) * 4]
        for h in range(2)
    ]
    expected = pool.proj(torch.cat(heads, -1)[:, 0])
    assert torch.allclose(pool(x), expected, atol=1e-5)


def test_a_wrong_image_size_is_one_clear_sentence():
    with pytest.raises(DifflabError, match=r"takes 1×8×8 images, got \(1, 28, 28\)"):
        tiny(image_size=8)(torch.randn(1, 1, 28, 28), torch.tensor([3]))


def test_presets_and_overrides_are_checked_by_name():
    assert set(CLASSIFIER_PRESETS) >= {"classifier-tiny", "classifier-mnist"}
    assert classifier_config("classifier-mnist").channel_mult == (1, 2, 2)
    with pytest.raises(DifflabError, match="unknown classifier preset 'unet-mnist'"):
        classifier_config("unet-mnist")
    with pytest.raises(DifflabError, match=r"model\.base_chanels"):
        classifier_config("classifier-tiny", base_chanels=4)
    with pytest.raises(DifflabError, match=r"model\.num_classes must be an integer"):
        classifier_config("classifier-tiny", num_classes="ten")
    with pytest.raises(DifflabError, match="at least 2"):
        classifier_config("classifier-tiny", num_classes=1)
