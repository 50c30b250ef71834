"""A tiny Imagen cascade end to end: train two stages for a few steps, sample, CLI, bad input."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from difflab.cli import main
from difflab.diffusion.denoiser import Prediction
from difflab.errors import DifflabError
from difflab.io.checkpoint import load_checkpoint_meta
from difflab.pipelines import CascadePipeline, StageSettings
from difflab.samplers.thresholding import DynamicThreshold
from difflab.training.imagen_loop import imagen_stage_config, train_imagen_stage
from tests.data.test_colour_digits import write_square_mnist

TINY_MODEL = dict(
    preset="unet-imagen-base", base_channels=8, channel_mult=[1, 2], attention_resolutions=[4],
    head_channels=8,
)  # fmt: skip


@pytest.fixture(scope="module")
def stages(tmp_path_factory):
    """A base stage at 8x8 and a super-resolution stage 8 -> 16, 3 training steps each."""
    folder = Path(write_square_mnist(tmp_path_factory.mktemp("imagen"), 40, 10))
    common = dict(
        text_encoder={"max_length": 16},
        model=TINY_MODEL,
        diffusion={"schedule": "cosine", "num_timesteps": 50},
    )
    train = dict(steps=3, batch_size=4, log_every=100)
    base = imagen_stage_config(
        dict(common, stage="base", data=dict(size=8, count=40, data_dir=str(folder)),
             model=dict(TINY_MODEL, prediction="v"),
             train=dict(train, high_noise_fraction=0.5, out=str(folder / "base.safetensors"))),
        "base",
    )  # fmt: skip
    sr = imagen_stage_config(
        dict(common, stage="super_resolution", low_res_size=8,
             data=dict(size=16, count=40, data_dir=str(folder)),
             train=dict(train, out=str(folder / "sr.safetensors"))),
        "sr",
    )  # fmt: skip
    return train_imagen_stage(base, progress=False), train_imagen_stage(sr, progress=False)


def test_checkpoints_record_the_stage_and_are_fp16(stages):
    """Fails if the stage, the augmentation or the training cost go missing from the JSON."""
    meta = load_checkpoint_meta(stages[1])
    assert meta["imagen"]["stage"] == "super_resolution" and meta["imagen"]["low_res_size"] == 8
    assert meta["training"]["steps"] == 3 and meta["training"]["seconds"] > 0
    assert meta["model"]["low_res_channels"] == 3 and meta["model"]["skip_scale"] == 2**-0.5
    with safe_open(str(stages[0]), "pt") as weights:
        assert weights.get_tensor("ema.conv_out.weight").dtype == torch.float16


def test_cascade_shapes_and_per_stage_settings(stages):
    """Fails if a stage is skipped, sizes do not chain, or the SR noise level is not applied."""
    cascade = CascadePipeline.load(stages)
    prompts = ["a red 7 on a yellow background", ""]  # "" = the null prompt
    settings = [StageSettings(steps=2), StageSettings(steps=2, threshold=None, noise_level=0.5)]
    base, final = cascade.generate(prompts, settings, seed=3, return_stages=True)
    assert base.shape == (2, 3, 8, 8) and final.shape == (2, 3, 16, 16)
    assert final.abs().max() <= 1
    again = cascade.generate(prompts, settings, seed=3)
    assert torch.equal(again, final)
    cleaner = cascade.generate(
        prompts, [settings[0], StageSettings(steps=2, threshold=None)], seed=3
    )
    assert not torch.equal(cleaner, final)


def test_stages_that_do_not_chain(stages):
    """Fails if an SR stage can come first or a base stage can follow another."""
    with pytest.raises(DifflabError, match="starts with a base stage"):
        CascadePipeline.load(stages[::-1])
    with pytest.raises(DifflabError, match="must be a super-resolution stage"):
        CascadePipeline.load([stages[0], stages[0]])


def test_cli_generate_and_bad_prompt_file(stages, tmp_path, capsys):
    """Fails if the CLI cannot reach the cascade, or a non-UTF-8 prompt file is a traceback."""
    out = tmp_path / "img.png"
    code = main([
        "generate", "a blue 1 on a white background", "--stages", f"{stages[0]},{stages[1]}",
        "--steps", "2", "--sr-steps", "2", "--guidance-scale", "3", "--threshold", "dynamic",
        "--out", str(out),
    ])  # fmt: skip
    assert code == 0 and out.is_file()
    assert "16x16" in capsys.readouterr().out
    bad = tmp_path / "prompts.txt"
    bad.write_bytes(b"a red \xff seven\n")
    assert main(["generate", "--prompt-file", str(bad), "--out", str(tmp_path / "x.png")]) == 2
    assert "is not UTF-8" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()


class _FixedX0:
    """A denoiser stand-in whose x0 is a fixed tensor (for a hand-computed threshold)."""

    def __init__(self, x0: torch.Tensor, schedule) -> None:
        self.x0, self.schedule = x0, schedule

    def __call__(self, x_t, t, cond=None) -> Prediction:
        return Prediction(torch.zeros_like(self.x0), self.x0)


def test_dynamic_threshold_against_a_hand_computation():
    """|x0| sorted = 0.2, 0.5, 1.5, 2.5, 3; the 0.75-quantile (linear) is element 3 = 2.5 and the
    0.5-quantile element 2 = 1.5, so x0 <- clip(x0, -s, s) / s by hand. Fails if s is not the
    per-sample quantile of |x0| or the division by s is dropped."""
    from difflab.diffusion import NoiseSchedule

    schedule = NoiseSchedule.from_name("linear", 10)
    x0 = torch.tensor([-3.0, -0.5, 0.2, 1.5, 2.5]).reshape(1, 1, 1, 5)
    x_t = torch.zeros_like(x0)
    out = DynamicThreshold(_FixedX0(x0, schedule), percentile=0.75)(x_t, torch.tensor([5])).x0
    torch.testing.assert_close(out.flatten(), torch.tensor([-1.0, -0.2, 0.08, 0.6, 1.0]))
    out = DynamicThreshold(_FixedX0(x0, schedule), percentile=0.5)(x_t, torch.tensor([5])).x0
    torch.testing.assert_close(out.flatten(), torch.tensor([-1.0, -1 / 3, 0.2 / 1.5, 1.0, 1.0]))


def test_each_stage_starts_where_its_prediction_allows(stages):
    """The v-predicting base starts at t = T - 1 (trailing spacing: x_T ~ N(0, I) is what it was
    trained on there), the eps-predicting SR stage at uniform spacing's top (its x0 estimate
    divides by sqrt(alpha_bar), ~0 at T - 1). Fails if the base starts at t = 25 of 50 (uniform
    spacing, where training's x_t still holds sqrt(alpha_bar) of the image and pure noise does
    not), or if an explicit spacing is ignored."""
    cascade = CascadePipeline.load(stages)
    first: dict[int, int] = {}

    def record(stage: int, info) -> None:
        first.setdefault(stage, info.t)

    cascade.generate(["a red 7"], StageSettings(steps=2), callback=record)
    assert first == {0: 49, 1: 25}
    first.clear()
    cascade.generate(["a red 7"], StageSettings(steps=2, spacing="uniform"), callback=record)
    assert first == {0: 25, 1: 25}


def test_high_noise_fraction_draws_the_top_timesteps():
    """Fails if the share of t drawn from [0.85 T, T) ignores train.high_noise_fraction, if the
    top range is wrong, or if a fraction of 0 changes the plain U{0..T-1} draw."""
    from difflab.diffusion import NoiseSchedule
    from difflab.diffusion.loss import draw_noise
    from difflab.training.imagen_loop import ImagenTrainConfig, draw_stage_noise

    schedule = NoiseSchedule.from_name("cosine", 1000)
    shape = torch.Size((20000, 1, 1, 1))
    plain = draw_noise(schedule, tuple(shape), torch.Generator().manual_seed(0))
    same = draw_stage_noise(schedule, shape, torch.Generator().manual_seed(0), ImagenTrainConfig())
    assert all(torch.equal(a, b) for a, b in zip(plain, same, strict=True))
    config = ImagenTrainConfig(high_noise_fraction=0.5, high_noise_start=0.85)
    t, _ = draw_stage_noise(schedule, shape, torch.Generator().manual_seed(0), config)
    top = (t >= 850).float().mean().item()
    assert abs(top - (0.5 + 0.5 * 0.15)) < 0.02 and t.max() == 999 and t.min() == 0


def test_a_learned_caption_encoder_stage(stages, tmp_path):
    """The bag-of-words baseline: a base stage whose caption encoder (word and position
    embeddings, depth 0) is learned with it. Fails if the encoder is not trained and saved with
    the stage (load_pipeline must give it back with its vocabulary), or if a cascade, which shares
    the frozen encoder, accepts the stage instead of one sentence."""
    from difflab.pipelines import load_pipeline

    folder = Path(stages[0]).parent
    config = imagen_stage_config(
        dict(stage="base", data=dict(size=8, count=40, data_dir=str(folder)), model=TINY_MODEL,
             learned_text_encoder={"depth": 0, "max_length": 12},
             diffusion={"schedule": "cosine", "num_timesteps": 50},
             train=dict(steps=2, batch_size=4, out=str(tmp_path / "bow.safetensors"))),
        "bow",
    )  # fmt: skip
    path = train_imagen_stage(config, progress=False)
    with safe_open(str(path), "pt") as weights:
        table = weights.get_tensor("ema.text_encoder.word_embedding.weight")
    pipe = load_pipeline(path)
    assert pipe.text_encoder is not None and "crimson" in pipe.text_encoder.tokenizer.words
    assert table.shape == (pipe.text_encoder.vocab_size, 384)
    cond = pipe.caption_conditioning(["a crimson 7 on a navy background", ""])
    assert cond.token_mask[0].sum() == 7 and not cond.token_mask[1].any()
    with pytest.raises(DifflabError, match="learned caption encoder"):
        CascadePipeline.load([path])


def test_the_shipped_stages_read_their_conditioning_at_high_noise():
    """The colours of an image are decided at high noise, where x_t shows nothing of them and only
    the conditioning can. From pure noise at each stage's first sampling step:

    * the shipped base's x0 must show the prompt's background colour (nearest palette colour of
      its border) for at least 90 % of 48 test captions (chance: 1 in 8); it reads 1.00 (the
      hour-long base before it, batch 16 and a constant lr: 0.60; the 20-minute v base: 0.52).
      The first shipped base (eps prediction, uniform timesteps) read 0.19: it had learned to
      ignore the text there, so its samples' colours were at chance.
    * the shipped 16 -> 32 stage's x0 must keep the colours of its low-resolution input (mean
      colour per image within 0.2; it is 0.05). The first shipped SR stage (eps) was 0.80 off:
      it ignored its input there and redrew the colours at random.
    """
    from difflab.data.colour_digits import COLOUR_NAMES, COLOUR_RGB, load_colour_digits
    from difflab.data.transforms import resize_images

    cascade = CascadePipeline.load()
    data = load_colour_digits("test", 32, 48, seed=1)
    text = cascade.text_conditioning(list(data.captions))
    low = resize_images(data.images, 16)  # (48, 3, 16, 16)
    x0 = []
    for stage, size, cond in (
        (cascade.stages[0], 16, text),
        (cascade.stages[1], 32, cascade.low_res_conditioning(text, low, 0.0, seed=0)),
    ):
        x_t = torch.randn(48, 3, size, size, generator=torch.Generator().manual_seed(0))
        spacing = stage.pipeline.auto_spacing("ddim")
        first = stage.pipeline.timesteps(10, spacing)[:1]  # its first step's t
        with torch.no_grad():
            x0.append(stage.pipeline.denoiser()(x_t, first, cond).x0.clamp(-1, 1))
    rgb = (x0[0] + 1) / 2  # (48, 3, 16, 16)
    border = torch.cat([rgb[..., 0, :], rgb[..., -1, :], rgb[..., 1:-1, 0], rgb[..., 1:-1, -1]], -1)
    palette = torch.tensor([COLOUR_RGB[name] for name in COLOUR_NAMES])  # (8, 3)
    read = torch.cdist(border.median(-1).values, palette).argmin(1)  # (48,)
    assert (read == data.bg).float().mean() >= 0.9
    colour_error = (x0[1].mean((2, 3)) - low.mean((2, 3))).abs().mean()
    assert colour_error <= 0.2, colour_error
