"""difflab U-Net <-> diffusers UNet2DModel + DDIM scheduler: diffusers itself is the oracle.

Export: the same x_t, t (and labels) through difflab's U-Net and through the exported folder
loaded by ``UNet2DModel.from_pretrained`` agree to 1e-5 relative in float32. Import: DDIM
sampling with difflab's sampler on the imported checkpoint and with diffusers' own scheduler on the
source folder agree to 1e-4 from the same noise. Round trips are bit-exact.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import pytest
import torch

from difflab.config import config_to_dict
from difflab.convert import unet as convert_unet
from difflab.convert.unet import export_unet_to_diffusers, import_diffusers_unet
from difflab.diffusion import NULL_LABEL, Conditioning, Denoiser, NoiseSchedule, timestep_sequence
from difflab.errors import DifflabError
from difflab.io.checkpoint import load_checkpoint, save_checkpoint, with_prefix
from difflab.models.unet import UNet, UNetConfig
from difflab.pipelines import load_pipeline
from difflab.samplers import ddim_sample

diffusers = pytest.importorskip("diffusers")

LINEAR = {"schedule": "linear", "num_timesteps": 1000, "beta_start": None, "beta_end": None}
COSINE = {"schedule": "cosine", "num_timesteps": 1000, "beta_start": None, "beta_end": None}

# the smallest widths diffusers can mirror: difflab caps GroupNorm groups at a layer's width
# (8 groups for 8 channels), diffusers uses 32 everywhere, so every width is a multiple of 32
TINY = UNetConfig(
    image_size=8,
    in_channels=3,
    out_channels=3,
    base_channels=32,
    channel_mult=(1, 2),
    num_res_blocks=1,
    attention_resolutions=(4,),
)
EXPORTABLE = {
    "unconditional-scale-shift-1-head": (TINY, LINEAR),
    "class-conditional-head-channels-no-scale-shift-dropout-x0": (
        dataclasses.replace(
            TINY,
            channel_mult=(1, 1, 2),
            attention_resolutions=(8, 2),
            head_channels=16,
            scale_shift_norm=False,
            dropout=0.1,
            num_classes=4,
            prediction="x0",
        ),
        LINEAR,
    ),
    "two-heads-of-one-width-v-cosine-grey": (
        dataclasses.replace(
            TINY,
            in_channels=1,
            out_channels=2,
            channel_mult=(1, 1),
            num_res_blocks=2,
            attention_resolutions=(8,),
            num_heads=2,
            prediction="v",
        ),
        COSINE,
    ),
}


def random_unet(config: UNetConfig, seed: int = 0) -> UNet:
    """A U-Net whose zero-initialised layers (every last conv, every attention output) are not."""
    torch.manual_seed(seed)
    net = UNet(config)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return net.eval()


def write_checkpoint(path: Path, net: UNet, diffusion: dict, prefix: str = "ema") -> Path:
    c = net.config
    meta = {
        "kind": "diffusion",
        "arch": "unet",
        "model": config_to_dict(c),
        "diffusion": diffusion,
        "data": {"name": "test", "image_size": c.image_size, "channels": c.in_channels},
    }
    return save_checkpoint(path, with_prefix(net.state_dict(), prefix), meta)


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


@pytest.mark.parametrize("name", list(EXPORTABLE))
def test_export_forward_matches_diffusers(tmp_path: Path, name: str) -> None:
    assert_export_matches_diffusers(tmp_path, *EXPORTABLE[name])


def test_equal_per_level_block_counts_export_as_one_layers_per_block(tmp_path: Path) -> None:
    """num_res_blocks=(2, 2) is the network of num_res_blocks=2; fails if the tuple reached
    diffusers' config (UNet2DModel's layers_per_block is one int) or the blocks were misnamed."""
    assert_export_matches_diffusers(tmp_path, dataclasses.replace(TINY, num_res_blocks=(2, 2)))
    written = json.loads((tmp_path / "out" / "unet" / "config.json").read_text())
    assert written["layers_per_block"] == 2


def assert_export_matches_diffusers(tmp_path: Path, config: UNetConfig, diffusion=LINEAR) -> None:
    """Export a random net of ``config``; diffusers' UNet2DModel computes the same outputs."""
    net = random_unet(config)
    export_unet_to_diffusers(
        write_checkpoint(tmp_path / "m.safetensors", net, diffusion), tmp_path / "out"
    )
    theirs = diffusers.UNet2DModel.from_pretrained(tmp_path / "out" / "unet").eval()
    x = torch.randn(3, config.in_channels, config.image_size, config.image_size)
    t = torch.tensor([0, 437, 999])
    labels = torch.tensor([0, config.num_classes - 1, NULL_LABEL]) if config.num_classes else None
    with torch.no_grad():
        ours = net(x, t, Conditioning(labels=labels))
        # diffusers' class_labels: row num_classes is difflab's "no label"
        class_labels = None if labels is None else labels.where(labels >= 0, config.num_classes)
        out = theirs(x, t, class_labels=class_labels).sample
    assert ours.abs().max() > 0.1  # the perturbed layers make the output depend on everything
    assert relative_error(out, ours) <= 1e-5


