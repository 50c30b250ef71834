"""Training both VQ-VAE stages through the shared loop: checkpoints, resume, stored statistics."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from difflab.config import load_config
from difflab.errors import DifflabError
from difflab.io.checkpoint import load_checkpoint
from difflab.pipelines.vqvae import load_code_prior, load_vqvae
from difflab.training.state import STATE_FILE
from difflab.training.vqvae_loop import reconstruction_stats, train_prior, train_vqvae

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
    assert 0 < test["mse"] < 1
    assert test["psnr"] >= 10 * math.log10(1 / test["mse"])  # mean of -10 log10 >= of the mean
    assert 0 < test["codebook_usage"] <= 1 and test["perplexity"] >= 1
    model = load_vqvae(trained_vqvae)
    assert model.latent_scale == meta["model"]["latent_scale"] != 1.0
    assert (trained_vqvae.parent / "samples" / "step_0000006.png").exists()


class KnownErrors(torch.nn.Module):
    """A stand-in VQ-VAE whose reconstruction of image i is the image plus ``offsets[i]``."""

    def __init__(self, offsets: list[float]) -> None:
        super().__init__()
        self.offsets = torch.nn.Parameter(torch.tensor(offsets).view(-1, 1, 1, 1))
        self.config = SimpleNamespace(num_codes=4)

    def forward(self, x: torch.Tensor) -> SimpleNamespace:
        indices = torch.zeros(len(x), 2, 2, dtype=torch.long)
        return SimpleNamespace(
            reconstruction=x + self.offsets, quantized=SimpleNamespace(indices=indices)
        )


def test_psnr_is_10_log10_of_1_over_mse_per_image_on_the_0_1_scale():
    """Two images off by 0.2 and 0.02 in [-1, 1] units are off by 0.1 and 0.01 on [0, 1]: MSE
    1e-2 and 1e-4, PSNR 20 and 40 dB, averaged per image: 30 dB. Fails if the error is taken in
    [-1, 1] units (tried: MSE 0.0202) or PSNR from the mean MSE (tried: 23.0 dB)."""
    stats = reconstruction_stats(KnownErrors([0.2, 0.02]), torch.zeros(2, 1, 4, 4))
    assert stats["mse"] == pytest.approx((1e-2 + 1e-4) / 2)
    assert stats["psnr"] == pytest.approx((20 + 40) / 2, rel=1e-5)


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


def test_prior_resume_is_bit_identical(tmp_path, trained_vqvae):
    """The class-conditional prior with label dropout, stopped at step 2 and resumed to 4, equals
    4 uninterrupted steps. Fails if resuming drops the optimizer's moments (tried)."""
    extra = ("train.label_dropout=0.2",)
    straight = train_prior(prior_config(tmp_path / "a", trained_vqvae, 4, *extra), progress=False)
    train_prior(prior_config(tmp_path / "b", trained_vqvae, 2, *extra), progress=False)
    resumed = train_prior(
        prior_config(tmp_path / "b", trained_vqvae, 4, *extra), resume=True, progress=False
    )
    a, b = (load_checkpoint(path.parent / STATE_FILE)[0] for path in (straight, resumed))
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


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
