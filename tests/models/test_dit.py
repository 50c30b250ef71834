import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch

from difflab.cli import main
from difflab.config import config_to_dict, load_config
from difflab.diffusion import NULL_LABEL, Conditioning
from difflab.errors import DifflabError
from difflab.io.checkpoint import load_checkpoint, load_weights_strict, split_prefix
from difflab.io.weights import weights_dir
from difflab.models import (
    PRESETS,
    DiT,
    DiTConfig,
    build_model,
    config_from_dict,
    count_flops,
    forward_flops,
    forward_gflops,
    model_config,
)
from difflab.models.dit import (
    patchify,
    sincos_position_embedding,
    unpatchify,
)
from difflab.nn import sinusoidal_embedding

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
FLASH_KERNEL = "aten::_scaled_dot_product_flash_attention_for_cpu"


def tiny(**overrides) -> DiT:
    return build_model(*model_config("dit-tiny", **overrides))


def perturb_zero_inits(net: DiT, std: float = 0.1) -> DiT:
    """Give the zero-initialised adaLN regressors and final layer random weights."""
    torch.manual_seed(0)
    with torch.no_grad():
        for parameter in net.parameters():
            if not parameter.any():
                parameter.normal_(std=std)
    return net


def test_a_block_is_the_identity_at_initialisation():
    """adaLN-Zero: the gates start at zero, so each block returns its input exactly."""
    net = tiny()
    x = torch.randn(3, 49, 32)  # (B, T, D)
    c = torch.randn(3, 32)  # (B, D)
    for block in net.blocks:
        assert torch.equal(block(x, c), x)
    torch.nn.init.normal_(net.blocks[0].modulation.linear.weight)
    assert not torch.allclose(net.blocks[0](x, c), x)


@pytest.mark.parametrize("learn_sigma", [False, True])
def test_the_model_outputs_zero_at_initialisation(learn_sigma):
    net = tiny(num_classes=10, learn_sigma=learn_sigma)
    x = torch.randn(2, 1, 28, 28)
    out = net(x, torch.tensor([3, 700]), Conditioning(labels=torch.tensor([1, NULL_LABEL])))
    assert out.shape == (2, 1, 28, 28) and torch.count_nonzero(out) == 0


