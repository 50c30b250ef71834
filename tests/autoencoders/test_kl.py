"""Latent Diffusion's perceptual autoencoder: shapes for every f, the KL posterior, VQ in decode,
the checkpoint loader."""

from __future__ import annotations

import math

import pytest
import torch

from difflab.autoencoders import (
    AUTOENCODER_KIND,
    AUTOENCODER_PRESETS,
    DiagonalGaussian,
    PerceptualAutoencoder,
    autoencoder_config,
    load_autoencoder,
)
from difflab.autoencoders.quantizer import nearest_code
from difflab.config import config_to_dict
from difflab.errors import DifflabError
from difflab.io.checkpoint import save_checkpoint, with_prefix

TINY = dict(image_size=16, in_channels=3)


def tiny(regularizer: str = "kl", **overrides) -> PerceptualAutoencoder:
    torch.manual_seed(0)
    config = autoencoder_config("ae-tiny", regularizer=regularizer, **{**TINY, **overrides})
    return PerceptualAutoencoder(config).eval()


@pytest.mark.parametrize(("mult", "f"), [((1,), 1), ((1, 2), 2), ((1, 2, 2), 4), ((1, 1, 2, 2), 8)])
@pytest.mark.parametrize("regularizer", ["kl", "vq"])
def test_encode_and_decode_shapes_for_every_downsampling_factor(mult, f, regularizer):
    model = tiny(regularizer, channel_mult=mult, latent_channels=3)
    assert model.config.downsample_factor == f
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    z = model.encode(x)
    assert z.shape == (2, 3, 16 // f, 16 // f) == (2, *model.config.latent_shape)
    assert model.decode(z).shape == x.shape
    assert model(x).reconstruction.shape == x.shape


def test_presets_have_the_papers_latent_shapes():
    for name, f, c in [("ae-f1", 1, 3), ("ae-f2", 2, 3), ("ae-f4", 4, 3), ("ae-f8", 8, 4)]:
        config = autoencoder_config(name)
        assert (config.downsample_factor, config.latent_channels) == (f, c)
        assert config.latent_shape == (c, 64 // f, 64 // f)
    assert set(AUTOENCODER_PRESETS) >= {"ae-tiny", "ae-f1", "ae-f2", "ae-f4", "ae-f8"}


def test_kl_of_a_known_gaussian():
    # μ = 1, σ² = 4 on 2x3x2x2 latents: each term ½(1 + 4 − 1 − log 4), 12 terms per image
    mean = torch.ones(2, 3, 2, 2)
    logvar = torch.full_like(mean, math.log(4.0))
    kl = DiagonalGaussian(mean, logvar).kl()
    assert kl.shape == (2,)
    assert torch.allclose(kl, torch.full((2,), 12 * 0.5 * (4.0 - math.log(4.0))))
    assert DiagonalGaussian(torch.zeros(1, 2, 2, 2), torch.zeros(1, 2, 2, 2)).kl().item() == 0.0
    q = torch.distributions.Normal(mean, logvar.mul(0.5).exp())
    p = torch.distributions.Normal(torch.zeros_like(mean), torch.ones_like(mean))
    reference = torch.distributions.kl_divergence(q, p).flatten(1).sum(1)
    assert torch.allclose(kl, reference)


def test_kl_training_pass_decodes_a_reparameterised_sample_and_eval_the_mean():
    model = tiny("kl")
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    posterior = model.posterior(x)
    noise = torch.randn(2, *model.config.latent_shape)
    model.train()
    out = model(x, noise)
    assert torch.allclose(out.z, posterior.mean + posterior.std * noise)
    assert torch.allclose(out.reconstruction, model.decoder(model.post_quant_conv(out.z)))
    model.eval()
    assert torch.equal(model.encode(x), posterior.mean)  # encode: the mean, deterministic
    assert torch.allclose(model(x).reconstruction, model.decode(posterior.mean))


def test_vq_encode_is_continuous_and_decode_snaps_to_the_codebook():
    model = tiny("vq", codebook_update="loss", kmeans_init=False)
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    z = model.encode(x)  # (2, 2, 8, 8) pre-quantisation latents
    codebook = model.quantizer.codebook
    flat = z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])
    assert not any(torch.equal(row, codebook[i]) for i, row in enumerate(flat[:5]))
    snapped = codebook[nearest_code(flat, codebook)].view(2, 8, 8, -1).permute(0, 3, 1, 2)
    # (the straight-through z_e + (z_q - z_e) rounds differently from z_q by a float ulp)
    assert torch.allclose(model.decode(z), model.decode(snapped), atol=1e-5)
    assert torch.allclose(model.decode(z), model.decoder(model.post_quant_conv(snapped)), atol=1e-5)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (dict(image_size=10, channel_mult=(1, 2, 4)), "not divisible by the downsampling factor"),
        (dict(regularizer="gauss"), "regularizer"),
        (dict(channel_mult=()), "channel_mult"),
        (dict(latent_channels=0), "latent_channels"),
        (dict(colour=3), "unknown config key 'model.colour'"),
    ],
)
def test_bad_configs_are_refused_by_name(overrides, message):
    with pytest.raises(DifflabError, match=message):
        autoencoder_config("ae-tiny", **overrides)


def test_unknown_preset_is_refused():
    with pytest.raises(DifflabError, match="ae-f4"):
        autoencoder_config("kl-f4")


def test_wrong_image_and_latent_shapes_are_refused():
    model = tiny()
    with pytest.raises(DifflabError, match=r"\(B, 3, 16, 16\)"):
        model.encode(torch.zeros(1, 1, 16, 16))
    with pytest.raises(DifflabError, match=r"\(B, 2, 8, 8\)"):
        model.decode(torch.zeros(1, 2, 4, 4))


def export(model: PerceptualAutoencoder, path, **meta) -> None:
    tensors = with_prefix(model.state_dict(), "model")
    base = {
        "kind": AUTOENCODER_KIND,
        "model": config_to_dict(model.config),
        "latent_scale_images": 100,
    }
    save_checkpoint(path, tensors, {**base, **meta})


def test_load_autoencoder_round_trip(tmp_path):
    model = tiny("vq", latent_scale=0.5)
    export(model, tmp_path / "ae.safetensors")
    loaded = load_autoencoder(tmp_path / "ae.safetensors")
    assert loaded.latent_scale == 0.5 and not loaded.training
    assert loaded.config == model.config
    assert all(not p.requires_grad for p in loaded.parameters())
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    assert torch.equal(loaded.decode(loaded.encode(x)), model.decode(model.encode(x)))


def test_load_autoencoder_refuses_states_and_other_kinds(tmp_path):
    model = tiny()
    export(model, tmp_path / "state.safetensors", state={"epoch": 0})
    with pytest.raises(DifflabError, match="no measured latent_scale"):
        load_autoencoder(tmp_path / "state.safetensors")
    save_checkpoint(tmp_path / "bare.safetensors", {}, {"kind": AUTOENCODER_KIND, "model": {}})
    with pytest.raises(DifflabError, match="no measured latent_scale"):
        load_autoencoder(tmp_path / "bare.safetensors")
    save_checkpoint(tmp_path / "vq.safetensors", {}, {"kind": "vqvae"})
    with pytest.raises(DifflabError, match="needs a 'autoencoder' one"):
        load_autoencoder(tmp_path / "vq.safetensors")
