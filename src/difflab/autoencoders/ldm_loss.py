"""The training objective of Latent Diffusion's autoencoders (Rombach et al. 2022, appendix G,
eq. 25), taken over from VQGAN (Esser et al. 2021, "Taming Transformers", sec. 3.1-3.2):

    L_AE = L_rec(x, x̃) + L_reg(z) + λ · d · L_G(x̃)        L_D = d · L_hinge(D(x), D(x̃))

* **Reconstruction**: L_rec = |x − x̃|₁ + w_p · LPIPS_VGG(x̃, x) (the project's frozen
  :class:`~difflab.metrics.lpips.LPIPSLoss`; ``perceptual_weight`` = w_p).
* **Regularisation**: KL-reg adds ``kl_weight`` · KL(q(z|x) ‖ N(0, I)) (~1e-6); VQ-reg adds
  ``codebook_weight`` · (‖sg(z_e) − z_q‖² + β‖z_e − sg(z_q)‖²).
* **Adversarial**: a PatchGAN discriminator D (:mod:`~difflab.autoencoders.discriminator`) with the
  hinge loss (Lim & Ye 2017; Miyato et al. 2018)

      L_D = ½ (E[max(0, 1 − D(x))] + E[max(0, 1 + D(x̃))])        L_G = −E[D(x̃)]

  both switched on (d = ``disc_factor``) once ``disc_start`` optimizer steps are done (d = 0
  before), so the autoencoder first learns to reconstruct.
* **Adaptive weight** (VQGAN eq. 7): the generator term is balanced against the reconstruction
  at the decoder's last layer G_L,

      λ = ‖∇_{G_L} L_rec‖ / (‖∇_{G_L} L_G‖ + δ),   δ = 1e-4,   clamped to [0, 1e4], no gradient,

  then multiplied by ``disc_weight``. Under data-parallel training both gradients are averaged
  over the processes before their norms are taken, so λ is that of the global batch.

**Units.** LDM's code sums L1 (and the per-image LPIPS, broadcast to every pixel) over each image's
C·H·W values and the KL over its c·h·w latents, then averages over the batch. Here every term is
divided by C·H·W: L1 is the mean absolute error in [-1, 1] units, LPIPS the per-image distance and
the KL term ``kl_weight`` · KL / (C·H·W), which is LDM's objective divided by a constant (Adam does
not see the difference, and λ scales with L_rec), so ``kl_weight`` keeps LDM's meaning: 1e-6 in
LDM's configs is 1e-6 here.

**Updates.** Both networks step on the same batch from one backward pass: the discriminator's loss
sees sg(x̃), and the generator term reaches D through weights with no gradient (D's parameters are
constants of that call), so each network gets only its own gradient; one AdamW with a parameter
group per network steps them together (Adam's state is per parameter, so this is two independent
Adam optimisers with the same learning rate, as in LDM's ``configure_optimizers``). LDM alternates
instead (the discriminator then sees the reconstruction of the already updated autoencoder).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from difflab.autoencoders.discriminator import PatchDiscriminator, check_discriminator
from difflab.autoencoders.kl import AutoencoderConfig, AutoencoderOutput, PerceptualAutoencoder
from difflab.config import dataclass_from_dict
from difflab.errors import DifflabError
from difflab.metrics.lpips import InputRangeWarning, LPIPSLoss

ADAPTIVE_DELTA = 1e-4  # δ of VQGAN eq. 7
ADAPTIVE_MAX = 1e4  # λ is clamped to [0, ADAPTIVE_MAX]
LPIPS_MIN_SIZE = 16  # LPIPS(VGG) needs images of at least 16x16


@dataclass
class LossConfig:
    """The weights of the objective (module docstring); LDM's KL-f4 values are the defaults.

    ``disc_start`` counts optimizer steps; ``disc_layers`` and ``disc_channels`` size the
    PatchGAN (3 and 64: the 70x70 PatchGAN; images of 16x16 need 2 layers or fewer).
    """

    perceptual_weight: float = 1.0
    kl_weight: float = 1e-6
    codebook_weight: float = 1.0
    disc_start: int = 50001
    disc_weight: float = 0.5
    disc_factor: float = 1.0
    disc_layers: int = 3
    disc_channels: int = 64

    def check(self, image_size: int) -> None:
        for name in ("perceptual_weight", "kl_weight", "codebook_weight", "disc_weight"):
            if getattr(self, name) < 0:
                raise DifflabError(f"model.loss.{name} must be >= 0, got {getattr(self, name)}.")
        if self.disc_factor < 0 or self.disc_start < 0:
            raise DifflabError(
                f"model.loss.disc_factor and disc_start must be >= 0, got {self.disc_factor} "
                f"and {self.disc_start}."
            )
        if self.perceptual_weight > 0 and image_size < LPIPS_MIN_SIZE:
            raise DifflabError(
                f"model.loss.perceptual_weight is {self.perceptual_weight} but LPIPS(VGG) needs "
                f"images of at least {LPIPS_MIN_SIZE}x{LPIPS_MIN_SIZE}, not {image_size}x"
                f"{image_size}; set data.image_size={LPIPS_MIN_SIZE} or "
                "model.loss.perceptual_weight=0."
            )
        check_discriminator(image_size, self.disc_layers, self.disc_channels, "model.loss")


def loss_config(values: dict | None, image_size: int) -> LossConfig:
    """A checked :class:`LossConfig` from the ``model.loss`` mapping of a config."""
    config = dataclass_from_dict(LossConfig, values or {}, "model.loss")
    config.check(image_size)
    return config


def hinge_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    """The discriminator's hinge loss ½ (E[max(0, 1 − D(x))] + E[max(0, 1 + D(x̃))]): scalar."""
    return 0.5 * (F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean())


