"""Training the perceptual autoencoder through the shared loop: the exported checkpoint and its
latent_scale, exact resume across disc_start (discriminator and its Adam moments included),
the VQ variant, the CLI (train, reconstruct) and two processes against one."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from difflab.autoencoders import load_autoencoder
from difflab.config import load_config
from difflab.data import load_configured_split
from difflab.errors import DifflabError
from difflab.io.checkpoint import load_checkpoint
from difflab.training import autoencoder_loop
from difflab.training.autoencoder_loop import (
    autoencoder_stats,
    encode_images,
    reconstruct,
    train_autoencoder,
)
from difflab.training.state import STATE_FILE
from tests.cli.conftest import run_cli
from tests.helpers import torchrun

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "ae_digits_tiny.yaml"
FAST = ["train.log_every=1", "train.sample_every=3", "train.checkpoint_every=2"]


def config(out_dir: Path, steps: int = 6, *extra: str):
    overrides = [f"train.out_dir={out_dir}", f"train.steps={steps}", "model.loss.disc_start=3"]
    return load_config(CONFIG, [*overrides, *FAST, *extra])


def metrics(out_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """6 steps of the tiny KL config, the GAN on from step 4, EMA weights on."""
    out_dir = tmp_path_factory.mktemp("ae")
    return train_autoencoder(config(out_dir, 6, "train.ema_decay=0.9"), progress=False)


def test_export_holds_the_autoencoder_its_test_error_and_latent_scale(trained):
    tensors, meta = load_checkpoint(trained, kind="autoencoder")
    assert all(key.startswith("model.") for key in tensors)
    assert not any("discriminator" in key for key in tensors)  # the PatchGAN stays in the state
    assert meta["model"]["latent_scale"] != 1.0 and meta["loss"]["disc_start"] == 3
    assert meta["latent_scale_images"] == 1438  # the whole digits training split
    assert 0 < meta["test"]["mse"] < 1 and meta["test"]["psnr"] > 0
    rows = metrics(trained.parent)
    assert [row["disc_factor"] for row in rows] == [0, 0, 0, 1, 1, 1]  # steps 1-3 without GAN
    assert all("adaptive_weight" in row for row in rows[3:])
    # originals above reconstructions: 2 x 32 digits of 8 px (+2 padding), 8 to a row
    grid = Image.open(trained.parent / "samples" / "step_0000006.png")
    assert grid.size == (8 * 10 + 2, 8 * 10 + 2)


def test_latent_scale_gives_unit_std_latents_on_the_training_set(trained):
    model = load_autoencoder(trained)
    images = load_configured_split(config(trained.parent).data, "train").images  # all 1,438
    latents = encode_images(model, images)
    assert latents.shape[1:] == (2, 4, 4)
    assert (latents * model.latent_scale).std().item() == pytest.approx(1.0, rel=1e-4)


class SlicedImages:
    """What a streamed dataset's ``images`` offers: ``len`` and slices read as tensors."""

    def __init__(self, images: torch.Tensor) -> None:
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: slice) -> torch.Tensor:
        return self.images[index].clone()


