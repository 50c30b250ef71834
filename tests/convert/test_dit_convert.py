"""DiT conversion: difflab's DiT against a transcription of the reference forward and against
diffusers' DiTTransformer2DModel, and the import / export of their files."""

from __future__ import annotations

import argparse
import dataclasses
import json

import pytest
import safetensors.torch
import torch

from difflab.convert import convert
from difflab.convert.dit import (
    REFERENCE_HEADS,
    difflab_from_diffusers,
    difflab_from_reference,
    diffusers_from_difflab,
    export_dit_to_diffusers,
    import_diffusers_dit,
    import_reference_dit,
    reference_from_difflab,
    row_first_to_reference,
)
from difflab.diffusion import NULL_LABEL, Conditioning, NoiseSchedule
from difflab.errors import DifflabError
from difflab.io.checkpoint import load_checkpoint, save_checkpoint, split_prefix, with_prefix
from difflab.models import DiT, DiTConfig, build_model, config_from_dict, model_config
from difflab.models.dit import sincos_position_embedding
from tests.convert.reference_dit import random_reference_state, reference_forward

diffusers = pytest.importorskip("diffusers")

NUM_CLASSES = 10
X_SEED = 1


def inputs(
    dtype: torch.dtype, channels: int = 4, size: int = 8, n: int = 4
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """x (n, C, H, W), t (n,) over the whole range, labels (n,) with the null class last."""
    x = torch.randn(n, channels, size, size, generator=torch.Generator().manual_seed(X_SEED))
    t = torch.tensor([0, 1, 500, 999])[:n]
    y = torch.tensor([3, 0, 9, NUM_CLASSES])[:n]  # reference index of the null class: K
    return x.to(dtype), t, y


def our_labels(y: torch.Tensor) -> Conditioning:
    return Conditioning(labels=torch.where(y == NUM_CLASSES, NULL_LABEL, y))


def all_channels(net: DiT, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The network's whole output (prediction + learned-variance values when it has them)."""
    with torch.no_grad():
        if net.config.learn_sigma:
            return torch.cat(net.predict_with_variance(x, t, our_labels(y)), dim=1)
        return net(x, t, our_labels(y))


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


def loaded(config: DiTConfig, weights: dict[str, torch.Tensor], dtype=torch.float32) -> DiT:
    net = DiT(config).to(dtype).eval()
    net.load_state_dict(weights)
    return net


# ----------------------------------------------------------------------------- the reference


@pytest.mark.parametrize("learn_sigma", [True, False])
@pytest.mark.parametrize("build_in", ["float64", "float32 then .double()"])
def test_our_dit_equals_the_transcribed_reference_forward_in_float64(learn_sigma, build_in):
    state = random_reference_state(learn_sigma=learn_sigma, num_classes=NUM_CLASSES)
    config, weights = difflab_from_reference(state, num_heads=2)
    assert (config.position_layout, config.gelu, config.timestep_freq_shift) == (
        "reference",
        "tanh",
        0.0,
    )
    assert config.learn_sigma == learn_sigma and config.num_classes == NUM_CLASSES
    if build_in == "float64":
        default = torch.get_default_dtype()
        torch.set_default_dtype(torch.float64)
        try:
            net = DiT(config).eval()
        finally:
            torch.set_default_dtype(default)
        net.load_state_dict(weights)
    else:
        net = loaded(config, weights, torch.float64)
    x, t, y = inputs(torch.float64)
    expected = reference_forward(state, x, t, y, num_heads=2)  # (4, C', 8, 8)
    ours = all_channels(net, x, t, y)
    assert ours.dtype == torch.float64 and ours.shape == expected.shape
    assert (ours - expected).abs().max() <= 1e-10 * max(1.0, expected.abs().max().item())


def test_the_transcription_equals_diffusers_with_its_timestep_shift():
    """An independent check of the oracle: diffusers' DiT is the reference network except for
    its timestep frequencies (downscale_freq_shift=1) and its pre-MLP norm_eps."""
    state32 = {k: v.float() for k, v in random_reference_state().items()}
    config, weights = difflab_from_reference(state32, num_heads=2)
    raw, peer_state = diffusers_from_difflab(config, weights)
    peer = diffusers.DiTTransformer2DModel(**{k: v for k, v in raw.items() if k[0] != "_"})
    peer.load_state_dict(peer_state)
    peer.eval()
    x, t, y = inputs(torch.float32)
    with torch.no_grad():
        theirs = peer(x, t, y).sample
    shifted = reference_forward(state32, x, t, y, num_heads=2, timestep_shift=1.0)
    unshifted = reference_forward(state32, x, t, y, num_heads=2)
    assert relative(shifted, theirs) < 1e-5
    assert relative(unshifted, theirs) > 1e-3  # the shift is not a rounding matter


def test_the_reference_heads_table_is_the_papers():
    assert REFERENCE_HEADS == {(12, 384): 6, (12, 768): 12, (24, 1024): 16, (28, 1152): 16}
    for name in ("dit-s-2", "dit-b-4", "dit-l-8", "dit-xl-2"):
        config = model_config(name)[1]
        assert REFERENCE_HEADS[(config.depth, config.hidden_size)] == config.num_heads


def test_a_reference_state_dict_round_trips_exactly():
    state = {k: v.float() for k, v in random_reference_state(learn_sigma=False).items()}
    config, weights = difflab_from_reference(state, num_heads=2)
    back = reference_from_difflab(config, weights)
    assert back.keys() == state.keys()
    for key, value in state.items():
        assert torch.equal(back[key], value), key


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_a_reference_file_imports_as_a_difflab_checkpoint(tmp_path, suffix):
    state = {k: v.float() for k, v in random_reference_state(num_classes=NUM_CLASSES).items()}
    src = tmp_path / f"DiT-tiny{suffix}"
    if suffix == ".pt":
        torch.save(state, src)
    else:
        safetensors.torch.save_file(state, src)
    out = tmp_path / "imported.safetensors"
    import_reference_dit(src, out, allow_pickle=True, num_heads=2)
    tensors, meta = load_checkpoint(out, kind="diffusion")
    assert meta["arch"] == "dit" and meta["converted_from"]["format"] == "facebookresearch/DiT"
    assert meta["diffusion"] == {
        "schedule": "linear",
        "num_timesteps": 1000,
        "beta_start": 0.0001,
        "beta_end": 0.02,
    }
    assert meta["data"]["channels"] == 4 and meta["data"]["image_size"] == 8
    config = config_from_dict("dit", meta["model"])
    assert config.learn_sigma and config.gelu == "tanh" and config.position_layout == "reference"
    net = loaded(config, split_prefix(tensors, "model"))
    x, t, y = inputs(torch.float32)
    expected = reference_forward(state, x, t, y, num_heads=2)
    assert relative(all_channels(net, x, t, y), expected) < 1e-5


def test_a_reference_training_checkpoint_gives_its_ema(tmp_path):
    state = {k: v.float() for k, v in random_reference_state().items()}
    src = tmp_path / "0400000.pt"
    torch.save({"model": {k: v * 0 for k, v in state.items()}, "ema": state}, src)
    out = tmp_path / "ema.safetensors"
    import_reference_dit(src, out, allow_pickle=True, num_heads=2)
    tensors, _ = load_checkpoint(out)
    assert torch.equal(tensors["model.patch_embed.weight"], state["x_embedder.proj.weight"])


def test_a_pickle_with_python_objects_is_refused_by_weights_only(tmp_path):
    """train.py checkpoints hold an argparse Namespace: torch's weights_only loader refuses it."""
    state = {k: v.float() for k, v in random_reference_state().items()}
    src = tmp_path / "0400000.pt"
    torch.save({"ema": state, "args": argparse.Namespace(model="DiT-XL/2")}, src)
    with pytest.raises(DifflabError, match=r"could not be read as tensors only.*torch\.save"):
        import_reference_dit(src, tmp_path / "out.safetensors", allow_pickle=True, num_heads=2)
    with pytest.raises(DifflabError, match="--allow-pickle"):
        import_reference_dit(src, tmp_path / "out.safetensors", num_heads=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["0400000.pt"]


def test_sizes_are_inferred_and_checked_against_a_preset(tmp_path):
    state = random_reference_state(hidden=32, depth=2, dtype=torch.float32)
    with pytest.raises(DifflabError, match=r"none of the paper's sizes.*--num-heads"):
        difflab_from_reference(state)
    with pytest.raises(DifflabError, match="depth 2 but preset dit-xl-2 has 28"):
        difflab_from_reference(state, preset="dit-xl-2")
    config, _ = difflab_from_reference(state, preset="dit-tiny")  # depth 2, width 32, 2 heads
    assert (config.num_heads, config.image_size, config.in_channels) == (2, 8, 4)
    without_positions = {k: v for k, v in state.items() if k != "pos_embed"}
    with pytest.raises(DifflabError, match="without pos_embed the image size is unknown"):
        difflab_from_reference(without_positions, num_heads=2)
    assert difflab_from_reference(without_positions, preset="dit-tiny")[0].image_size == 28


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            lambda s: s.update({"blocks.1.mlp.fc2.weight": s["blocks.1.mlp.fc2.weight"][:, :64]}),
            r"'blocks\.1\.mlp\.fc2\.weight' has shape \(32, 64\) but a DiT of the inferred sizes needs \(32, 128\)",
        ),
        (lambda s: s.pop("blocks.0.attn.proj.bias"), r"'blocks\.0\.attn\.proj\.bias' is missing"),
        (
            lambda s: s.update({"extra.weight": torch.zeros(1)}),
            r"not part of a reference DiT \(e\.g\. 'extra\.weight'\)",
        ),
        (
            lambda s: s.update({"pos_embed": s["pos_embed"] + 0.1}),
            "not the fixed 2-D sin-cos table",
        ),
        (lambda s: s.pop("x_embedder.proj.weight"), r"'x_embedder\.proj\.weight' is missing"),
    ],
)
def test_a_damaged_reference_state_dict_is_named(change, message):
    state = random_reference_state(dtype=torch.float32)
    change(state)
    with pytest.raises(DifflabError, match=message):
        difflab_from_reference(state, num_heads=2, where="DiT.pt")