def generator_loss(logits_fake: torch.Tensor) -> torch.Tensor:
    """The generator's hinge-GAN loss L_G = −E[D(x̃)]: scalar."""
    return -logits_fake.mean()


def adopt_weight(weight: float, step: int, start: int) -> float:
    """``weight`` once ``step`` (optimizer steps done) reaches ``start``, else 0 (taming's name)."""
    return weight if step >= start else 0.0


def _mean_over_processes(tensor: torch.Tensor) -> torch.Tensor:
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        tensor = tensor.clone()
        dist.all_reduce(tensor)
        tensor /= dist.get_world_size()
    return tensor


def weight_from_gradients(rec_grad: torch.Tensor, gan_grad: torch.Tensor) -> torch.Tensor:
    """VQGAN eq. 7 from the two gradients at G_L: ‖∇L_rec‖ / (‖∇L_G‖ + δ), clamped to [0, 1e4].

    Under torch.distributed the gradients are first averaged over the processes (those of the
    global batch's mean losses), so every process gets the same λ. Returns a detached scalar.
    """
    grads = _mean_over_processes(
        torch.stack([rec_grad.detach().float(), gan_grad.detach().float()])
    )
    weight = grads[0].norm() / (grads[1].norm() + ADAPTIVE_DELTA)
    return weight.clamp(0.0, ADAPTIVE_MAX)


def adaptive_weight(
    rec_loss: torch.Tensor, gan_loss: torch.Tensor, last_layer: torch.Tensor
) -> torch.Tensor:
    """VQGAN eq. 7 as written: λ = ‖∇_{G_L} L_rec‖ / (‖∇_{G_L} L_G‖ + δ), clamped, detached.

    ``last_layer`` is G_L, the decoder's last weight; both losses must depend on it; the graph is
    kept. (:class:`AutoencoderLoss` gets the same λ at less cost, see its ``forward``.)
    """
    rec_grad = torch.autograd.grad(rec_loss, last_layer, retain_graph=True)[0]
    gan_grad = torch.autograd.grad(gan_loss, last_layer, retain_graph=True)[0]
    return weight_from_gradients(rec_grad, gan_grad)