def test_stats_are_per_image_psnr_read_a_batch_at_a_time(trained, monkeypatch):
    model = load_autoencoder(trained)
    images = torch.rand(300, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    monkeypatch.setattr(autoencoder_loop, "EVAL_BATCH", 128)  # 3 batches
    stats = autoencoder_stats(model, SlicedImages(images))
    assert stats == autoencoder_stats(model, images)
    mse = ((reconstruct(model, images) - images) / 2).square().flatten(1).mean(1)  # (300,)
    assert stats["mse"] == pytest.approx(mse.mean().item(), rel=1e-5)
    assert stats["psnr"] == pytest.approx((-10 * mse.log10()).mean().item(), rel=1e-5)


def test_resume_across_disc_start_is_bit_identical(tmp_path, trained):
    a = config(tmp_path / "a", 6, "train.ema_decay=0.9")
    train_autoencoder(config(tmp_path / "a", 2, "train.ema_decay=0.9"), progress=False)
    resumed = train_autoencoder(a, resume=True, progress=False)
    first, _ = load_checkpoint(trained.parent / STATE_FILE)
    second, _ = load_checkpoint(resumed.parent / STATE_FILE)
    assert first.keys() == second.keys()
    assert any(k.startswith("model.loss.discriminator") for k in first)
    assert any(k.startswith("optim.") and "exp_avg" in k for k in first)
    for key in first:
        assert torch.equal(first[key], second[key]), key
    timing = ("images_per_s", "elapsed_s")
    logged = [[{k: v for k, v in row.items() if k not in timing} for row in metrics(path.parent)]
              for path in (trained, resumed)]  # fmt: skip
    assert logged[0] == logged[1]


def test_resume_with_another_objective_is_refused(tmp_path):
    train_autoencoder(config(tmp_path, 2), progress=False)
    with pytest.raises(DifflabError, match=r"different model\.loss config"):
        train_autoencoder(config(tmp_path, 4, "model.loss.disc_weight=0.1"), resume=True)


def test_vq_variant_trains_and_reports_codebook_use(tmp_path):
    vq = ["model.regularizer=vq", "model.restart_after=2", "train.ema_decay=0.5"]
    path = train_autoencoder(config(tmp_path, 4, *vq), progress=False)
    _, meta = load_checkpoint(path)
    assert 0 < meta["test"]["codebook_usage"] <= 1 and meta["test"]["perplexity"] >= 1
    assert meta["model"]["regularizer"] == "vq" and "commitment" in metrics(tmp_path)[-1]


def test_images_that_do_not_fit_the_model_are_refused(tmp_path):
    with pytest.raises(DifflabError, match="not divisible by the downsampling factor f = 4"):
        train_autoencoder(config(tmp_path, 2, "model.channel_mult=[1,1,1]", "data.image_size=10"))
    with pytest.raises(DifflabError, match="LPIPS"):
        train_autoencoder(config(tmp_path, 2, "model.loss.perceptual_weight=1.0"))
    assert not (tmp_path / "checkpoints").exists()


def test_cli_trains_and_reconstructs_with_psnr(tmp_path, capsys):
    argv = ["train", "--quiet", str(CONFIG), f"train.out_dir={tmp_path}", "train.steps=2"]
    code, out, err = run_cli(argv, capsys)
    assert code == 0, err
    assert "trained autoencoder" in out and "latents 2x4x4 (f = 2)" in out and "PSNR" in out
    grid = tmp_path / "recon.png"
    argv = ["reconstruct", str(tmp_path / "model.safetensors"), "--data", "digits", "--n", "16"]
    code, out, err = run_cli([*argv, "--out", str(grid)], capsys)
    assert code == 0, err
    assert "PSNR" in out and "latents 2x4x4" in out
    assert Image.open(grid).size == (8 * 10 + 2, 4 * 10 + 2)
    # a float16 copy (difflab export --fp16) loads and keeps its latent_scale
    small = tmp_path / "ae16.safetensors"
    code, out, err = run_cli(
        ["export", str(tmp_path / "model.safetensors"), str(small), "--fp16"], capsys
    )
    assert code == 0, err
    model, model16 = load_autoencoder(tmp_path / "model.safetensors"), load_autoencoder(small)
    assert model16.latent_scale == model.latent_scale
    x = torch.rand(4, 1, 8, 8) * 2 - 1
    assert torch.allclose(
        model16.decode(model16.encode(x)), model.decode(model.encode(x)), atol=1e-2
    )
    # a state file exported to a model file has no measured latent_scale: refused
    argv = ["export", str(tmp_path / STATE_FILE), str(tmp_path / "from_state.safetensors")]
    assert run_cli(argv, capsys)[0] == 0
    code, out, err = run_cli(
        ["reconstruct", str(tmp_path / "from_state.safetensors"), "--data", "digits"], capsys
    )
    assert code != 0 and "no measured latent_scale" in err


DDP = ["model.loss.disc_start=2", "train.batch_size=16", "train.log_every=1"]


@pytest.mark.slow
def test_two_processes_match_one_process_before_the_gan_and_run_with_it(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    overrides = [*DDP, "train.steps=3"]
    train_autoencoder(load_config(CONFIG, [*overrides, f"train.out_dir={one}"]), progress=False)
    result = torchrun(2, "train", "--quiet", str(CONFIG), *overrides, f"train.out_dir={two}")
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("trained autoencoder") == 1
    a, _ = load_checkpoint(one / STATE_FILE)
    b, _ = load_checkpoint(two / STATE_FILE)
    # steps 1-2: the same autoencoder (the noise ε drawn for the global batch, then sliced);
    # step 3 adds the GAN, whose BatchNorm sees each process's half of the batch
    rows_one, rows_two = metrics(one), metrics(two)
    for key in ("loss", "l1", "kl"):
        assert [r[key] for r in rows_one[:2]] == pytest.approx([r[key] for r in rows_two[:2]])
    assert rows_two[2]["disc_factor"] == 1.0 and rows_two[2]["adaptive_weight"] > 0
    assert a.keys() == b.keys()