def test_export_scheduler_reproduces_schedule_and_timesteps(tmp_path: Path) -> None:
    config = dataclasses.replace(TINY, prediction="v")
    for name, diffusion in {
        "linear": {**LINEAR, "beta_start": 2e-4, "beta_end": 0.03, "num_timesteps": 500},
        "cosine": COSINE,
        "scaled_linear": {**LINEAR, "schedule": "scaled_linear"},
    }.items():
        out = tmp_path / name
        export_unet_to_diffusers(
            write_checkpoint(tmp_path / f"{name}.safetensors", random_unet(config), diffusion), out
        )
        scheduler = diffusers.DDIMScheduler.from_pretrained(out / "scheduler")
        ours = NoiseSchedule.from_name(
            diffusion["schedule"],
            diffusion["num_timesteps"],
            diffusion["beta_start"],
            diffusion["beta_end"],
        )
        assert scheduler.config.prediction_type == "v_prediction"
        # diffusers keeps float32 betas: equal to float32 precision
        torch.testing.assert_close(scheduler.betas.double(), ours.betas, rtol=1e-6, atol=0)
        torch.testing.assert_close(
            scheduler.alphas_cumprod.double(), ours.alpha_bar, rtol=0, atol=1e-6
        )
        T = diffusion["num_timesteps"]
        for steps in (10, 50, 7):  # leading = difflab's "leading", and "uniform" when S divides T
            scheduler.set_timesteps(steps)
            assert torch.equal(scheduler.timesteps, timestep_sequence(T, steps, "leading"))
            if T % steps == 0:
                assert torch.equal(scheduler.timesteps, timestep_sequence(T, steps, "uniform"))


