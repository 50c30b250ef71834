"""The LDM autoencoder objective: hinge losses, the adaptive weight (VQGAN eq. 7), disc_start, the
regularisers' units, and the one-backward gradient against VQGAN's two-pass formulation."""

from __future__ import annotations

import copy

import pytest
import torch

from difflab.autoencoders import (
    AutoencoderLoss,
    AutoencoderWithLoss,
    PatchDiscriminator,
    PerceptualAutoencoder,
    adaptive_weight,
    autoencoder_config,
    generator_loss,
    hinge_d_loss,
    loss_config,
)
from difflab.autoencoders.discriminator import patch_logits_side
from difflab.autoencoders.ldm_loss import ADAPTIVE_DELTA, ADAPTIVE_MAX, adopt_weight
from difflab.errors import DifflabError

# 8x8 RGB images, f = 2, no LPIPS (it needs 16x16), a 1-layer PatchGAN
SMALL_LOSS = dict(perceptual_weight=0.0, disc_layers=1, disc_channels=4, disc_weight=0.7)


def objective(regularizer: str = "kl", size: int = 8, **loss) -> AutoencoderWithLoss:
    torch.manual_seed(0)
    config = autoencoder_config(
        "ae-tiny", image_size=size, in_channels=3, regularizer=regularizer,
        codebook_update="loss", kmeans_init=False,
    )  # fmt: skip
    losses = loss_config({**SMALL_LOSS, "disc_start": 5, **loss}, size)
    return AutoencoderWithLoss(PerceptualAutoencoder(config), AutoencoderLoss(losses, config))