def test_a_row_first_pos_embed_is_recognised():
    """A reference-format file written from difflab's first layout keeps its network."""
    state = random_reference_state(dtype=torch.float32)
    state["pos_embed"] = sincos_position_embedding(4, 32, "row_first")[None]
    assert difflab_from_reference(state, num_heads=2)[0].position_layout == "row_first"


# ----------------------------------------------------------------------------- row-first


def test_a_row_first_dit_is_the_reference_layout_with_its_channel_halves_swapped():
    torch.manual_seed(0)
    arch, config = model_config(
        "dit-tiny", num_classes=NUM_CLASSES, learn_sigma=True, position_layout="row_first"
    )
    net = build_model(arch, config).double().eval()
    with torch.no_grad():
        for parameter in net.parameters():
            parameter.normal_(std=0.2)
    new_config, weights = row_first_to_reference(config, net.state_dict())
    assert new_config == dataclasses.replace(config, position_layout="reference")
    twin = loaded(new_config, weights, torch.float64)
    x, t, y = inputs(torch.float64, channels=1, size=28)
    assert (all_channels(twin, x, t, y) - all_channels(net, x, t, y)).abs().max() < 1e-12


# ----------------------------------------------------------------------------- diffusers


def diffusers_peer(
    *,
    learn_sigma: bool = True,
    norm_eps: float = 1e-6,
    activation_fn: str = "gelu-approximate",
    tie_embedders: bool = True,
) -> diffusers.DiTTransformer2DModel:
    """A tiny random DiTTransformer2DModel whose blocks share one embedder, as in a port of the
    reference (diffusers' own DiT port copies the reference's one embedder into every block)."""
    torch.manual_seed(0)
    peer = diffusers.DiTTransformer2DModel(
        num_attention_heads=2,
        attention_head_dim=16,
        in_channels=4,
        out_channels=8 if learn_sigma else 4,
        num_layers=2,
        sample_size=8,
        patch_size=2,
        num_embeds_ada_norm=NUM_CLASSES,
        activation_fn=activation_fn,
        norm_eps=norm_eps,
    )
    with torch.no_grad():
        for parameter in peer.parameters():
            parameter.normal_(std=0.1 if parameter.dim() > 1 else 0.05)
        if tie_embedders:
            for block in peer.transformer_blocks[1:]:
                block.norm1.emb.load_state_dict(peer.transformer_blocks[0].norm1.emb.state_dict())
    return peer.eval()


