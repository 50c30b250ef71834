"""``difflab train`` of both VQ-VAE stages, ``difflab reconstruct`` and ``difflab sample`` of a prior."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from tests.cli.conftest import CONFIGS, run_cli

TINY = ["data.name=digits", "data.image_size=28", "train.batch_size=16", "train.warmup_steps=0"]


@pytest.fixture(scope="module")
def vqvae_and_prior(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("vqcli")
    from difflab.cli import main

    assert (
        main(
            [
                "train",
                "--quiet",
                str(CONFIGS / "vqvae_mnist.yaml"),
                *TINY,
                "model.preset=vqvae-tiny",
                "train.steps=4",
                f"train.out_dir={root / 'vq'}",
            ]
        )
        == 0
    )
    vqvae = root / "vq" / "model.safetensors"
    assert (
        main(
            [
                "train",
                "--quiet",
                str(CONFIGS / "vqvae_prior_mnist.yaml"),
                *TINY,
                f"autoencoder={vqvae}",
                "model.preset=prior-tiny",
                "train.steps=2",
                f"train.out_dir={root / 'prior'}",
            ]
        )
        == 0
    )
    return vqvae, root / "prior" / "model.safetensors"


def test_reconstruct_writes_originals_above_reconstructions(vqvae_and_prior, tmp_path, capsys):
    out = tmp_path / "recon.png"
    argv = ["reconstruct", str(vqvae_and_prior[0]), "--data", "digits", "--n", "16"]
    code, stdout, err = run_cli([*argv, "--out", str(out)], capsys)
    assert code == 0, err
    assert "PSNR" in stdout and "% of codes used" in stdout
    # 16 originals + 16 reconstructions, 8 to a row, 28 px + 2 px padding: 4 rows x 8 columns
    assert Image.open(out).size == (8 * 30 + 2, 4 * 30 + 2)


def test_sample_a_prior_one_row_per_class(vqvae_and_prior, tmp_path, capsys):
    out = tmp_path / "samples.png"
    argv = ["sample", str(vqvae_and_prior[1]), "--labels", "all", "--n", "20"]
    code, stdout, err = run_cli([*argv, "--out", str(out)], capsys)
    assert code == 0, err
    assert "VQ-VAE prior" in stdout
    assert Image.open(out).size == (2 * 30 + 2, 10 * 30 + 2)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--guidance-scale", "2"], "applies to diffusion models"),
        (["--label", "12"], "out of range"),
        (["--temperature", "0"], "temperature"),
    ],
)
def test_sample_a_prior_refuses_bad_options(vqvae_and_prior, tmp_path, capsys, extra, message):
    out = tmp_path / "s.png"
    code, _, err = run_cli(["sample", str(vqvae_and_prior[1]), *extra, "--out", str(out)], capsys)
    assert code == 2 and message in err and "Traceback" not in err
    assert not out.exists()


def test_reconstruct_refuses_a_diffusion_checkpoint(tiny_checkpoint, tmp_path, capsys):
    out = tmp_path / "r.png"
    code, _, err = run_cli(["reconstruct", str(tiny_checkpoint), "--out", str(out)], capsys)
    assert code == 2 and "'diffusion' checkpoint" in err
    assert not out.exists()


def test_train_prior_without_autoencoder_is_one_sentence(tmp_path, capsys):
    config = CONFIGS / "vqvae_prior_mnist.yaml"
    argv = ["train", str(config), "autoencoder=null", f"train.out_dir={tmp_path / 'p'}"]
    code, _, err = run_cli(argv, capsys)
    assert code == 2 and "needs 'autoencoder: PATH'" in err
