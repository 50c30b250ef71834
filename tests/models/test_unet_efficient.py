"""Imagen's Efficient U-Net options (Saharia et al. 2022, appendix B.1): per-level residual block
counts and ``resample_first`` (downsample before a level's blocks, upsample after), in the U-Net,
the noisy classifier that shares its encoder, and ControlNet's copy of that encoder."""

import dataclasses

import pytest
import torch

from difflab.config import config_to_dict, load_config
from difflab.diffusion import Conditioning
from difflab.errors import DifflabError
from difflab.models import UNet, UNetConfig, config_from_dict, model_config
from difflab.models.classifier import NoisyClassifier, classifier_config
from difflab.models.controlnet import ControlledNetwork, ControlNetConfig, build_controlnet
from difflab.models.unet import blocks_per_level
from difflab.nn import Downsample, ResBlock, Upsample

TINY = UNetConfig(base_channels=8, channel_mult=(1, 2, 2), attention_resolutions=(4,))


def randomised(net: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Every weight random (the zero-initialised output layers too), so every path matters."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0, 0.1)
    return net


def block_sides(net: UNet, size: int) -> tuple[list[int], list[int]]:
    """(input side of every non-resampling ResBlock of the down path, of the up path), in call
    order, from forward hooks on a batch of two ``size`` x ``size`` inputs."""
    down, up = [], []
    hooks = [
        block.register_forward_pre_hook(
            lambda m, args, sides=sides: sides.append(args[0].shape[-1])
        )
        for blocks, sides in ((net.down_blocks, down), (net.up_blocks, up))
        for block in blocks.modules()
        if isinstance(block, ResBlock) and block.resample == "none"
    ]
    net(torch.randn(2, net.config.in_channels, size, size), torch.tensor([10, 500]))
    for hook in hooks:
        hook.remove()
    return down, up


def convolution_macs(net: UNet, size: int, cond: Conditioning | None = None) -> int:
    """Multiply-adds of every convolution in one forward pass of a ``size`` x ``size`` image."""
    macs = []

    def count(conv: torch.nn.Conv2d, args: tuple, out: torch.Tensor) -> None:
        macs.append(out.numel() * conv.weight[0].numel())

    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    hooks = [conv.register_forward_hook(count) for conv in convs]
    net(torch.randn(1, net.config.in_channels, size, size), torch.tensor([5]), cond)
    for hook in hooks:
        hook.remove()
    return sum(macs)


def test_an_int_and_its_per_level_tuple_build_the_same_network_bit_for_bit():
    """num_res_blocks=2 and (2, 2, 2): the same parameter names, shapes and initial values, the
    same outputs. Fails if a tuple takes another code path than the int (e.g. one block too many
    on the way up)."""
    torch.manual_seed(0)
    a = UNet(dataclasses.replace(TINY, num_res_blocks=2))
    torch.manual_seed(0)
    b = UNet(dataclasses.replace(TINY, num_res_blocks=(2, 2, 2)))
    a_weights, b_weights = a.state_dict(), b.state_dict()
    assert list(a_weights) == list(b_weights)
    assert all(torch.equal(a_weights[k], b_weights[k]) for k in a_weights)
    x, t = torch.randn(2, 1, 28, 28), torch.tensor([3, 700])
    assert torch.equal(randomised(a)(x, t), randomised(b)(x, t))


@pytest.mark.parametrize("resample_first", [False, True])
@pytest.mark.parametrize("size", [7, 28])
def test_per_level_counts_set_the_blocks_of_each_level(size, resample_first):
    """(1, 2, 3): level i has n_i blocks down and n_i + 1 up, counted by the side they run at;
    the output keeps odd and even sizes. Fails if the decoder used one count for all levels or
    the levels' counts were reversed."""
    config = dataclasses.replace(
        TINY, image_size=size, num_res_blocks=(1, 2, 3), resample_first=resample_first
    )
    net = UNet(config)
    down, up = block_sides(net, size)
    sides = [size, (size + 1) // 2, (size + 3) // 4, (size + 7) // 8]
    level_side = sides[1:] if resample_first else sides[:3]  # where each level's blocks run
    assert down == [level_side[0]] + [level_side[1]] * 2 + [level_side[2]] * 3
    assert up == [level_side[2]] * 4 + [level_side[1]] * 3 + [level_side[0]] * 2
    out = net(torch.randn(2, 1, size, size), torch.tensor([1, 900]))
    assert out.shape == (2, 1, size, size)


def test_resample_first_runs_every_block_at_half_the_side_and_costs_fewer_macs():
    """Down- and upsampling move around the blocks: 3 downsamplers before and 3 upsamplers after
    the levels' blocks (not 2 and 2 between them), every block input at 14 / 7 / 4 instead of
    28 / 14 / 7, and the bottom at 4x4. Fails if the stride of the first level were dropped (the
    paper's every DBlock strides) or the upsampling ran before a level's blocks."""
    standard, efficient = UNet(TINY), UNet(dataclasses.replace(TINY, resample_first=True))
    assert block_sides(standard, 28) == ([28, 14, 7], [7, 7, 14, 14, 28, 28])
    assert block_sides(efficient, 28) == ([14, 7, 4], [4, 4, 7, 7, 14, 14])
    kinds = [type(m).__name__ for m in efficient.down_blocks]
    assert kinds == ["Downsample", "ModuleList"] * 3
    assert [type(item[2]) for item in efficient.up_blocks][1::2] == [Upsample] * 3
    assert sum(isinstance(m, Downsample) for m in standard.modules()) == 2
    # attention_resolutions name the sides the blocks run at: (4,) is now level 2 (28 -> 14 -> 7
    # -> 4), where the standard layout's level 2 runs at 7 and has none
    attended = [not isinstance(item[1], torch.nn.Identity) for item in efficient.up_blocks]
    assert attended == [True, True, False, False, False, False]
    assert convolution_macs(efficient, 28) < 0.4 * convolution_macs(standard, 28)


@pytest.mark.parametrize("updown", [False, True])
def test_resample_first_learns_through_every_weight_and_starts_at_zero(updown):
    """With BigGAN up/down blocks too: the untrained net predicts 0 (zero output conv), and one
    backward of a randomised net reaches every parameter (no dead skip or block)."""
    config = dataclasses.replace(
        TINY, image_size=13, num_res_blocks=(1, 2, 1), resample_first=True, resblock_updown=updown
    )
    x, t = torch.randn(2, 1, 13, 13), torch.tensor([3, 600])
    assert torch.count_nonzero(UNet(config)(x, t)) == 0
    net = randomised(UNet(config))
    net(x, t).square().mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters())


def test_a_text_unet_with_both_options_reads_its_tokens():
    """The Imagen base preset with the efficient options: cross-attention at 4x4 (level 1 once
    the blocks run at half the side) and in the middle; the tokens steer the output."""
    _, config = model_config(
        "unet-imagen-base",
        image_size=16,
        in_channels=3,
        out_channels=3,
        base_channels=8,
        head_channels=8,
        context_dim=16,
        num_res_blocks=(1, 1, 2),
        resample_first=True,
    )
    net = randomised(UNet(config))
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([5, 500])
    mask = torch.ones(2, 3, dtype=torch.bool)
    one = net(x, t, Conditioning(tokens=torch.randn(2, 3, 16), token_mask=mask))
    other = net(x, t, Conditioning(tokens=torch.randn(2, 3, 16), token_mask=mask))
    assert one.shape == (2, 3, 16, 16) and not torch.allclose(one, other)


@pytest.mark.parametrize("resample_first", [False, True])
def test_the_noisy_classifier_takes_per_level_counts_and_resample_first(resample_first):
    """The classifier shares build_encoder: (1, 3) blocks, the attention pool at the bottom side
    (14 -> 7 standard, 14 -> 7 -> 4 with resample_first)."""
    config = classifier_config(
        "classifier-tiny", image_size=14, num_res_blocks=(1, 3), resample_first=resample_first
    )
    clf = NoisyClassifier(config)
    blocks = [m for m in clf.down_blocks if isinstance(m, torch.nn.ModuleList)]
    assert len(blocks) == 4
    bottom = 4 if resample_first else 7
    assert clf.pool.positional.shape[0] == bottom * bottom + 1
    assert clf(torch.randn(2, 1, 14, 14), torch.tensor([0, 999])).shape == (2, 10)


@pytest.mark.parametrize("resample_first", [False, True])
def test_controlnet_copies_the_efficient_encoder_with_one_zero_conv_per_skip(resample_first):
    """One zero conv per skip of the base's encoder (conv_in's output is no skip with
    resample_first), the controlled net equal to the base at initialisation, and a nonzero
    control once the zero convs are not zero. Fails if the zero-conv count followed the
    standard layout."""
    config = dataclasses.replace(
        TINY, image_size=13, num_res_blocks=(2, 1, 3), resample_first=resample_first
    )
    base = randomised(UNet(config))
    control = build_controlnet(base, ControlNetConfig(hint_size=13))
    x, t = torch.randn(2, 1, 13, 13), torch.tensor([5, 700])
    cond = Conditioning(control=torch.rand(2, 1, 13, 13) * 2 - 1)
    features = control(x, t, cond, cond.control).features
    # standard: conv_in, 2 blocks at 13, down, 1 at 7, down, 3 at 4; resample_first: down + 2
    # blocks at 7, down + 1 at 4, down + 3 at 2 (the same count, L + sum n_i, by construction)
    sides = [13] * 3 + [7] * 2 + [4] * 4 if not resample_first else [7] * 3 + [4] * 2 + [2] * 4
    assert [f.shape[-1] for f in features] == sides and len(control.zero_convs) == len(sides)
    net = ControlledNetwork(base, [control])
    assert torch.equal(net(x, t, cond), base(x, t, cond))
    randomised(control.zero_convs, seed=1)
    assert not torch.allclose(net(x, t, cond), base(x, t, cond))


def test_config_files_overrides_and_checkpoints_take_a_list(tmp_path):
    """A YAML list and a CLI override give the tuple; a checkpoint's JSON round-trips it."""
    path = tmp_path / "c.yaml"
    path.write_text("model: {preset: unet-tiny, num_res_blocks: [1, 2], resample_first: true}\n")
    preset, values = load_config(path).model_preset("unet-tiny")
    _, config = model_config(preset, **values)
    assert config.num_res_blocks == (1, 2) and config.resample_first
    preset, values = load_config(
        None, ["model.preset=unet-mnist", "model.num_res_blocks=[3, 1, 2]"]
    ).model_preset("x")
    assert model_config(preset, **values)[1].num_res_blocks == (3, 1, 2)
    stored = config_to_dict(config)
    assert stored["num_res_blocks"] == [1, 2]
    assert config_from_dict("unet", stored) == config
    assert config_from_dict("unet", {**stored, "num_res_blocks": 2}).num_res_blocks == 2


@pytest.mark.parametrize(
    "counts", [(1, 2), (1, 2, 2, 2), (1, 0, 2), (2, -1, 1), 0, -2, (1, 2.5, 1)]
)
def test_bad_counts_are_one_sentence(counts):
    """A tuple of the wrong length, a zero, a negative or a fractional count."""
    with pytest.raises(DifflabError, match=r"num_res_blocks=.* one per channel_mult level"):
        UNet(dataclasses.replace(TINY, num_res_blocks=counts))
    with pytest.raises(DifflabError, match="num_res_blocks"):
        NoisyClassifier(classifier_config("classifier-tiny", num_res_blocks=[1, 2, 3]))
    assert blocks_per_level(dataclasses.replace(TINY, num_res_blocks=3)) == (3, 3, 3)


def test_the_efficient_imagen_config_is_the_base_stage_in_the_efficient_layout():
    """configs/imagen_base16_efficient.yaml differs from imagen_base16.yaml only in the model's
    layout (and its output path): blocks growing toward low resolution, resample_first, a
    parameter count within 20 % of the standard stage's and under half its convolution work."""
    from pathlib import Path

    from difflab.training.imagen_loop import load_imagen_stage_config, stage_network

    configs = Path(__file__).resolve().parents[2] / "configs"
    standard = load_imagen_stage_config(configs / "imagen_base16.yaml")
    efficient = load_imagen_stage_config(configs / "imagen_base16_efficient.yaml")
    assert dataclasses.replace(efficient.train, out=standard.train.out) == standard.train
    assert (efficient.data, efficient.diffusion) == (standard.data, standard.diffusion)
    nets = [UNet(stage_network(c, 384)[1]) for c in (standard, efficient)]
    counts = blocks_per_level(nets[1].config)
    assert nets[1].config.resample_first and list(counts) == sorted(counts) and counts[-1] > 1
    params = [sum(p.numel() for p in net.parameters()) for net in nets]
    assert 1.0 < params[1] / params[0] < 1.2
    caption = Conditioning(tokens=torch.randn(1, 4, 384), token_mask=torch.ones(1, 4, dtype=bool))
    macs = [convolution_macs(net, 16, caption) for net in nets]
    assert macs[1] < 0.5 * macs[0]