def save_pipeline_folder(peer, folder, **scheduler_options) -> None:
    peer.save_pretrained(folder / "transformer")
    diffusers.DDIMScheduler(**scheduler_options).save_pretrained(folder / "scheduler")


@pytest.mark.parametrize(
    ("options", "tolerance"),
    [
        (dict(), 1e-5),
        (dict(learn_sigma=False, activation_fn="gelu"), 1e-5),
        (dict(norm_eps=1e-5), 1e-5),  # diffusers' default: within float32 noise of eps = 1e-6
    ],
)
def test_a_diffusers_dit_imports_with_its_forward(tmp_path, options, tolerance):
    peer = diffusers_peer(**options)
    save_pipeline_folder(
        peer, tmp_path / "pipe", prediction_type="v_prediction", beta_schedule="scaled_linear"
    )
    out = tmp_path / "dit.safetensors"
    import_diffusers_dit(tmp_path / "pipe", out)
    tensors, meta = load_checkpoint(out, kind="diffusion")
    config = config_from_dict("dit", meta["model"])
    assert config.timestep_freq_shift == 1.0 and config.prediction == "v"
    assert meta["diffusion"]["schedule"] == "scaled_linear"
    assert meta["converted_from"]["format"] == "diffusers"
    net = loaded(config, split_prefix(tensors, "model"))
    x, t, y = inputs(torch.float32)
    with torch.no_grad():
        theirs = peer(x, t, y).sample
    error = relative(all_channels(net, x, t, y), theirs)
    print(f"diffusers {options}: max relative error {error:.2e}")
    assert error < tolerance


