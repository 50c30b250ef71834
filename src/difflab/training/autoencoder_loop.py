"""Training Latent Diffusion's perceptual autoencoder (``kind: autoencoder``).

The run steps :class:`~difflab.autoencoders.AutoencoderWithLoss` (the autoencoder, its PatchGAN
and the frozen LPIPS; :mod:`difflab.autoencoders.ldm_loss`) through the loop every trainer shares
(:func:`difflab.training.update.run_training`: warm-up, accumulation, bf16, non-finite skips,
torchrun data parallelism), with

* one AdamW, betas (0.5, 0.9) as in LDM, with a parameter group for the autoencoder and one for
  the discriminator (two independent Adam optimisers with one learning rate);
* EMA weights of the autoencoder alone (``train.ema_decay: 0`` keeps the raw weights);
* sample grids of reconstructions (the first 32 training images above their reconstructions);
* a state file with the autoencoder, the discriminator (and its BatchNorm statistics), the EMA,
  both parameter groups' Adam moments and the RNG states, so ``--resume`` continues bit for bit.

The config's ``model`` section holds the autoencoder's preset and fields
(:class:`~difflab.autoencoders.AutoencoderConfig`) and a ``loss`` mapping
(:class:`~difflab.autoencoders.LossConfig`), as LDM's configs nest ``lossconfig`` in the model.

When the run ends, the EMA autoencoder is measured on the test split (MSE, PSNR; codebook use for
VQ) and on up to 5,000 training images for ``latent_scale`` = 1 / std(z); both go into the
exported ``model.safetensors`` (``kind: autoencoder``), which
:func:`~difflab.autoencoders.load_autoencoder` reads.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from difflab.autoencoders import (
    AUTOENCODER_ARCH,
    AUTOENCODER_KIND,
    AutoencoderConfig,
    AutoencoderLoss,
    AutoencoderWithLoss,
    PerceptualAutoencoder,
    autoencoder_config,
    loss_config,
    perplexity_of,
)
from difflab.autoencoders.kl import LATENT_SCALE_IMAGES_KEY, with_latent_scale
from difflab.config import ExperimentConfig, config_to_dict, dataclass_from_dict
from difflab.data import load_configured_split
from difflab.errors import DifflabError
from difflab.io.checkpoint import load_checkpoint_meta
from difflab.io.images import save_grid
from difflab.io.process_group import SINGLE, Distributed
from difflab.pipelines.vqvae import module_device
from difflab.training.data_order import BatchStream
from difflab.training.ema import EMA
from difflab.training.loop import check_train_config
from difflab.training.state import (
    MODEL_FILE,
    ResumableRun,
    open_run,
    restore_run_state,
    run_meta,
    save_run_state,
)
from difflab.training.update import run_training
from difflab.training.vqvae_loop import GRID_IMAGES, LATENT_SCALE_IMAGES

ADAM_BETAS = (0.5, 0.9)  # LDM's AutoencoderKL / VQModel optimisers
EVAL_BATCH = 250  # images per encode / decode call when measuring


class AutoencoderEMA(EMA):
    """EMA of the autoencoder inside an :class:`AutoencoderWithLoss` (the discriminator is not
    averaged): ``update`` is given the whole training module, as the shared loop does."""

    def update(self, model: torch.nn.Module) -> None:
        super().update(model.autoencoder)


def build_optimizer(net: AutoencoderWithLoss, train: Any) -> torch.optim.Optimizer:
    """AdamW(betas=(0.5, 0.9)) with group 0 = the autoencoder, group 1 = the discriminator."""
    groups = [
        {"params": list(net.autoencoder.parameters())},
        {"params": list(net.loss.discriminator.parameters())},
    ]
    return torch.optim.AdamW(
        groups, lr=train.lr, betas=ADAM_BETAS, weight_decay=train.weight_decay, fused=True
    )


def build_autoencoder_run(config: ExperimentConfig) -> ResumableRun:
    """Load the training images and build the autoencoder, its loss, EMA and optimizer."""
    dataset = load_configured_split(config.data, "train")
    preset, values = config.model_preset("ae-f4")
    loss_values = values.pop("loss", None)
    values.setdefault("image_size", dataset.image_size)
    values.setdefault("in_channels", dataset.channels)
    net_config = autoencoder_config(preset, **values)
    if (net_config.in_channels, net_config.image_size) != (dataset.channels, dataset.image_size):
        size = net_config.image_size
        raise DifflabError(
            f"the model takes {net_config.in_channels}x{size}x{size} images but dataset "
            f"{dataset.name!r} has {dataset.channels}x{dataset.image_size}x{dataset.image_size}; "
            "remove model.in_channels / model.image_size."
        )
    losses = loss_config(loss_values, net_config.image_size)
    train = config.train
    if train.label_dropout:
        raise DifflabError(
            f"train.label_dropout is {train.label_dropout} but an autoencoder uses no labels; "
            "remove it."
        )
    check_train_config(train, net_config)
    torch.manual_seed(train.seed)
    net = AutoencoderWithLoss(
        PerceptualAutoencoder(net_config), AutoencoderLoss(losses, net_config)
    )
    return ResumableRun(
        config=config,
        dataset=dataset,
        net=net,
        ema=AutoencoderEMA(net.autoencoder, train.ema_decay),
        optimizer=build_optimizer(net, train),
        stream=BatchStream(len(dataset), train.batch_size, train.seed),
        generator=torch.Generator().manual_seed(train.seed + 1),
    )


def autoencoder_meta(run: ResumableRun) -> dict[str, Any]:
    """The run's JSON: the autoencoder's config as ``model`` and the objective as ``loss``."""
    return {
        **run_meta(run, AUTOENCODER_KIND, AUTOENCODER_ARCH),
        "loss": config_to_dict(run.net.loss.config),
    }


def restore_autoencoder_state(run: ResumableRun, path: Path) -> None:
    """Resume from ``path``, refusing a state trained with another objective."""
    stored = load_checkpoint_meta(path, kind=AUTOENCODER_KIND).get("loss")
    if stored != config_to_dict(run.net.loss.config):
        raise DifflabError(
            f"{path} was trained with a different model.loss config than the one given; "
            "resume with the same config or use a new train.out_dir."
        )
    restore_run_state(run, path, AUTOENCODER_KIND, autoencoder_meta(run))


@torch.no_grad()
def encode_images(model: PerceptualAutoencoder, images: Any) -> torch.Tensor:
    """Latents z (N, c, h, w) of ``images`` (N, C, H, W; a tensor or a streamed dataset's
    images), a batch at a time, on the CPU (eval mode)."""
    model.eval()
    device = module_device(model)
    return torch.cat(
        [
            model.encode(images[s : s + EVAL_BATCH].to(device)).float().cpu()
            for s in range(0, len(images), EVAL_BATCH)
        ]
    )


def measure_latent_scale(model: PerceptualAutoencoder, images: Any) -> float:
    """1 / std of the latents of ``images`` (all their elements): the factor that gives a latent
    diffusion model unit-variance inputs (LDM's ``scale_factor``, sec. 4.3.2 / appendix G)."""
    return float(1.0 / encode_images(model, images).std().clamp(min=1e-8))


@torch.no_grad()
def reconstruct(model: PerceptualAutoencoder, images: Any) -> torch.Tensor:
    """decode(encode(x)) of ``images`` (N, C, H, W), clamped to [-1, 1], on the CPU."""
    model.eval()
    device = module_device(model)
    parts = []
    for start in range(0, len(images), EVAL_BATCH):
        x = images[start : start + EVAL_BATCH].to(device)
        parts.append(model.decode(model.encode(x)).float().clamp(-1, 1).cpu())
    return torch.cat(parts)


@torch.no_grad()
def autoencoder_stats(model: PerceptualAutoencoder, images: Any) -> dict[str, float]:
    """Reconstruction error of ``images`` (N, C, H, W; a tensor or a streamed dataset's images):
    MSE and PSNR on [0, 1] pixels (PSNR per image, then averaged), and for a VQ autoencoder the
    share of codes used and their perplexity. Read and measured a batch at a time."""
    model.eval()
    device = module_device(model)
    errors, indices = [], []
    for start in range(0, len(images), EVAL_BATCH):
        x = images[start : start + EVAL_BATCH].to(device)  # (b, C, H, W)
        z = model.encode(x)  # (b, c, h, w)
        recon = model.decode(z).float().clamp(-1, 1)
        errors.append((((recon - x) / 2) ** 2).flatten(1).mean(1).cpu())  # (b,) [0, 1] units
        if model.quantizer is not None:
            indices.append(model.quantizer(z).indices.cpu())  # (b, h, w)
    per_image = torch.cat(errors)
    stats = {
        "mse": float(per_image.mean()),
        "psnr": float((-10 * torch.log10(per_image.clamp(min=1e-10))).mean()),
    }
    if indices:
        perplexity, usage = perplexity_of(torch.cat(indices), model.config.num_codes)
        stats.update(codebook_usage=usage, perplexity=perplexity)
    return stats


def save_reconstruction_grid(
    model: PerceptualAutoencoder, images: torch.Tensor, path: Path
) -> None:
    """Originals (top half) above their reconstructions (bottom half), 8 to a row."""
    save_grid(torch.cat([images, reconstruct(model, images)]), path, nrow=8)


def train_autoencoder(
    config: ExperimentConfig,
    *,
    resume: bool = False,
    progress: bool = True,
    device: torch.device | None = None,
    group: Distributed = SINGLE,
) -> Path:
    """Train the autoencoder as ``config`` says; returns the path of the exported EMA model.

    ``device`` defaults to the CPU; ``group`` is the torchrun process group (one process by
    default): each rank trains on its slice of every global batch (the discriminator's BatchNorm
    normalises each rank's slice on its own).
    """
    run, log = open_run(
        config,
        resume,
        build_autoencoder_run,
        restore_autoencoder_state,
        device=device,
        group=group,
    )
    net: AutoencoderWithLoss = run.net
    grid_images = run.dataset.images[:GRID_IMAGES]
    kl = net.autoencoder.config.regularizer == "kl"
    latent_shape = net.autoencoder.config.latent_shape

    def micro_batch_loss(index: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        part = run.group.shard(len(index))
        x = run.dataset.images[index[part]].to(run.device)  # (B / world, C, H, W)
        noise = None
        if kl:  # ε of the posterior samples, drawn for the whole global batch, then sliced
            noise = torch.randn((len(index), *latent_shape), generator=run.generator)
            noise = noise[part].to(run.device)  # (B / world, c, h, w)
        return run.forward_module()(x, run.step, noise)

    def exported_meta() -> dict[str, Any]:
        # latent_scale goes into the exported model's config only: the state file keeps the
        # training config, so that a longer run can still resume from it
        model = run.ema.module
        images = run.dataset.images[:LATENT_SCALE_IMAGES]  # (N, C, H, W)
        with_latent_scale(model, measure_latent_scale(model, images))
        test = autoencoder_stats(model, load_configured_split(config.data, "test").images)
        return {
            **autoencoder_meta(run),
            "model": config_to_dict(model.config),
            LATENT_SCALE_IMAGES_KEY: len(images),
            "test": test,
        }

    out_dir = Path(config.train.out_dir)
    run_training(
        run,
        log,
        micro_batch_loss,
        save_state=lambda last: save_run_state(
            run, out_dir, autoencoder_meta(run), exported_meta() if last else autoencoder_meta(run)
        ),
        save_samples=lambda path: save_reconstruction_grid(run.ema.module, grid_images, path),
        progress=progress,
    )
    return out_dir / MODEL_FILE


def latent_summary(meta: dict[str, Any]) -> str:
    """``"latents 3x16x16 (f = 4), latent_scale 1.234"`` of an exported checkpoint's JSON."""
    model = dataclass_from_dict(AutoencoderConfig, meta["model"], "model")
    c, h, w = model.latent_shape
    return f"latents {c}x{h}x{w} (f = {model.downsample_factor}), latent_scale {model.latent_scale:.4g}"


def stats_summary(stats: dict[str, float]) -> str:
    """``"MSE 0.00123, PSNR 29.10 dB"`` (and ``", 87.5 % of codes used"`` for VQ) of
    :func:`autoencoder_stats`."""
    text = f"MSE {stats['mse']:.5f}, PSNR {stats['psnr']:.2f} dB"
    if "codebook_usage" in stats:
        text += f", {100 * stats['codebook_usage']:.1f} % of codes used"
    return text