def test_exported_ddim_pipeline_samples_like_difflab(tmp_path: Path) -> None:
    """DDIMPipeline.from_pretrained on the export: same images as difflab's DDIM, same noise."""
    net = random_unet(TINY)
    checkpoint = write_checkpoint(tmp_path / "m.safetensors", net, LINEAR, prefix="model")
    export_unet_to_diffusers(checkpoint, tmp_path / "out")
    pipe = diffusers.DDIMPipeline.from_pretrained(tmp_path / "out")
    generator = torch.Generator().manual_seed(3)
    images = pipe(
        batch_size=2, generator=generator, num_inference_steps=10, eta=0.0, output_type="np"
    ).images
    x_T = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(3))
    model = load_pipeline(checkpoint)
    with torch.no_grad():
        x0 = ddim_sample(model.denoiser(), x_T, model.timesteps(10, "leading"), eta=0.0)
    ours = (
        (x0 / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy()
    )  # diffusers' output: NHWC in [0, 1]
    assert abs(ours - images).max() <= 1e-4


def test_shipped_mnist_models_export(tmp_path: Path) -> None:
    """The trained MNIST U-Nets (unconditional, class-conditional) export as they are: the same
    forward pass, and diffusers' DDIM over the exported scheduler draws difflab's images."""
    for name in ("mnist_ddim", "mnist_cond"):
        model = load_pipeline(name)
        export_unet_to_diffusers(Path(model.description.source), tmp_path / name)
        theirs = diffusers.UNet2DModel.from_pretrained(tmp_path / name / "unet").eval()
        scheduler = diffusers.DDIMScheduler.from_pretrained(tmp_path / name / "scheduler")
        x, t = torch.randn(2, 1, 28, 28), torch.tensor([10, 900])
        labels = torch.tensor([3, NULL_LABEL]) if model.num_classes else None
        class_labels = torch.tensor([3, model.num_classes]) if model.num_classes else None
        with torch.no_grad():
            ours = model.net(x, t, Conditioning(labels=labels))
            assert relative_error(theirs(x, t, class_labels=class_labels).sample, ours) <= 1e-5
            scheduler.set_timesteps(10)
            x_T = torch.randn(2, 1, 28, 28, generator=torch.Generator().manual_seed(0))
            images = x_T
            for step in scheduler.timesteps:
                eps = theirs(images, step, class_labels=class_labels).sample
                images = scheduler.step(eps, step, images, eta=0.0).prev_sample
            timesteps = model.timesteps(10, "leading")
            ours = ddim_sample(model.denoiser(), x_T, timesteps, Conditioning(labels=labels))
        assert torch.equal(scheduler.timesteps, timesteps)
        assert float((ours - images).abs().max()) <= 1e-4


# --- import --------------------------------------------------------------------------------------


def diffusers_pipeline_folder(path: Path, *, num_classes: int = 0, **options) -> Path:
    """A tiny random UNet2DModel + DDIMScheduler saved as a DDIMPipeline folder."""
    scheduler_options = {
        k: options.pop(k)
        for k in ("beta_schedule", "prediction_type", "timestep_spacing", "trained_betas")
        if k in options
    }
    torch.manual_seed(1)
    unet = diffusers.UNet2DModel(
        **{
            "sample_size": 8,
            "in_channels": 3,
            "out_channels": 3,
            "block_out_channels": (32, 64),
            "layers_per_block": 1,
            "down_block_types": ("DownBlock2D", "AttnDownBlock2D"),
            "up_block_types": ("AttnUpBlock2D", "UpBlock2D"),
            "num_class_embeds": num_classes + 1 if num_classes else None,
            **options,
        }
    )
    with torch.no_grad():
        for p in unet.parameters():
            p.add_(0.05 * torch.randn_like(p))
    scheduler = diffusers.DDIMScheduler(clip_sample=False, **scheduler_options)
    diffusers.DDIMPipeline(unet=unet, scheduler=scheduler).save_pretrained(path)
    return path


def diffusers_ddim(
    folder: Path, x_T: torch.Tensor, steps: int, class_labels=None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(x_0, timesteps) of diffusers' own DDIM loop (eta = 0) over the folder's unet and scheduler."""
    unet = diffusers.UNet2DModel.from_pretrained(folder / "unet").eval()
    scheduler = diffusers.DDIMScheduler.from_pretrained(folder / "scheduler")
    scheduler.set_timesteps(steps)
    x = x_T
    with torch.no_grad():
        for t in scheduler.timesteps:
            out = unet(x, t, class_labels=class_labels).sample
            x = scheduler.step(out, t, x, eta=0.0).prev_sample
    return x, scheduler.timesteps


IMPORTABLE = {
    # name: (UNet2DModel / scheduler options, difflab spacing equal to the scheduler's)
    "scale-shift-heads-16-flipped-sincos-eps-linear": (
        dict(
            resnet_time_scale_shift="scale_shift",
            attn_norm_num_groups=32,
            attention_head_dim=16,
            flip_sin_to_cos=False,
        ),
        "leading",
    ),
    "class-conditional-one-head-v-cosine-trailing": (
        dict(
            num_classes=5,
            attention_head_dim=None,
            dropout=0.1,
            beta_schedule="squaredcos_cap_v2",
            prediction_type="v_prediction",
            timestep_spacing="trailing",
        ),
        "trailing",
    ),
    "x0-scaled-linear-attention-at-8": (
        dict(
            down_block_types=("AttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "AttnUpBlock2D"),
            beta_schedule="scaled_linear",
            prediction_type="sample",
        ),
        "leading",
    ),
}


@pytest.mark.parametrize("name", list(IMPORTABLE))
def test_import_samples_like_diffusers_ddim(tmp_path: Path, name: str) -> None:
    options, spacing = IMPORTABLE[name]
    num_classes = options.get("num_classes", 0)
    folder = diffusers_pipeline_folder(tmp_path / "pipe", **options)
    import_diffusers_unet(folder, tmp_path / "m.safetensors")
    model = load_pipeline(tmp_path / "m.safetensors")
    assert model.num_classes == num_classes
    x_T = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([1, NULL_LABEL]) if num_classes else None
    class_labels = torch.tensor([1, num_classes]) if num_classes else None
    theirs, their_timesteps = diffusers_ddim(folder, x_T, 10, class_labels)
    timesteps = timestep_sequence(model.schedule.num_timesteps, 10, spacing)
    assert torch.equal(their_timesteps, timesteps)
    with torch.no_grad():
        ours = ddim_sample(
            Denoiser(model.net, model.schedule),
            x_T,
            timesteps,
            Conditioning(labels=labels),
            eta=0.0,
        )
    # random eps-networks push x_0 far outside [-1, 1] (up to ~300 here), so the bound is 1e-4
    # of the images' range; trained models are held to 1e-4 absolute below
    scale = max(1.0, float(theirs.abs().max()))
    assert float((ours - theirs).abs().max()) <= 1e-4 * scale


def test_bare_model_folder_gets_diffusers_default_schedule(tmp_path: Path) -> None:
    folder = diffusers_pipeline_folder(tmp_path / "pipe")
    import_diffusers_unet(folder / "unet", tmp_path / "m.safetensors")
    _, meta = load_checkpoint(tmp_path / "m.safetensors")
    assert meta["diffusion"] == {
        "schedule": "linear",
        "num_timesteps": 1000,
        "beta_start": 1e-4,
        "beta_end": 0.02,
    }
    assert meta["model"]["prediction"] == "eps"
    assert meta["converted_from"]["scheduler"].startswith("none")


def test_trained_betas_of_a_named_schedule_import(tmp_path: Path) -> None:
    betas = NoiseSchedule.from_name("cosine", 1000).betas.float().tolist()
    folder = diffusers_pipeline_folder(tmp_path / "pipe", trained_betas=betas)
    import_diffusers_unet(folder, tmp_path / "m.safetensors")
    assert load_checkpoint(tmp_path / "m.safetensors")[1]["diffusion"]["schedule"] == "cosine"


@pytest.mark.parametrize("name", list(EXPORTABLE))
def test_round_trip_difflab_diffusers_difflab_is_exact(tmp_path: Path, name: str) -> None:
    config, diffusion = EXPORTABLE[name]
    source = write_checkpoint(tmp_path / "a.safetensors", random_unet(config), diffusion)
    export_unet_to_diffusers(source, tmp_path / "pipe")
    import_diffusers_unet(tmp_path / "pipe", tmp_path / "b.safetensors")
    before, meta_before = load_checkpoint(source)
    after, meta_after = load_checkpoint(tmp_path / "b.safetensors")
    assert sorted(after) == sorted(k.replace("ema.", "model.", 1) for k in before)
    for key, value in before.items():
        assert torch.equal(after[key.replace("ema.", "model.", 1)], value), key
    model_after = meta_after["model"]
    if config.num_heads > 1:  # n heads of one width come back as that head width
        model_after = {**model_after, "num_heads": config.num_heads, "head_channels": 0}
    assert model_after == meta_before["model"]
    schedule_before = NoiseSchedule.from_name(
        *[diffusion[k] for k in ("schedule", "num_timesteps", "beta_start", "beta_end")]
    )
    d = meta_after["diffusion"]
    schedule_after = NoiseSchedule.from_name(
        d["schedule"], d["num_timesteps"], d["beta_start"], d["beta_end"]
    )
    assert torch.equal(schedule_before.betas, schedule_after.betas)


# --- refusals ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "phrase"),
    [
        (dict(image_size=10, channel_mult=(1, 1, 1), attention_resolutions=()), "divisible by 4"),
        (dict(base_channels=8), "GroupNorms"),
        (dict(channel_mult=(1, 2), attention_resolutions=(8, 4), num_heads=2), "head width"),
        (dict(num_res_blocks=(1, 2)), "one layers_per_block for all levels"),
        (dict(resample_first=True), "option resample_first=True has no diffusers"),
    ],
)
def test_export_refuses_what_diffusers_lacks(tmp_path: Path, overrides: dict, phrase: str) -> None:
    config = dataclasses.replace(TINY, **overrides)
    checkpoint = write_checkpoint(tmp_path / "m.safetensors", random_unet(config), LINEAR)
    with pytest.raises(DifflabError, match=phrase):
        export_unet_to_diffusers(checkpoint, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors"]


@pytest.mark.parametrize(
    ("options", "phrase"),
    [
        (dict(freq_shift=1), "freq_shift=1"),
        (dict(upsample_type="resnet"), "upsample_type='resnet'"),
        (dict(norm_num_groups=16), "norm_num_groups=16"),
        (dict(resnet_time_scale_shift="scale_shift"), "attn_norm_num_groups=None"),
        (dict(up_block_types=("UpBlock2D", "UpBlock2D")), "up_block_types"),
        (dict(center_input_sample=True), "center_input_sample=True"),
        (dict(class_embed_type="timestep"), "class_embed_type='timestep'"),
        (dict(beta_schedule="sigmoid"), "'sigmoid' schedule"),
    ],
)
def test_import_refuses_what_difflab_cannot_represent(
    tmp_path: Path, options: dict, phrase: str
) -> None:
    if options.get("beta_schedule") == "sigmoid":  # diffusers' DDIM cannot build it: edit the file
        folder = diffusers_pipeline_folder(tmp_path / "pipe")
        path = folder / "scheduler" / "scheduler_config.json"
        path.write_text(json.dumps({**json.loads(path.read_text()), **options}))
    else:
        folder = diffusers_pipeline_folder(tmp_path / "pipe", **options)
    with pytest.raises(DifflabError, match=phrase):
        import_diffusers_unet(folder, tmp_path / "m.safetensors")
    assert not (tmp_path / "m.safetensors").exists()


def test_import_names_every_option_ddpm_cifar10_has_that_difflab_lacks(tmp_path: Path) -> None:
    """google/ddpm-cifar10-32's config.json, shrunk: three options difflab's U-Net lacks."""
    folder = diffusers_pipeline_folder(
        tmp_path / "pipe",
        flip_sin_to_cos=False,  # this one imports (a permutation of the first layer's inputs)
        freq_shift=1,
        downsample_padding=0,
        norm_eps=1e-6,
        attention_head_dim=None,
    )
    with pytest.raises(DifflabError) as error:
        import_diffusers_unet(folder, tmp_path / "m.safetensors")
    message = str(error.value)
    assert all(f in message for f in ("freq_shift=1", "downsample_padding=0", "norm_eps=1e-06"))
    assert "flip_sin_to_cos" not in message


def test_import_never_unpickles(tmp_path: Path) -> None:
    folder = diffusers_pipeline_folder(tmp_path / "pipe")
    (folder / "unet" / convert_unet.WEIGHTS_NAME).unlink()
    (folder / "unet" / convert_unet.PICKLED_WEIGHTS_NAME).write_bytes(b"\x80\x04not read")
    with pytest.raises(DifflabError, match="never unpickles"):
        import_diffusers_unet(folder, tmp_path / "m.safetensors")


def test_export_is_all_or_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    checkpoint = write_checkpoint(tmp_path / "m.safetensors", random_unet(TINY), LINEAR)
    out = tmp_path / "out"
    calls = []

    def full_disk(fd: int) -> None:  # the disk fills up after the first file of the folder
        calls.append(fd)
        if len(calls) > 1:
            raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full_disk)
    with pytest.raises(DifflabError, match="No space left"):
        export_unet_to_diffusers(checkpoint, out)
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors"]  # no out, no temporary
    export_unet_to_diffusers(checkpoint, out)
    written = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert sorted(map(str, written)) == [
        "model_index.json",
        "scheduler/scheduler_config.json",
        "unet/config.json",
        "unet/diffusion_pytorch_model.safetensors",
    ]
    with pytest.raises(DifflabError, match="already exists"):  # convert never overwrites
        export_unet_to_diffusers(checkpoint, out)
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == written
    import_diffusers_unet(out, tmp_path / "back.safetensors")
    with pytest.raises(DifflabError, match="already exists"):
        import_diffusers_unet(out, tmp_path / "back.safetensors")