def test_a_bare_model_folder_gets_diffusers_default_schedule(tmp_path):
    diffusers_peer().save_pretrained(tmp_path / "model")
    out = tmp_path / "dit.safetensors"
    import_diffusers_dit(tmp_path / "model", out)
    _, meta = load_checkpoint(out)
    assert meta["diffusion"] == {
        "schedule": "linear",
        "num_timesteps": 1000,
        "beta_start": 0.0001,
        "beta_end": 0.02,
    }
    assert config_from_dict("dit", meta["model"]).prediction == "eps"


def random_dit(**overrides) -> tuple[DiTConfig, dict[str, torch.Tensor]]:
    torch.manual_seed(0)
    base = dict(image_size=8, in_channels=4, out_channels=4, patch_size=2, num_classes=NUM_CLASSES)
    arch, config = model_config("dit-tiny", **{**base, **overrides})
    net = build_model(arch, config)
    with torch.no_grad():
        for parameter in net.parameters():
            parameter.normal_(std=0.1)
    return config, net.state_dict()


def save_dit_checkpoint(path, config, weights, diffusion=None) -> None:
    from difflab.config import config_to_dict

    meta = {
        "kind": "diffusion",
        "arch": "dit",
        "model": config_to_dict(config),
        "diffusion": diffusion
        or {"schedule": "cosine", "num_timesteps": 500, "beta_start": None, "beta_end": None},
        "data": {"name": "test", "image_size": config.image_size, "channels": config.in_channels},
    }
    save_checkpoint(path, with_prefix(weights, "model"), meta)


