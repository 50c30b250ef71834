"""VQ-VAE: shapes, the autoencoder contract, the loss of eq. 3, presets."""

from __future__ import annotations

import pytest
import torch

from difflab.autoencoders import VQVAE, vqvae_config, vqvae_loss
from difflab.data import load_dataset
from difflab.errors import DifflabError


@pytest.fixture
def model() -> VQVAE:
    torch.manual_seed(0)
    return VQVAE(vqvae_config("vqvae-tiny", codebook_update="loss", kmeans_init=False))


def test_shapes_and_the_autoencoder_contract(model):
    x = torch.rand(3, 1, 28, 28) * 2 - 1
    model.eval()
    z = model.encode(x)
    assert z.shape == (3, 8, 7, 7)
    assert model.decode(z).shape == x.shape
    indices = model.encode_indices(x)
    assert indices.shape == (3, 7, 7) and indices.dtype == torch.long
    torch.testing.assert_close(model.decode_indices(indices), model.decode(z))
    torch.testing.assert_close(model(x).reconstruction, model.decode(z))
    assert model.latent_scale == 1.0


def test_finer_grid_with_one_downsampling():
    net = VQVAE(vqvae_config("vqvae-tiny", num_downsamples=1))
    assert net.encode(torch.zeros(1, 1, 28, 28)).shape[-1] == 14
    assert net.config.grid_size == 14


def test_loss_is_equation_3(model):
    """Eq. 3 written here term by term from z_e, z_q and x: the value, and the gradients that the
    stop-gradients decide (the codebook learns only from ||sg(z_e) - z_q||^2 with weight 1, the
    encoder from the reconstruction, straight through, plus beta ||z_e - sg(z_q)||^2).

    Fails if beta weights the codebook term instead of the commitment term (tried: the value is
    unchanged, the gradients are not), or if the straight-through estimator is dropped.
    """
    model.eval()  # no codebook restarts between the forward pass and the formula
    x = torch.rand(2, 1, 28, 28) * 2 - 1
    beta, codebook = 0.25, model.quantizer.codebook
    with torch.no_grad():
        z_e = model.encoder(x)  # (B, D, h, w)
        flat = z_e.permute(0, 2, 3, 1).reshape(-1, z_e.shape[1])  # (N, D)
        k = torch.cdist(flat, codebook).argmin(1)  # (N,) nearest code, eq. 1
        z_q_flat = codebook[k]  # (N, D), eq. 2
        z_q = z_q_flat.view(z_e.shape[0], *z_e.shape[2:], -1).permute(0, 3, 1, 2)
    z_q_leaf = z_q.clone().requires_grad_(True)
    reconstruction = (x - model.decoder(z_q_leaf)).square().mean()
    (decoder_grad,) = torch.autograd.grad(reconstruction, z_q_leaf)
    numel = z_e.numel()
    expected = reconstruction.item() + (1 + beta) * (z_e - z_q).square().mean().item()
    # d/dC_j ||sg(z_e) - z_q||^2 = sum over the vectors assigned to j of 2 (C_j - z_e) / numel
    codebook_grad = torch.zeros_like(codebook).index_add_(0, k, 2 * (z_q_flat - flat) / numel)
    encoder_grad = decoder_grad + beta * 2 * (z_e - z_q) / numel  # (B, D, h, w)

    seen = {}

    def keep_gradient(module, inputs, output):
        output.register_hook(lambda grad: seen.update(z_e=grad))

    model.encoder.register_forward_hook(keep_gradient)
    model.zero_grad()
    total, _ = vqvae_loss(model, x)
    total.backward()
    assert total.item() == pytest.approx(expected, rel=1e-5)
    torch.testing.assert_close(codebook.grad, codebook_grad, rtol=1e-4, atol=1e-8)
    torch.testing.assert_close(seen["z_e"], encoder_grad, rtol=1e-4, atol=1e-8)


def test_reconstruction_gradient_reaches_encoder_and_decoder_but_not_the_codebook(model):
    x = torch.rand(2, 1, 28, 28) * 2 - 1
    out = model(x)
    (out.reconstruction - x).square().mean().backward()
    assert model.encoder.to_code.weight.grad.abs().sum() > 0
    assert model.decoder.from_code.weight.grad.abs().sum() > 0
    assert model.quantizer.codebook.grad is None


def test_a_few_steps_lower_the_loss():
    torch.manual_seed(0)
    net = VQVAE(vqvae_config("vqvae-tiny"))
    x = load_dataset("digits", image_size=28, limit=16).images  # (16, 1, 28, 28)
    optimizer = torch.optim.Adam(net.parameters(), lr=3e-3)
    losses = []
    for _ in range(40):
        loss, _ = vqvae_loss(net, x)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_bad_config_and_bad_input_are_refused(model):
    with pytest.raises(DifflabError, match="divisible"):
        vqvae_config("vqvae-tiny", image_size=30)
    with pytest.raises(DifflabError, match="preset"):
        vqvae_config("vqvae-huge")
    with pytest.raises(DifflabError, match="unknown config key"):
        vqvae_config("vqvae-tiny", num_code=3)
    with pytest.raises(DifflabError, match="images of shape"):
        model(torch.zeros(1, 3, 28, 28))