class AutoencoderLoss(nn.Module):
    """L_AE + L_D of the module docstring for one batch; owns the discriminator and LPIPS.

    Args:
        config: the weights and the PatchGAN's size.
        autoencoder: the autoencoder's config (image channels, regulariser, β).
    """

    def __init__(self, config: LossConfig, autoencoder: AutoencoderConfig) -> None:
        super().__init__()
        config.check(autoencoder.image_size)
        self.config = config
        self.regularizer, self.beta = autoencoder.regularizer, autoencoder.beta
        self.discriminator = PatchDiscriminator(
            autoencoder.in_channels, config.disc_channels, config.disc_layers
        )
        # frozen by construction: constant buffers, nothing in the state dict
        self.perceptual = LPIPSLoss("vgg") if config.perceptual_weight > 0 else None

    def _frozen_discriminator(self, x: torch.Tensor) -> torch.Tensor:
        """D(x) through the discriminator's weights as constants: gradients reach x only."""
        weights = {name: p.detach() for name, p in self.discriminator.named_parameters()}
        return functional_call(self.discriminator, weights, (x,))

    def reconstruction_loss(
        self, x: torch.Tensor, x_rec: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """L_rec = |x − x̃| (mean) + w_p · LPIPS_VGG(x̃, x) (batch mean) and its terms."""
        l1 = (x - x_rec).abs().mean()
        if self.perceptual is None:
            return l1, {"l1": l1}
        with warnings.catch_warnings():  # early reconstructions leave [-1, 1]; that is expected
            warnings.simplefilter("ignore", InputRangeWarning)
            lpips = self.perceptual(x_rec, x)
        return l1 + self.config.perceptual_weight * lpips, {"l1": l1, "lpips": lpips}

    def regularization_loss(
        self, x: torch.Tensor, out: AutoencoderOutput
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """L_reg: kl_weight · KL / (C·H·W) (KL-reg) or codebook_weight · the VQ terms (VQ-reg)."""
        if out.posterior is not None:
            kl = out.posterior.kl().mean()  # per image, summed over its c·h·w latents
            return self.config.kl_weight * kl / x[0].numel(), {"kl": kl}  # units: module doc
        assert out.quantized is not None
        q = out.quantized
        terms = {"commitment": q.commitment_loss, "perplexity": q.perplexity, "usage": q.usage}
        return self.config.codebook_weight * out.vq_loss(self.beta), terms

    def forward(
        self,
        x: torch.Tensor,
        out: AutoencoderOutput,
        *,
        step: int,
        last_layer: torch.Tensor,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """(L_AE + L_D, the logged terms) for images x (B, C, H, W) and their reconstruction.

        ``step`` is the number of optimizer steps done (for ``disc_start``); ``last_layer`` is G_L.

        With the GAN on, L_rec and L_G depend on the autoencoder only through x̃, so their
        gradients are taken at x̃ once, g_rec = ∂L_rec/∂x̃ and g_G = ∂L_G/∂x̃ (through LPIPS and D
        one time each), and carried to G_L by the decoder's last layer alone:
        ∇_{G_L} L = (∂x̃/∂G_L)ᵀ g. The returned loss backpropagates g_rec + λ·d·g_G from x̃, the
        same gradient as L_AE's without a second pass through LPIPS (VQGAN's code makes two),
        and its value is L_AE + L_D.
        """
        config = self.config
        x = x.float()
        x_rec = out.reconstruction.float()  # (B, C, H, W)
        rec, terms = self.reconstruction_loss(x, x_rec)
        regularization, reg_terms = self.regularization_loss(x, out)
        terms.update(reg_terms)
        factor = adopt_weight(config.disc_factor, step, config.disc_start)
        if factor > 0:
            g_loss = generator_loss(self._frozen_discriminator(x_rec).float())
            rec_grad = torch.autograd.grad(rec, x_rec)[0]  # (B, C, H, W) g_rec
            gan_grad = torch.autograd.grad(g_loss, x_rec)[0]  # (B, C, H, W) g_G
            # (∂x̃/∂G_L)ᵀ g as the gradient of the scalar Σ x̃·g (autograd.grad's grad_outputs
            # path imports sympy, seconds, on its first call)
            at_last = [
                torch.autograd.grad((x_rec * g).sum(), last_layer, retain_graph=True)[0]
                for g in (rec_grad, gan_grad)
            ]
            weight = weight_from_gradients(*at_last) * config.disc_weight
            ae_value = rec + regularization + weight * factor * g_loss
            # gradient of L_AE (from x̃ and from the regulariser), value of L_AE
            surrogate = (x_rec * (rec_grad + weight * factor * gan_grad)).sum() + regularization
            ae_loss = surrogate + (ae_value - surrogate).detach()
            terms.update(g_loss=g_loss, adaptive_weight=weight)
        else:
            ae_loss = ae_value = rec + regularization
        # the discriminator always runs (its loss times 0 before disc_start), so that every
        # parameter gets a gradient in every step, as data-parallel training requires
        logits_real = self.discriminator(x.detach()).float()
        logits_fake = self.discriminator(x_rec.detach()).float()
        d_loss = factor * hinge_d_loss(logits_real, logits_fake)
        terms.update(
            rec_loss=rec,
            ae_loss=ae_value,
            d_loss=d_loss,
            logits_real=logits_real.mean(),
            logits_fake=logits_fake.mean(),
        )
        logged = {name: float(value.detach()) for name, value in terms.items()}
        return ae_loss + d_loss, {**logged, "disc_factor": factor}


class AutoencoderWithLoss(nn.Module):
    """The autoencoder and its training objective as one module: what the training loop steps
    and data-parallel training wraps. ``forward(x, step, noise) -> (L_AE + L_D, logged terms)``."""

    def __init__(self, autoencoder: PerceptualAutoencoder, loss: AutoencoderLoss) -> None:
        super().__init__()
        self.autoencoder = autoencoder
        self.loss = loss

    @property
    def config(self) -> AutoencoderConfig:
        """The autoencoder's config (what a checkpoint's ``model`` entry records)."""
        return self.autoencoder.config

    def forward(
        self, x: torch.Tensor, step: int, noise: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """x (B, C, H, W) in [-1, 1]; ``noise`` ε (B, c, h, w) of a KL posterior sample."""
        out = self.autoencoder(x, noise)
        return self.loss(x, out, step=step, last_layer=self.autoencoder.last_layer)
