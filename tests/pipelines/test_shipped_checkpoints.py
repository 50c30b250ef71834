"""Every checkpoint in ``weights/`` loads through the public API and does its job on a tiny input:
diffusion models and ControlNets sample (2 steps), the VQ-VAE reconstructs, an autoencoder
encodes and decodes, the prior samples,
the classifiers classify. A new shipped file of a kind not listed here fails until it is added."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import safetensors
import torch

from difflab.autoencoders import load_autoencoder
from difflab.data import load_dataset
from difflab.diffusion import Conditioning
from difflab.io.checkpoint import load_checkpoint_meta
from difflab.io.weights import weights_dir
from difflab.metrics.features import load_feature_cnn
from difflab.models.frozen_text import FrozenTextEncoderConfig, load_frozen_text_encoder
from difflab.models.text_cache import encode_prompts
from difflab.pipelines import load_control_pipeline, load_noisy_classifier, load_pipeline
from difflab.pipelines.vqvae import load_code_prior, load_vqvae, sample_vqvae

SHIPPED = sorted(weights_dir().glob("*.safetensors"))


def kind_of(path: Path) -> str:
    with safetensors.safe_open(str(path), framework="pt") as handle:
        return json.loads(handle.metadata()["difflab"])["kind"]


def digits(count: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    test = load_dataset("mnist", split="test", limit=count)
    return test.images, test.labels  # (count, 1, 28, 28), (count,)


def samples_a_diffusion_model(path: Path) -> None:
    pipe = load_pipeline(path)
    cond = Conditioning(labels=torch.tensor([1, 7])) if pipe.num_classes else None
    imagen = load_checkpoint_meta(path).get("imagen")
    if imagen is not None:  # an Imagen stage: prompt tokens, and a low-res image for SR
        encoder = load_frozen_text_encoder(
            FrozenTextEncoderConfig(max_length=imagen["text_encoder_max_length"])
        )
        tokens, mask = encode_prompts(encoder, ["a red 7 on a yellow background", ""])
        size = imagen["low_res_size"]
        low_res = torch.zeros(2, 3, size, size) if size else None
        cond = Conditioning(tokens=tokens, token_mask=mask, low_res=low_res)
    if pipe.text_encoder is not None:  # a caption model (Latent Diffusion's cross-attention)
        labels = None if cond is None else cond.labels
        cond = pipe.caption_conditioning(["red apple", "dog face"], labels)
    images = pipe.generate(2, cond, steps=2, seed=0)
    assert images.shape == (2, *pipe.image_shape) and torch.isfinite(images).all()


def samples_a_controlnet(path: Path) -> None:
    pipe = load_control_pipeline(path)
    hint = digits(2)[0]  # any 1-channel 28×28 image serves as a hint
    cond = Conditioning(control=hint)
    if pipe.num_classes:
        cond = Conditioning(labels=torch.tensor([1, 7]), control=hint)
    images = pipe.generate(2, cond, steps=2, seed=0)
    assert images.shape == (2, *pipe.image_shape) and torch.isfinite(images).all()


def encodes_and_decodes(path: Path) -> None:
    model = load_autoencoder(path)
    data = load_checkpoint_meta(path)["data"]
    x = torch.rand(1, data["channels"], data["image_size"], data["image_size"]) * 2 - 1
    with torch.no_grad():
        y = model.decode(model.encode(x))
    assert y.shape == x.shape and torch.isfinite(y).all()


def reconstructs(path: Path) -> None:
    images, _ = digits()
    model = load_vqvae(path)
    with torch.no_grad():
        error = ((model.decode(model.encode(images)).clamp(-1, 1) - images) / 2).square().mean()
    assert error < 0.01  # about 0.002 on the test set (27.9 dB)


def samples_the_prior(path: Path) -> None:
    prior, autoencoder = load_code_prior(path)
    images = sample_vqvae(prior, autoencoder, 2, torch.tensor([3, 8]))
    assert images.shape == (2, 1, 28, 28) and torch.isfinite(images).all()


def classifies_noisy_digits(path: Path) -> None:
    images, labels = digits(8)
    classifier = load_noisy_classifier(path)
    with torch.no_grad():
        logits = classifier(images, torch.zeros(len(images), dtype=torch.long))
    assert (logits.argmax(1) == labels).double().mean() >= 0.75  # 99 % at t = 0 on the test set


def classifies_clean_images(path: Path) -> None:
    model, meta = load_feature_cnn(path)
    data = meta["data"]["name"]
    test = load_dataset(data, split="test", limit=8)
    with torch.no_grad():
        assert (model(test.images).argmax(1) == test.labels).double().mean() >= 0.75


CHECKS: dict[str, Callable[[Path], None]] = {
    "diffusion": samples_a_diffusion_model,
    "controlnet": samples_a_controlnet,
    "vqvae": reconstructs,
    "autoencoder": encodes_and_decodes,
    "vqvae_prior": samples_the_prior,
    "classifier": classifies_noisy_digits,
    "feature-cnn": classifies_clean_images,
}


def test_weights_are_shipped():
    assert len(SHIPPED) >= 8, SHIPPED


@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_shipped_checkpoint_loads_and_works(path):
    """Fails if a shipped file stops loading (a renamed tensor, a changed config field) or
    produces garbage (tried: a VQ-VAE whose decoder's last layer is zeroed fails reconstruction;
    a checkpoint of an unlisted kind fails the lookup)."""
    kind = kind_of(path)
    assert kind in CHECKS, f"{path.name}: no check for shipped checkpoints of kind {kind!r}"
    CHECKS[kind](path)
