"""Latent diffusion: the latent cache (reuse, invalidation, crash safety) and a tiny latent model
trained, sampled and evaluated end to end through the pipeline's autoencoder stage."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from difflab.autoencoders import AUTOENCODER_KIND, PerceptualAutoencoder, autoencoder_config
from difflab.autoencoders.kl import LATENT_SCALE_IMAGES_KEY
from difflab.cli import main
from difflab.config import config_to_dict
from difflab.errors import DifflabError
from difflab.io.checkpoint import save_checkpoint, with_prefix
from difflab.pipelines import load_pipeline
from difflab.training.latent_cache import cached_latents, encode_images

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def tiny_autoencoder(seed: int = 0, latent_scale: float = 1.5) -> PerceptualAutoencoder:
    torch.manual_seed(seed)
    config = autoencoder_config("ae-tiny", image_size=8, in_channels=1, latent_scale=latent_scale)
    return PerceptualAutoencoder(config).eval()


def save_autoencoder(model: PerceptualAutoencoder, path: Path) -> Path:
    meta = {
        "kind": AUTOENCODER_KIND,
        "model": config_to_dict(model.config),
        LATENT_SCALE_IMAGES_KEY: 40,  # as if measured on 40 images
    }
    return save_checkpoint(path, with_prefix(model.state_dict(), "model"), meta)


# ----------------------------------------------------------------------------- the cache


def test_the_cache_is_reused_and_keyed(tmp_path):
    model = tiny_autoencoder()
    images = torch.rand(10, 1, 8, 8) * 2 - 1
    key = {"autoencoder": "aaa", "data": {"name": "x"}}
    first, reused = cached_latents(model, images, 10, key, tmp_path)
    assert not reused and first.shape == (10, 2, 4, 4)
    assert torch.allclose(first, encode_images(model, images, 10))
    assert torch.allclose(first, model.encode(images) * 1.5, atol=1e-6)  # scaled latents
    again, reused = cached_latents(model, images * 0, 10, key, tmp_path)
    assert reused and torch.equal(again, first)  # read back, not re-encoded
    _, reused = cached_latents(model, images, 10, {**key, "autoencoder": "bbb"}, tmp_path)
    assert not reused  # another autoencoder's cache is another file
    fewer, reused = cached_latents(model, images, 6, key, tmp_path)
    assert not reused and fewer.shape[0] == 6


@pytest.mark.parametrize("damage", ["truncate", "flip", "no sidecar", "foreign sidecar"])
def test_a_damaged_cache_is_rebuilt_never_used(tmp_path, damage):
    model = tiny_autoencoder()
    images = torch.rand(6, 1, 8, 8) * 2 - 1
    key = {"autoencoder": "aaa"}
    good, _ = cached_latents(model, images, 6, key, tmp_path)
    (npy,) = tmp_path.glob("*.npy")
    sidecar = npy.with_suffix(".json")
    if damage == "truncate":  # a kill in the middle of a write
        npy.write_bytes(npy.read_bytes()[:-40])
    elif damage == "flip":
        data = bytearray(npy.read_bytes())
        data[-5] ^= 0xFF
        npy.write_bytes(bytes(data))
    elif damage == "no sidecar":
        sidecar.unlink()
    else:
        sidecar.write_text(sidecar.read_text().replace('"aaa"', '"zzz"'))
    latents, reused = cached_latents(model, images, 6, key, tmp_path)
    assert not reused and torch.equal(latents, good)
    assert np.array_equal(np.load(npy), good.numpy())  # rewritten whole
    assert sorted(p.suffix for p in tmp_path.iterdir()) == [".json", ".npy"]  # no temporaries


# ------------------------------------------------------------------- a tiny latent model


@pytest.fixture(scope="module")
def latent_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("ldm")
    autoencoder = save_autoencoder(tiny_autoencoder(), root / "ae.safetensors")
    out = root / "run"
    code = main(
        [
            "train",
            str(CONFIGS / "digits_tiny.yaml"),
            f"autoencoder={autoencoder}",
            f"train.out_dir={out}",
            "train.steps=4",
            "train.batch_size=8",
            "train.sample_every=4",
            "train.checkpoint_every=4",
            "train.log_every=2",
            "data.limit=40",
        ]
    )
    assert code == 0
    return autoencoder, out


def test_a_latent_model_trains_on_latents_and_generates_images(latent_run):
    _, out = latent_run
    pipe = load_pipeline(out / "model.safetensors")
    assert pipe.description.sample_shape == (2, 4, 4)  # the network denoises f = 2 latents
    assert pipe.image_shape == (1, 8, 8) and pipe.autoencoder is not None
    images = pipe.generate(3, steps=3, seed=0)
    assert images.shape == (3, 1, 8, 8) and torch.isfinite(images).all()
    assert (out / "samples" / "step_0000004.png").is_file()  # grids are decoded too


def test_another_autoencoder_is_refused(latent_run, tmp_path):
    autoencoder, out = latent_run
    original = autoencoder.read_bytes()
    try:
        save_autoencoder(tiny_autoencoder(seed=1), autoencoder)
        with pytest.raises(DifflabError, match=r"is not the autoencoder .* was trained with"):
            load_pipeline(out / "model.safetensors")
    finally:
        autoencoder.write_bytes(original)


def test_the_cli_samples_a_latent_model(latent_run, tmp_path, capsys):
    _, out = latent_run
    grid = tmp_path / "grid.png"
    code = main(
        ["sample", str(out / "model.safetensors"), "--n", "4", "--steps", "2", "--out", str(grid)]
    )
    assert code == 0 and grid.is_file()


def test_an_autoencoder_of_another_image_size_is_one_sentence(tmp_path, capsys):
    model = PerceptualAutoencoder(autoencoder_config("ae-tiny", image_size=16, in_channels=1))
    autoencoder = save_autoencoder(model, tmp_path / "ae16.safetensors")
    out = tmp_path / "run"
    code = main(
        ["train", str(CONFIGS / "digits_tiny.yaml"), f"autoencoder={autoencoder}",
         f"train.out_dir={out}", "train.steps=2"]
    )  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and "takes 1×16×16 images but the data are 1×8×8" in err
    assert not out.exists()


def test_a_dit_trains_on_the_same_latents(latent_run, tmp_path):
    """The DiT paper's own setting: the transformer on autoencoder latents, nothing else changed."""
    autoencoder, _ = latent_run
    out = tmp_path / "dit"
    code = main(
        ["train", str(CONFIGS / "digits_tiny.yaml"), f"autoencoder={autoencoder}",
         "model.preset=dit-tiny", "model.patch_size=2", f"train.out_dir={out}", "train.steps=2",
         "train.batch_size=8", "train.sample_every=2", "train.checkpoint_every=2", "data.limit=40"]
    )  # fmt: skip
    assert code == 0
    pipe = load_pipeline(out / "model.safetensors")
    assert pipe.description.arch == "dit" and pipe.description.sample_shape == (2, 4, 4)
    assert pipe.generate(2, steps=2).shape == (2, 1, 8, 8)


@pytest.mark.parametrize("given", ["folder", "missing", "diffusion checkpoint"])
def test_a_wrong_autoencoder_path_is_one_sentence(tmp_path, capsys, given):
    path = {
        "folder": tmp_path,
        "missing": tmp_path / "nothing.safetensors",
        "diffusion checkpoint": CONFIGS.parent / "weights" / "mnist_ddim.safetensors",
    }[given]
    out = tmp_path / "run"
    code = main(
        ["train", str(CONFIGS / "digits_tiny.yaml"), f"autoencoder={path}", f"train.out_dir={out}"]
    )
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "Traceback" not in lines[0]
    message = {
        "folder": "is a folder",
        "missing": "does not exist",
        "diffusion checkpoint": "'autoencoder'",
    }
    assert message[given] in lines[0]
    assert not out.exists()
