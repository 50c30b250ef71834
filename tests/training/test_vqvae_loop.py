"""Training both VQ-VAE stages through the shared loop: checkpoints, resume, stored statistics."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from difflab.config import load_config
from difflab.errors import DifflabError
from difflab.io.checkpoint import load_checkpoint
from difflab.pipelines.vqvae import load_code_prior, load_vqvae
from difflab.training.vqvae_loop import train_prior, train_vqvae

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
TINY_DATA = ["data.name=digits", "data.image_size=28", "train.batch_size=16", "train.log_every=2"]


def vqvae_config(out_dir: Path, steps: int = 6, *extra: str):
    return load_config(
        CONFIGS / "vqvae_mnist.yaml",
        [
            *TINY_DATA,
            "model.preset=vqvae-tiny",
            "model.restart_after=2",
            f"train.steps={steps}",
            "train.sample_every=3",
            "train.checkpoint_every=3",
            "train.warmup_steps=0",
            f"train.out_dir={out_dir}",
            *extra,
        ],
    )


def prior_config(out_dir: Path, autoencoder: Path, steps: int = 4, *extra: str):
    return load_config(
        CONFIGS / "vqvae_prior_mnist.yaml",
        [
            *TINY_DATA,
            f"autoencoder={autoencoder}",
            "model.preset=prior-tiny",
            f"train.steps={steps}",
            "train.sample_every=4",
            "train.checkpoint_every=2",
            "train.warmup_steps=0",
            f"train.out_dir={out_dir}",
            *extra,
        ],
    )


@pytest.fixture(scope="module")
def trained_vqvae(tmp_path_factory) -> Path:
    return train_vqvae(vqvae_config(tmp_path_factory.mktemp("vq")), progress=False)


def test_vqvae_checkpoint_records_test_statistics_and_latent_scale(trained_vqvae):
    _, meta = load_checkpoint(trained_vqvae, kind="vqvae")
    test = meta["test"]
    assert 0 < test["mse"] < 1 and test["psnr"] > 0
    assert 0 < test["codebook_usage"] <= 1 and test["perplexity"] >= 1
    model = load_vqvae(trained_vqvae)
    assert model.latent_scale == meta["model"]["latent_scale"] != 1.0
    assert (trained_vqvae.parent / "samples" / "step_0000006.png").exists()


def test_vqvae_resume_is_bit_identical(tmp_path, trained_vqvae):
    train_vqvae(vqvae_config(tmp_path, steps=3), progress=False)
    resumed = train_vqvae(vqvae_config(tmp_path, steps=6), resume=True, progress=False)
    a, _ = load_checkpoint(resumed)
    b, _ = load_checkpoint(trained_vqvae)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_prior_trains_on_the_codes_and_reports_bits(tmp_path, trained_vqvae):
    path = train_prior(prior_config(tmp_path / "prior", trained_vqvae), progress=False)
    _, meta = load_checkpoint(path, kind="vqvae_prior")
    test = meta["test"]
    assert test["uniform_bits_per_code"] == pytest.approx(4.0)  # vqvae-tiny: K = 16
    assert 0 < test["bits_per_code"] < 6
    assert test["bits_per_image_dim"] == pytest.approx(test["bits_per_code"] * 49 / 784)
    prior, autoencoder = load_code_prior(path)
    assert prior.config.num_codes == autoencoder.config.num_codes == 16
    assert prior.config.grid_size == 7 and prior.config.num_classes == 10


def test_prior_refuses_a_different_autoencoder(tmp_path, trained_vqvae):
    path = train_prior(prior_config(tmp_path / "prior", trained_vqvae, 2), progress=False)
    other = train_vqvae(vqvae_config(tmp_path / "other", 2), progress=False)
    with pytest.raises(DifflabError, match="SHA-256"):
        load_code_prior(path, autoencoder=other)


def test_prior_config_needs_an_autoencoder(tmp_path):
    config = load_config(CONFIGS / "vqvae_prior_mnist.yaml", [f"train.out_dir={tmp_path}"])
    config.autoencoder = None
    with pytest.raises(DifflabError, match="autoencoder"):
        train_prior(config, progress=False)