@pytest.mark.parametrize("patch_size", [1, 2, 4, 8])
def test_patchify_and_unpatchify_round_trip(patch_size):
    x = torch.randn(2, 3, 8, 8)
    tokens = patchify(x, patch_size)
    assert tokens.shape == (2, (8 // patch_size) ** 2, patch_size**2 * 3)
    assert torch.equal(unpatchify(tokens, patch_size, 8 // patch_size), x)


def test_the_patch_embedding_is_a_linear_map_of_patchified_tokens():
    """The conv patch embedding and unpatchify agree on which pixels form a token."""
    net = tiny(image_size=8, in_channels=3, out_channels=3)
    x = torch.randn(2, 3, 8, 8)
    conv_tokens = net.patch_embed(x).flatten(2).transpose(1, 2)  # (B, T, D)
    weight = net.patch_embed.weight.permute(0, 2, 3, 1).reshape(32, -1)  # (D, p*p*C)
    linear_tokens = patchify(x, 4) @ weight.T + net.patch_embed.bias
    assert torch.allclose(conv_tokens, linear_tokens, atol=1e-5)


def test_position_embeddings_are_fixed_2d_sin_cos():
    net = tiny()
    assert net.pos_embed.shape == (1, 49, 32)
    assert "pos_embed" not in net.state_dict()  # derived from the config, never stored
    assert all(name != "pos_embed" for name, _ in net.named_parameters())
    assert net.config.position_layout == "reference"  # new models: the reference code's table
    table = sincos_position_embedding(7, 32).reshape(7, 7, 32)  # (row, column, D)
    assert torch.equal(table[:, :, :16], table[:1, :, :16].expand(7, 7, 16))  # columns: first half
    assert torch.equal(table[:, :, 16:], table[:, :1, 16:].expand(7, 7, 16))  # rows: second
    assert torch.equal(table[0, 0], torch.tensor([0.0] * 8 + [1.0] * 8 + [0.0] * 8 + [1.0] * 8))
    assert torch.unique(table.reshape(49, 32), dim=0).shape[0] == 49
    row_first = sincos_position_embedding(7, 32, "row_first").reshape(7, 7, 32)
    assert torch.equal(row_first, table.transpose(0, 1))  # the transpose over the patch grid
    assert torch.equal(tiny(position_layout="row_first").pos_embed[0], row_first.reshape(49, 32))


@pytest.mark.parametrize(("grid", "dim"), [(7, 32), (4, 64), (16, 1152)])
def test_the_reference_layout_is_the_reference_codes_table(grid, dim):
    """diffusers' get_2d_sincos_pos_embed is the reference code's (column first); its
    ``base_size`` rescales positions unless it equals the grid, as its PatchEmbed sets it."""
    from diffusers.models.embeddings import get_2d_sincos_pos_embed

    theirs = get_2d_sincos_pos_embed(dim, grid, base_size=grid, output_type="pt")
    ours = sincos_position_embedding(grid, dim, dtype=torch.float64)
    assert torch.allclose(ours, theirs.double(), rtol=0, atol=1e-6)  # theirs may be float32


def test_the_gelu_option_picks_the_activation():
    x = torch.linspace(-4, 4, 101)
    for gelu, approximate in (("exact", "none"), ("tanh", "tanh")):
        activation = tiny(gelu=gelu).blocks[0].mlp[1]
        assert torch.equal(activation(x), torch.nn.functional.gelu(x, approximate=approximate))
    assert tiny().config.gelu == "exact"  # the default: 3-6x faster forward on the CPU
    with pytest.raises(DifflabError, match=r"model\.gelu 'relu' is unknown"):
        tiny(gelu="relu")
    with pytest.raises(DifflabError, match=r"model\.position_layout 'columns' is unknown"):
        tiny(position_layout="columns")


# The shipped DiT (weights/dit_mnist_s4, trained before position_layout and gelu existed, its JSON
# has neither): outputs recorded with the code of that time, seed-0 input, labels 3, 7, 0, none.
SHIPPED_DIT = "dit_mnist_s4"
SHIPPED_MEAN_ABS = [1.036721, 1.055117, 0.79852, 0.781096]
SHIPPED_MEAN = [0.0238, 0.272457, 0.096196, -0.015835]
SHIPPED_VALUES = {
    (0, 0, 10, 10): -0.254,
    (1, 0, 14, 14): -0.055384,
    (2, 0, 3, 25): 1.590902,
    (3, 0, 20, 5): 1.152175,
    (1, 0, 0, 0): 1.920945,
    (2, 0, 27, 27): -1.656399,
}


def shipped_dit_output(**config_changes) -> torch.Tensor:
    tensors, meta = load_checkpoint(weights_dir() / f"{SHIPPED_DIT}.safetensors")
    assert "position_layout" not in meta["model"] and "gelu" not in meta["model"]
    config = dataclasses.replace(config_from_dict("dit", meta["model"]), **config_changes)
    net = build_model("dit", config).eval()
    load_weights_strict(net, split_prefix(tensors, "model"), SHIPPED_DIT)
    x = torch.randn(4, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([0, 250, 500, 999])
    with torch.no_grad():
        return net(x, t, Conditioning(labels=torch.tensor([3, 7, 0, NULL_LABEL])))


def test_the_shipped_dit_still_computes_what_it_computed_when_it_was_trained():
    """A stored config without the new fields means the old network: row-first table, exact GELU."""
    _, meta = load_checkpoint(weights_dir() / f"{SHIPPED_DIT}.safetensors")
    config = config_from_dict("dit", meta["model"])
    assert (config.position_layout, config.gelu, config.timestep_freq_shift) == (
        "row_first",
        "exact",
        0.0,
    )
    out = shipped_dit_output()
    assert out.abs().mean(dim=(1, 2, 3)).tolist() == pytest.approx(SHIPPED_MEAN_ABS, abs=2e-6)
    assert out.mean(dim=(1, 2, 3)).tolist() == pytest.approx(SHIPPED_MEAN, abs=2e-6)
    for index, value in SHIPPED_VALUES.items():
        assert out[index].item() == pytest.approx(value, abs=2e-6), index
    # the pin is sharp enough to see either change
    for change in (dict(position_layout="reference"), dict(gelu="tanh")):
        moved = shipped_dit_output(**change)
        assert (moved - out).abs().max() > 1e-3, change


def test_a_new_checkpoint_records_the_new_fields(tmp_path):
    """config_to_dict (what a run stores) writes them, so a new model reloads as it was built."""
    arch, config = model_config("dit-tiny", gelu="tanh", timestep_freq_shift=1)
    stored = json.loads(json.dumps(config_to_dict(config)))
    assert stored["position_layout"] == "reference" and stored["gelu"] == "tanh"
    assert stored["timestep_freq_shift"] == 1.0
    assert config_from_dict(arch, stored) == config


def test_the_class_embedding_reserves_the_null_row_for_dropped_labels():
    net = tiny(num_classes=10)
    assert net.label_embed.num_embeddings == 11  # 10 classes + "no label"
    t = torch.tensor([5, 5, 5])
    labels = Conditioning(labels=torch.tensor([2, 7, 9]))
    dropped = labels.drop(torch.tensor([False, True, True]))  # CFG label dropout
    time_part = net.time_embed(t)
    null_row = net.label_embed.weight[10]
    assert torch.equal(net.embed(t, dropped)[1:], time_part[1:] + null_row)
    assert torch.equal(net.embed(t, dropped)[0], time_part[0] + net.label_embed.weight[2])
    assert torch.equal(net.embed(t, Conditioning()), time_part + null_row)  # no labels = null
    assert torch.equal(net.embed(t, labels.dropped()), time_part + null_row)


@pytest.mark.parametrize("label", [10, -2, 100])
def test_unknown_labels_are_rejected(label):
    net = tiny(num_classes=10)
    with pytest.raises(DifflabError, match=r"0\.\.9"):
        net(
            torch.randn(1, 1, 28, 28), torch.tensor([1]), Conditioning(labels=torch.tensor([label]))
        )


def test_an_unconditional_dit_ignores_labels():
    net = perturb_zero_inits(tiny())
    x, t = torch.randn(2, 1, 28, 28), torch.tensor([4, 9])
    assert torch.equal(net(x, t, Conditioning(labels=torch.tensor([3, 42]))), net(x, t))


@pytest.mark.parametrize(
    "overrides",
    [
        dict(image_size=8, in_channels=1, out_channels=1, patch_size=4),
        dict(image_size=28, in_channels=1, out_channels=1, patch_size=7),
        dict(image_size=28, in_channels=1, out_channels=1, patch_size=2),
        dict(image_size=32, in_channels=4, out_channels=4, patch_size=8, num_heads=4),
        dict(image_size=16, in_channels=3, out_channels=3, patch_size=4, learn_sigma=True),
        dict(image_size=12, in_channels=2, out_channels=2, patch_size=3, mlp_ratio=2.0),
    ],
)
def test_output_shapes_for_several_configs(overrides):
    net = perturb_zero_inits(tiny(**overrides))
    size, channels = overrides["image_size"], overrides["in_channels"]
    out = net(torch.randn(3, channels, size, size), torch.tensor([0, 500, 999]))
    assert out.shape == (3, channels, size, size) and out.dtype == torch.float32
    assert torch.isfinite(out).all() and out.abs().sum() > 0


def test_learned_variance_is_a_second_output_half():
    net = perturb_zero_inits(tiny(learn_sigma=True))
    assert net.final_layer.linear.out_features == 4 * 4 * 2  # p * p * 2 * out_channels
    x, t = torch.randn(2, 1, 28, 28), torch.tensor([10, 20])
    prediction, variance = net.predict_with_variance(x, t)
    assert prediction.shape == variance.shape == (2, 1, 28, 28)
    assert torch.equal(net(x, t), prediction)
    with pytest.raises(DifflabError, match="learn_sigma"):
        tiny().predict_with_variance(x, t)


def test_image_sizes_not_divisible_by_the_patch_size_are_refused_by_name():
    with pytest.raises(
        DifflabError, match=r"image_size 28 is not divisible by model\.patch_size 8"
    ):
        tiny(image_size=28, patch_size=8)
    # a 28x28 preset trained with data.pad_to_32=true must switch from patch 7
    with pytest.raises(DifflabError, match="pad_to_32"):
        build_model(*model_config("dit-mnist-s-7", image_size=32))
    build_model(*model_config("dit-mnist-s-4", image_size=32))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (dict(hidden_size=36, num_heads=8), "num_heads 8"),
        (dict(hidden_size=34, num_heads=1), "divisible by 4"),
        (dict(depth=0), "depth must be at least 1"),
        (dict(prediction="score"), "'score' is unknown"),
        (dict(dropout=1.0), r"\[0, 1\)"),
    ],
)
def test_inconsistent_configs_are_refused_by_name(overrides, message):
    with pytest.raises(DifflabError, match=message):
        tiny(**overrides)


def test_inputs_of_another_size_are_refused():
    with pytest.raises(DifflabError, match=r"\(B, 1, 28, 28\)"):
        tiny()(torch.randn(1, 1, 32, 32), torch.tensor([1]))


@pytest.mark.parametrize("bf16", [False, True])
def test_attention_is_one_kernel_call_per_block(bf16):
    net = perturb_zero_inits(tiny(depth=3))
    x, t = torch.randn(2, 1, 28, 28), torch.tensor([1, 2])
    with (
        torch.profiler.profile() as profile,
        torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16),
    ):
        net(x, t).sum().backward()
    calls = {event.key: event.count for event in profile.key_averages()}
    # one call per block for all heads: no loop over heads; float32 takes the fused kernel, bf16
    # on the CPU the batched-matmul path (see packed_attention)
    assert calls.get(FLASH_KERNEL, 0) == (0 if bf16 else 3)
    assert calls.get("aten::_softmax", 0) == (3 if bf16 else 0)


def test_bf16_autocast_stays_close_to_float32():
    net = perturb_zero_inits(tiny(num_classes=3), std=0.05).eval()
    x, t = torch.randn(2, 1, 28, 28), torch.tensor([100, 900])
    cond = Conditioning(labels=torch.tensor([0, 2]))
    reference = net(x, t, cond)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = net(x, t, cond)
    assert low.dtype == torch.bfloat16
    assert (low.float() - reference).abs().max() < 0.05 * reference.abs().max()


# ----------------------------------------------------------------------------- float64


@pytest.mark.parametrize(
    ("preset", "overrides"),
    [
        ("dit-tiny", dict(num_classes=3, learn_sigma=True)),
        ("dit-tiny", dict(position_layout="row_first", timestep_freq_shift=1)),
        ("unet-tiny", dict(num_classes=3)),  # the U-Net shares the timestep embedding
    ],
)
def test_models_run_in_float64_end_to_end(preset, overrides):
    torch.manual_seed(0)
    with torch.device("cpu"):
        net = perturb_zero_inits(build_model(*model_config(preset, **overrides))).double().eval()
    x = torch.randn(2, 1, 28, 28, dtype=torch.float64)
    t = torch.tensor([3, 999])
    cond = Conditioning(labels=torch.tensor([0, NULL_LABEL]))
    with torch.no_grad():
        out = net(x, t, cond)
        assert out.dtype == torch.float64
        reference = net.float()(x.float(), t, cond).double()
    assert (out - reference).abs().max() < 1e-4 * out.abs().max()


def test_float64_timestep_features_are_computed_in_float64():
    t = torch.tensor([0, 1, 999])
    features = sinusoidal_embedding(t, 256, dtype=torch.float64)
    half = torch.arange(128, dtype=torch.float64)
    angles = t.double()[:, None] * torch.exp(-math.log(10000) * half / 128)[None]
    assert features.dtype == torch.float64
    assert torch.equal(features, torch.cat([angles.cos(), angles.sin()], dim=1))
    assert sinusoidal_embedding(t, 256).dtype == torch.float32  # integer t: float32, as before
    assert sinusoidal_embedding(t.double(), 256).dtype == torch.float64
    shifted = sinusoidal_embedding(t, 256, freq_shift=1, dtype=torch.float64)  # diffusers' DiT
    angles = t.double()[:, None] * torch.exp(-math.log(10000) * half / 127)[None]
    assert torch.allclose(shifted, torch.cat([angles.cos(), angles.sin()], dim=1), atol=1e-12)


def test_a_float32_dit_converted_to_float64_uses_the_exact_position_table():
    net = tiny().double()
    exact = sincos_position_embedding(7, 32, dtype=torch.float64)
    assert net.pos_embed.dtype == torch.float64  # the buffer holds the float32-rounded table
    assert not torch.equal(net.pos_embed[0], exact)
    assert torch.equal(net.position_embedding()[0], exact)


# ----------------------------------------------------------------------------- FLOPs


def closed_form_flops(c: DiTConfig) -> int:
    """2 FLOPs per multiply-add of every matmul, convolution and attention product of a DiT."""
    D, T, p = c.hidden_size, c.num_tokens, c.patch_size
    mlp = int(D * c.mlp_ratio)
    per_token_block = 3 * D * D + D * D + 2 * D * mlp  # qkv, proj, MLP
    attention = 2 * T * T * D  # q k^T and (weights) v
    per_block = T * per_token_block + attention + D * 6 * D  # + adaLN regression
    embeddings = T * p * p * c.in_channels * D + 256 * D + D * D  # patches, timestep MLP
    final = D * 2 * D + T * D * p * p * c.out_channels
    return 2 * (c.depth * per_block + embeddings + final)


def test_forward_flops_match_the_closed_form_count_including_attention():
    arch, config = model_config("dit-tiny", num_classes=10)
    assert forward_flops(arch, config) == closed_form_flops(config)
    # measured on real CPU tensors (the fused attention kernel) as on the meta device
    net = build_model(arch, config).eval()
    x, t = torch.randn(1, 1, 28, 28), torch.tensor([7])
    with torch.no_grad():
        assert count_flops(lambda: net(x, t)) == closed_form_flops(config)
    assert forward_flops(arch, config, batch_size=4) == 4 * closed_form_flops(config)


def test_gflops_are_positive_and_grow_with_width_and_with_smaller_patches():
    def gflops(**overrides) -> float:
        return forward_gflops(*model_config("dit-tiny", **overrides))

    assert 0 < gflops(hidden_size=32) < gflops(hidden_size=64) < gflops(hidden_size=128)
    assert 0 < gflops(patch_size=7) < gflops(patch_size=4) < gflops(patch_size=2)
    assert forward_gflops(*model_config("unet-tiny")) > 0


# the paper's Gflops count a multiply-add once: Table 1 (p = 4) and Table 4 (p = 2)
PAPER_GFLOPS = {
    "dit-s-4": 1.41,
    "dit-b-4": 5.56,
    "dit-l-4": 19.70,
    "dit-xl-4": 29.05,
    "dit-s-2": 6.06,
    "dit-b-2": 23.01,
    "dit-l-2": 80.71,
    "dit-xl-2": 118.64,
}


def test_the_paper_presets_have_the_paper_gflops():
    for name, paper in PAPER_GFLOPS.items():
        ours = forward_gflops(*model_config(name)) / 2  # multiply-add = 1, as the paper
        assert ours == pytest.approx(paper, rel=0.01), name


def test_presets_cover_the_paper_grid_and_tiny_cpu_sizes():
    names = [name for name, (arch, _) in PRESETS.items() if arch == "dit"]
    for size in ("s", "b", "l", "xl"):
        for patch in (2, 4, 8):
            assert f"dit-{size}-{patch}" in names
    assert "dit-tiny" in names and "dit-mnist-b-4" in names
    for name in names:
        arch, config = model_config(name)
        assert isinstance(config, DiTConfig) and name == name.lower()
        with torch.device("meta"):
            build_model(arch, config)  # every preset is consistent
    with torch.device("meta"):
        xl = build_model(*model_config("dit-xl-2", num_classes=1000, learn_sigma=True))
    assert sum(p.numel() for p in xl.parameters()) == pytest.approx(675e6, rel=0.005)
    with pytest.raises(DifflabError, match="hiden_size"):
        model_config("dit-tiny", hiden_size=4)


# ----------------------------------------------------------------------------- config and CLI


def test_the_mnist_config_loads_and_builds_a_class_conditional_dit():
    config = load_config(CONFIGS / "dit_mnist.yaml")
    assert config.train.label_dropout == pytest.approx(0.1)
    values = dict(config.model)
    arch, net_config = model_config(values.pop("preset"), **values)
    assert arch == "dit" and net_config.num_classes == 10
    assert net_config.image_size % net_config.patch_size == 0
    padded = dataclasses.replace(net_config, image_size=32)  # data.pad_to_32=true
    with torch.device("meta"):
        build_model(arch, padded)


def test_a_dit_trains_samples_and_reports_its_gflops_through_the_cli(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(
        [
            "train",
            "--quiet",
            str(CONFIGS / "digits_tiny.yaml"),
            "model.preset=dit-tiny",
            "model.num_classes=10",
            "train.label_dropout=0.1",
            "train.bf16=true",
            "train.steps=2",
            "train.sample_steps=2",
            f"train.out_dir={out}",
        ]
    )
    assert code == 0
    grid = tmp_path / "g.png"
    code = main(
        [
            "sample",
            str(out / "model.safetensors"),
            *("--steps", "2", "--n", "4", "--label", "3", "--out", str(grid)),
        ]
    )
    assert code == 0 and grid.stat().st_size > 0
    capsys.readouterr()
    assert main(["info", str(out / "model.safetensors")]) == 0
    stdout = capsys.readouterr().out
    assert "arch: dit" in stdout and "GFLOPs per forward pass" in stdout
    assert main(["info", "--presets"]) == 0
    lines = capsys.readouterr().out.splitlines()
    xl = next(line for line in lines if line.startswith("dit-xl-2 "))
    assert "673.66 M parameters" in xl and "237.233 GFLOPs" in xl