@pytest.mark.parametrize(
    "overrides",
    [
        dict(timestep_freq_shift=1, learn_sigma=True),
        dict(timestep_freq_shift=1, num_classes=0, gelu="tanh", prediction="x0"),
    ],
)
def test_difflab_to_diffusers_to_difflab_is_identical(tmp_path, overrides):
    config, weights = random_dit(**overrides)
    save_dit_checkpoint(tmp_path / "a.safetensors", config, weights)
    export_dit_to_diffusers(tmp_path / "a.safetensors", tmp_path / "hf")
    assert sorted(str(p.relative_to(tmp_path / "hf")) for p in (tmp_path / "hf").rglob("*.*")) == [
        "scheduler/scheduler_config.json",
        "transformer/config.json",
        "transformer/diffusion_pytorch_model.safetensors",
    ]
    import_diffusers_dit(tmp_path / "hf", tmp_path / "b.safetensors")
    tensors, meta = load_checkpoint(tmp_path / "b.safetensors")
    assert config_from_dict("dit", meta["model"]) == config
    assert meta["diffusion"]["schedule"] == "cosine" and meta["diffusion"]["num_timesteps"] == 500
    back = split_prefix(tensors, "model")
    assert back.keys() == weights.keys()
    for key, value in weights.items():
        assert torch.equal(back[key], value), key


def test_the_exported_folder_runs_in_diffusers_as_in_difflab(tmp_path):
    config, weights = random_dit(timestep_freq_shift=1, learn_sigma=True)
    save_dit_checkpoint(tmp_path / "a.safetensors", config, weights)
    export_dit_to_diffusers(tmp_path / "a.safetensors", tmp_path / "hf")
    peer = diffusers.DiTTransformer2DModel.from_pretrained(tmp_path / "hf", subfolder="transformer")
    scheduler = diffusers.DDIMScheduler.from_pretrained(tmp_path / "hf", subfolder="scheduler")
    x, t, y = inputs(torch.float32)
    with torch.no_grad():
        theirs = peer.eval()(x, t, y).sample
    error = relative(all_channels(loaded(config, weights), x, t, y), theirs)
    print(f"exported to diffusers: max relative error {error:.2e}")
    assert error < 1e-5
    ours = NoiseSchedule.from_name("cosine", 500).alpha_bar
    assert torch.allclose(scheduler.alphas_cumprod.double(), ours, rtol=1e-5)


def test_a_row_first_dit_exports_with_its_forward(tmp_path):
    """The shipped layout is rewritten to the reference one on export (a channel permutation)."""
    config, weights = random_dit(timestep_freq_shift=1, position_layout="row_first")
    save_dit_checkpoint(tmp_path / "a.safetensors", config, weights)
    export_dit_to_diffusers(tmp_path / "a.safetensors", tmp_path / "hf")
    peer = diffusers.DiTTransformer2DModel.from_pretrained(tmp_path / "hf", subfolder="transformer")
    x, t, y = inputs(torch.float32)
    with torch.no_grad():
        theirs = peer.eval()(x, t, y).sample
    assert relative(all_channels(loaded(config, weights), x, t, y), theirs) < 1e-5
    raw = json.loads((tmp_path / "hf" / "transformer" / "config.json").read_text())
    assert raw["_difflab"]["position_layout"] == "row_first"


def test_an_unshifted_dit_exports_only_when_asked(tmp_path):
    config, weights = random_dit()  # timestep_freq_shift 0, the default
    save_dit_checkpoint(tmp_path / "a.safetensors", config, weights)
    with pytest.raises(DifflabError, match="--allow-timestep-shift"):
        export_dit_to_diffusers(tmp_path / "a.safetensors", tmp_path / "hf")
    assert not (tmp_path / "hf").exists()
    export_dit_to_diffusers(tmp_path / "a.safetensors", tmp_path / "hf", allow_timestep_shift=True)
    import_diffusers_dit(tmp_path / "hf", tmp_path / "b.safetensors")
    tensors, meta = load_checkpoint(tmp_path / "b.safetensors")
    assert config_from_dict("dit", meta["model"]) == dataclasses.replace(
        config, timestep_freq_shift=1.0
    )  # the folder holds what diffusers runs
    for key, value in split_prefix(tensors, "model").items():
        assert torch.equal(value, weights[key]), key