def images(size: int = 8, seed: int = 1) -> torch.Tensor:
    return torch.rand(4, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_hinge_losses_on_known_logits():
    real = torch.tensor([2.0, 0.5, -1.0])  # max(0, 1 - r) = 0, 0.5, 2
    fake = torch.tensor([-2.0, 0.0, 1.0])  # max(0, 1 + f) = 0, 1, 2
    assert hinge_d_loss(real, fake).item() == pytest.approx(0.5 * (2.5 / 3 + 3 / 3))
    assert hinge_d_loss(torch.full((5,), 3.0), torch.full((5,), -3.0)).item() == 0.0
    assert generator_loss(fake).item() == pytest.approx(1 / 3)  # -mean(D(x̃))


def test_adaptive_weight_on_a_toy_decoder_with_known_gradient_norms():
    # x̃ = W h with h = (3, 4): ∇_W (a · x̃) = a hᵀ, whose norm is |a| |h|
    W = torch.randn(3, 2, requires_grad=True)
    x_rec = W @ torch.tensor([3.0, 4.0])
    a, b = torch.tensor([1.0, 2.0, 2.0]), torch.tensor([0.0, 0.6, 0.8])  # |a| = 3, |b| = 1
    weight = adaptive_weight(a @ x_rec, b @ x_rec, W)
    assert weight.item() == pytest.approx(15 / (5 + ADAPTIVE_DELTA))
    assert not weight.requires_grad
    # clamped to [0, 1e4]: a vanishing GAN gradient gives 15 / δ = 1.5e5 -> 1e4
    assert adaptive_weight(a @ x_rec, 0 * (b @ x_rec), W).item() == ADAPTIVE_MAX
    assert adaptive_weight(0 * (a @ x_rec), b @ x_rec, W).item() == 0.0


def test_adopt_weight_switches_at_disc_start():
    assert [adopt_weight(0.5, step, 3) for step in range(5)] == [0, 0, 0, 0.5, 0.5]


def test_the_gan_terms_switch_on_at_disc_start():
    net, x = objective(disc_start=5), images()
    loss, terms = net(x, step=4)
    loss.backward()
    assert terms["disc_factor"] == 0.0 and terms["d_loss"] == 0.0 and "g_loss" not in terms
    assert loss.item() == pytest.approx(terms["rec_loss"] + 1e-6 * terms["kl"] / x[0].numel())
    assert all(p.grad.abs().max() == 0 for p in net.loss.discriminator.parameters())
    net.zero_grad()
    loss, terms = net(x, step=5)
    loss.backward()
    assert terms["disc_factor"] == 1.0 and terms["d_loss"] > 0 and terms["adaptive_weight"] > 0
    assert loss.item() == pytest.approx(terms["ae_loss"] + terms["d_loss"])
    assert any(p.grad.abs().max() > 0 for p in net.loss.discriminator.parameters())


@pytest.mark.parametrize("regularizer", ["kl", "vq"])
def test_one_backward_equals_vqgans_two_pass_gradients(regularizer):
    """The module's gradients against L_AE and L_D written out as VQGAN's code computes them."""
    net, x = objective(regularizer, disc_start=0), images()
    reference = copy.deepcopy(net)
    noise = torch.randn(4, 2, 4, 4)
    loss, terms = net(x, step=0, noise=noise)
    loss.backward()

    ae, lossmod = reference.autoencoder, reference.loss
    out = ae(x, noise)
    x_rec = out.reconstruction
    rec = (x - x_rec).abs().mean()
    if regularizer == "kl":
        reg = 1e-6 * out.posterior.kl().mean() / x[0].numel()
    else:
        q = out.quantized
        reg = q.codebook_loss + 0.25 * q.commitment_loss
    g_loss = -lossmod.discriminator(x_rec).mean()
    weight = adaptive_weight(rec, g_loss, ae.last_layer) * 0.7
    ae_loss = rec + reg + weight * g_loss
    ae_grads = torch.autograd.grad(ae_loss, list(ae.parameters()), allow_unused=True)
    disc = list(lossmod.discriminator.parameters())
    d_loss = hinge_d_loss(lossmod.discriminator(x), lossmod.discriminator(x_rec.detach()))
    d_grads = torch.autograd.grad(d_loss, disc)

    assert terms["adaptive_weight"] == pytest.approx(weight.item(), rel=1e-5)
    assert loss.item() == pytest.approx((ae_loss + d_loss).item(), rel=1e-5)
    for p, g in zip(net.autoencoder.parameters(), ae_grads, strict=True):
        expected = torch.zeros_like(p) if g is None else g
        actual = torch.zeros_like(p) if p.grad is None else p.grad
        assert torch.allclose(actual, expected, rtol=1e-4, atol=1e-7)
    for p, g in zip(net.loss.discriminator.parameters(), d_grads, strict=True):
        assert torch.allclose(p.grad, g, rtol=1e-4, atol=1e-7)


def test_kl_weight_has_ldms_meaning_per_image_sums_divided_by_pixels():
    net, x = objective("kl", kl_weight=0.01), images()
    loss, terms = net(x, step=0)
    # LDM: Σ_pixels |x - x̃| + w Σ_latents KL, per image; here both divided by C·H·W = 192
    assert loss.item() == pytest.approx(terms["l1"] + 0.01 * terms["kl"] / 192, rel=1e-6)


def test_vq_regulariser_is_codebook_plus_beta_commitment():
    net, x = objective("vq", codebook_weight=2.0), images()
    loss, terms = net(x, step=0)
    out = net.autoencoder(x)
    q = out.quantized
    expected = terms["l1"] + 2.0 * (q.codebook_loss + 0.25 * q.commitment_loss).item()
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_lpips_enters_the_reconstruction_loss_with_its_weight():
    net, x = objective("kl", size=16, perceptual_weight=0.5), images(16)
    net.autoencoder.eval()  # decode the mean, so the reconstruction can be recomputed
    _, terms = net(x, step=0)
    with torch.no_grad():
        x_rec = net.autoencoder(x).reconstruction
        lpips = net.loss.perceptual(x_rec, x).item()
    assert terms["lpips"] == pytest.approx(lpips, rel=1e-4)
    assert terms["rec_loss"] == pytest.approx(terms["l1"] + 0.5 * lpips, rel=1e-5)
    assert list(net.loss.perceptual.parameters()) == []  # frozen: nothing for the optimiser
    assert not any(k.startswith("loss.perceptual") for k in net.state_dict())


def test_patchgan_logit_map_and_size_checks():
    disc = PatchDiscriminator(3, 8, 3)
    assert disc(torch.zeros(2, 3, 64, 64)).shape == (2, 1, 6, 6) and patch_logits_side(64, 3) == 6
    assert patch_logits_side(16, 2) == 2 and patch_logits_side(16, 3) == 0
    with pytest.raises(DifflabError, match="at least 24x24, got 16x16; use at most 2"):
        loss_config({"disc_layers": 3, "perceptual_weight": 0}, 16)
    with pytest.raises(DifflabError, match="LPIPS"):
        loss_config({"disc_layers": 1}, 8)
    with pytest.raises(DifflabError, match=r"unknown config key 'model\.loss\.disc_star'"):
        loss_config({"disc_star": 1}, 64)
