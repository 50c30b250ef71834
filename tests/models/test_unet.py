import pytest
import torch

from difflab.diffusion import NULL_LABEL, Conditioning
from difflab.errors import DifflabError
from difflab.models import PRESETS, UNet, UNetConfig, build_model, model_config
from difflab.nn import ResBlock, SpatialSelfAttention


def tiny(**overrides) -> UNet:
    return build_model(*model_config("unet-tiny", **overrides))


def perturb_zero_inits(net: UNet) -> UNet:
    """Give the zero-initialised output convolutions random weights, so every path matters."""
    torch.manual_seed(0)
    for module in net.modules():
        if isinstance(module, ResBlock):
            torch.nn.init.normal_(module.conv_out.weight, std=0.1)
    torch.nn.init.normal_(net.conv_out.weight, std=0.1)
    return net


@pytest.mark.parametrize("size", [8, 25, 28, 32])
def test_output_has_the_input_shape_for_odd_and_even_sizes(size):
    net = tiny(image_size=size, in_channels=3, out_channels=3, channel_mult=(1, 2, 2))
    x = torch.randn(2, 3, size, size)
    assert net(x, torch.tensor([0, 999])).shape == (2, 3, size, size)


def test_network_outputs_zero_at_initialisation():
    """Zero-initialised output convolution (ADM): the untrained model predicts eps = 0."""
    net = tiny()
    assert torch.count_nonzero(net(torch.randn(2, 1, 28, 28), torch.tensor([1, 2]))) == 0


def test_residual_and_attention_blocks_start_as_the_identity():
    block = ResBlock(8, 8, emb_dim=16)
    x = torch.randn(2, 8, 5, 5)
    assert torch.equal(block(x, torch.randn(2, 16)), x)
    assert torch.equal(SpatialSelfAttention(8, num_heads=2)(x), x)


def test_attention_matches_a_plain_softmax_implementation():
    torch.manual_seed(0)
    attention = SpatialSelfAttention(8, num_heads=2)
    torch.nn.init.normal_(attention.proj.weight)
    x = torch.randn(2, 8, 3, 5)
    tokens = attention.norm(x).flatten(2).transpose(1, 2)  # (B, 15, 8)
    q, k, v = attention.qkv(tokens).chunk(3, dim=-1)
    heads = [
        torch.softmax(
            q[..., h * 4 : (h + 1) * 4] @ k[..., h * 4 : (h + 1) * 4].transpose(1, 2) / 2, -1
        )
        @ v[..., h * 4 : (h + 1) * 4]
        for h in range(2)
    ]
    expected = x + attention.proj(torch.cat(heads, -1)).transpose(1, 2).reshape(2, 8, 3, 5)
    assert torch.allclose(attention(x), expected, atol=1e-5)


def test_attention_is_placed_at_the_requested_resolutions():
    net = tiny(image_size=28, channel_mult=(1, 2, 2), attention_resolutions=(14,))
    sizes = []
    hooks = [
        m.register_forward_hook(lambda m, i, o: sizes.append(o.shape[-1]))
        for m in net.modules()
        if isinstance(m, SpatialSelfAttention) and m is not net.mid_attention
    ]
    net(torch.randn(1, 1, 28, 28), torch.tensor([5]))
    for hook in hooks:
        hook.remove()
    assert sizes and set(sizes) == {14}


def test_class_labels_change_the_output_and_the_null_label_is_reserved():
    net = tiny(num_classes=10)
    assert net.label_embed.num_embeddings == 11  # 10 classes + "no label"
    perturb_zero_inits(net)
    x, t = torch.randn(3, 1, 28, 28), torch.tensor([10, 10, 10])
    out_a = net(x, t, Conditioning(labels=torch.tensor([0, 1, NULL_LABEL])))
    out_b = net(x, t, Conditioning(labels=torch.tensor([5, 1, NULL_LABEL])))
    assert not torch.allclose(out_a[0], out_b[0])
    assert torch.allclose(out_a[1:], out_b[1:])
    unlabelled = net(x, t, Conditioning())
    assert torch.allclose(unlabelled[2], out_a[2])  # no conditioning = the null label


def test_labels_out_of_range_are_rejected():
    net = tiny(num_classes=3)
    with pytest.raises(DifflabError, match=r"0\.\.2"):
        net(torch.randn(1, 1, 28, 28), torch.tensor([1]), Conditioning(labels=torch.tensor([3])))


def test_presets_build_and_unknown_keys_are_named():
    for name in (name for name, (arch, _) in PRESETS.items() if arch == "unet"):
        arch, config = model_config(name)
        assert arch == "unet" and isinstance(config, UNetConfig)
    with pytest.raises(DifflabError, match="base_chanels"):
        model_config("unet-tiny", base_chanels=4)
    with pytest.raises(DifflabError, match=r"model\.base_channels must be an integer"):
        model_config("unet-tiny", base_channels="wide")
    with pytest.raises(DifflabError, match="unknown model preset"):
        model_config("unet-huge")


def test_dropout_is_active_only_in_training_mode():
    net = perturb_zero_inits(tiny(dropout=0.5))
    x, t = torch.randn(1, 1, 28, 28), torch.tensor([3])
    net.eval()
    assert torch.equal(net(x, t), net(x, t))
    net.train()
    assert not torch.equal(net(x, t), net(x, t))