@pytest.mark.parametrize(
    ("peer_options", "edit", "message"),
    [
        (
            dict(tie_embedders=False),
            None,
            r"block 1's copy of norm1\.emb\..* differs from block 0's",
        ),
        (dict(norm_eps=1e-4), None, "norm_eps 0.0001 cannot be imported"),
        (dict(), {"activation_fn": "geglu"}, "activation_fn 'geglu' cannot be imported"),
        (dict(), {"norm_elementwise_affine": True}, "norm_elementwise_affine=True"),
        (dict(), {"out_channels": 6}, "out_channels 6 is neither"),
    ],
)
def test_diffusers_options_difflab_cannot_compute_are_refused(peer_options, edit, message):
    peer = diffusers_peer(**peer_options)
    raw = {**dict(peer.config), **(edit or {})}
    with pytest.raises(DifflabError, match=message):
        difflab_from_diffusers(raw, peer.state_dict())


def test_the_package_entry_point_detects_each_format(tmp_path):
    state = {k: v.float() for k, v in random_reference_state().items()}
    safetensors.torch.save_file(state, tmp_path / "ref.safetensors")
    done = convert(tmp_path / "ref.safetensors", tmp_path / "a.safetensors", num_heads=2)
    assert (done.source.format, done.target) == ("reference", "difflab")
    # a reference-equal model with shift 0: export needs the flag
    done = convert(tmp_path / "a.safetensors", tmp_path / "hf", allow_timestep_shift=True)
    assert (done.source.format, done.target) == ("difflab", "diffusers")
    done = convert(tmp_path / "hf", tmp_path / "b.safetensors")
    assert (done.source.format, done.source.arch) == ("diffusers", "dit")
    weights = split_prefix(load_checkpoint(tmp_path / "b.safetensors")[0], "model")
    assert torch.equal(weights["blocks.1.qkv.weight"], state["blocks.1.attn.qkv.weight"])


def test_the_hub_layout_of_diffusers_dit_folders_imports(tmp_path):
    """facebook/DiT-XL-2-256 on the hub: class Transformer2DModel, a legacy config without
    norm_eps (so 1e-5), pickled or safetensors weights; a weights file given alone works too."""
    peer = diffusers_peer(norm_eps=1e-5)
    peer.save_pretrained(tmp_path / "pipe" / "transformer", safe_serialization=False)
    config_path = tmp_path / "pipe" / "transformer" / "config.json"
    raw = json.loads(config_path.read_text())
    del raw["norm_eps"]
    raw |= {
        "_class_name": "Transformer2DModel",
        "cross_attention_dim": None,
        "num_vector_embeds": None,
        "only_cross_attention": False,
        "use_linear_projection": False,
    }
    config_path.write_text(json.dumps(raw))
    with pytest.raises(DifflabError, match="--allow-pickle"):
        convert(tmp_path / "pipe", tmp_path / "a.safetensors")
    convert(tmp_path / "pipe", tmp_path / "a.safetensors", allow_pickle=True)
    tensors, meta = load_checkpoint(tmp_path / "a.safetensors")
    net = loaded(config_from_dict("dit", meta["model"]), split_prefix(tensors, "model"))
    x, t, y = inputs(torch.float32)
    with torch.no_grad():
        theirs = peer(x, t, y).sample
    assert relative(all_channels(net, x, t, y), theirs) < 1e-5
    peer.save_pretrained(tmp_path / "model")
    done = convert(
        tmp_path / "model" / "diffusion_pytorch_model.safetensors", tmp_path / "b.safetensors"
    )
    assert done.source.path == tmp_path / "model" and (tmp_path / "b.safetensors").is_file()


def test_only_diffusion_checkpoints_convert(tmp_path):
    save_checkpoint(tmp_path / "vq.safetensors", {"w": torch.zeros(1)}, {"kind": "vqvae"})
    with pytest.raises(DifflabError, match="difflab 'vqvae' checkpoint"):
        convert(tmp_path / "vq.safetensors", tmp_path / "hf")
