"""Training the two stages of VQ-VAE: the autoencoder (``kind: vqvae``) and its prior (``kind: vqvae_prior``).

Both share the loop of the other trainers (:func:`difflab.training.update.run_training`:
AdamW, warm-up, accumulation, clipping, bf16, EMA weights) and their checkpoints, from which
``resume=True`` continues bit for bit.

Stage 1 minimises the paper's eq. 3 (:func:`difflab.autoencoders.vqvae_loss`) and logs the
reconstruction error, codebook perplexity and usage every ``log_every`` steps. When it ends, the
EMA model is measured on the test split (MSE, PSNR, codebook usage and perplexity over the whole
split) and on training images for ``latent_scale`` (1 / std of z_e); both go into the checkpoint.

Stage 2 reads ``autoencoder:`` (the stage-1 checkpoint), encodes the training split to code grids
once, and fits the causal transformer prior by cross-entropy (with ``train.label_dropout`` for a
class-conditional prior). When it ends, the test split's NLL in bits per code and bits per image
dimension is measured and stored.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from difflab.autoencoders import (
    PRIOR_KIND,
    VQVAE,
    VQVAE_KIND,
    CodePrior,
    bits_per_code,
    bits_per_image_dim,
    code_nll,
    perplexity_of,
    prior_config,
    vqvae_config,
    vqvae_loss,
)
from difflab.autoencoders.prior import PRIOR_ARCH
from difflab.autoencoders.vqvae import VQVAE_ARCH
from difflab.config import ExperimentConfig, config_to_dict
from difflab.data import ImageDataset, load_configured_split
from difflab.diffusion.conditioning import NULL_LABEL
from difflab.errors import DifflabError
from difflab.io.images import save_grid
from difflab.io.process_group import SINGLE, Distributed
from difflab.metrics.features import file_digest
from difflab.pipelines.vqvae import (
    encode_to_codes,
    load_vqvae,
    module_device,
    sample_vqvae,
)
from difflab.training.data_order import BatchStream
from difflab.training.ema import EMA
from difflab.training.loop import build_optimizer, check_train_config
from difflab.training.progress import JsonlLog
from difflab.training.state import (
    MODEL_FILE,
    ResumableRun,
    open_run,
    restore_run_state,
    run_meta,
    save_run_state,
)
from difflab.training.update import MicroBatchLoss, run_training

EVAL_BATCH = 500
LATENT_SCALE_IMAGES = 5000  # training images that measure latent_scale
GRID_IMAGES = 32  # originals and reconstructions in the periodic grids


@dataclasses.dataclass(kw_only=True)
class AutoencoderRun(ResumableRun):
    """Everything a VQ-VAE (stage 1) or prior (stage 2) training run holds in memory."""

    codes: torch.Tensor | None = None  # stage 2: (N, h, w) code grids of the dataset
    autoencoder: VQVAE | None = None  # stage 2: the frozen stage-1 model
    autoencoder_digest: str | None = None  # stage 2: SHA-256 of the stage-1 checkpoint file


def _new_run(
    config: ExperimentConfig, dataset: ImageDataset, net: torch.nn.Module, **extra: Any
) -> AutoencoderRun:
    train = config.train
    return AutoencoderRun(
        config=config,
        dataset=dataset,
        net=net,
        ema=EMA(net, train.ema_decay),
        optimizer=build_optimizer(net, train),
        stream=BatchStream(len(dataset), train.batch_size, train.seed),
        generator=torch.Generator().manual_seed(train.seed + 1),
        **extra,
    )


def train_and_export(
    run: AutoencoderRun,
    log: JsonlLog | None,
    micro_batch_loss: MicroBatchLoss,
    *,
    meta: Callable[[], dict[str, Any]],
    final_meta: Callable[[], dict[str, Any]],
    save_samples: Callable[[Path], None],
    progress: bool,
) -> Path:
    """Run the shared loop; every checkpoint describes the run with ``meta()``, and the exported
    model after the last step with ``final_meta()`` (its test statistics). Returns its path."""
    out_dir = Path(run.config.train.out_dir)
    run_training(
        run,
        log,
        micro_batch_loss,
        save_state=lambda last: save_run_state(
            run, out_dir, meta(), final_meta() if last else meta()
        ),
        save_samples=save_samples,
        progress=progress,
    )
    return out_dir / MODEL_FILE


# ---- stage 1: the autoencoder -------------------------------------------------------------


def build_vqvae_run(config: ExperimentConfig) -> AutoencoderRun:
    """Load the training images and build the VQ-VAE, its EMA copy and the optimizer."""
    dataset = load_configured_split(config.data, "train")
    preset, values = config.model_preset("vqvae-mnist")
    values.setdefault("image_size", dataset.image_size)
    values.setdefault("in_channels", dataset.channels)
    net_config = vqvae_config(preset, **values)
    if (net_config.in_channels, net_config.image_size) != (dataset.channels, dataset.image_size):
        raise DifflabError(
            f"the model takes {net_config.in_channels}x{net_config.image_size}x{net_config.image_size} "
            f"images but dataset {dataset.name!r} has {dataset.channels}x{dataset.image_size}x"
            f"{dataset.image_size}; remove model.in_channels / model.image_size."
        )
    check_train_config(config.train, net_config)
    torch.manual_seed(config.train.seed)
    return _new_run(config, dataset, VQVAE(net_config))


def vqvae_meta(run: AutoencoderRun) -> dict[str, Any]:
    return run_meta(run, VQVAE_KIND, VQVAE_ARCH)


@torch.no_grad()
def reconstruction_stats(model: VQVAE, images: torch.Tensor) -> dict[str, float]:
    """MSE and PSNR ([0, 1] pixel scale), codebook usage and perplexity of ``images`` (N, C, H, W)."""
    model.eval()
    device = module_device(model)
    squared, indices = [], []
    for start in range(0, len(images), EVAL_BATCH):
        x = images[start : start + EVAL_BATCH].to(device)
        out = model(x)
        error = ((out.reconstruction.clamp(-1, 1) - x) / 2) ** 2  # [0, 1] units
        squared.append(error.flatten(1).mean(1))  # (b,) per-image MSE
        indices.append(out.quantized.indices)
    per_image = torch.cat(squared).cpu()
    perplexity, usage = perplexity_of(torch.cat(indices).cpu(), model.config.num_codes)
    return {
        "mse": float(per_image.mean()),
        # PSNR of each image, averaged (the usual convention), for [0, 1] pixels: -10 log10(MSE)
        "psnr": float((-10 * torch.log10(per_image.clamp(min=1e-10))).mean()),
        "codebook_usage": usage,
        "perplexity": perplexity,
    }


@torch.no_grad()
def measure_latent_scale(model: VQVAE, images: torch.Tensor) -> float:
    """1 / standard deviation of z_e over ``images``: what a latent diffusion model scales z by."""
    model.eval()
    device = module_device(model)
    latents = torch.cat(
        [
            model.encode(images[s : s + EVAL_BATCH].to(device))
            for s in range(0, len(images), EVAL_BATCH)
        ]
    )
    return float(1.0 / latents.float().std().clamp(min=1e-8))


def save_reconstruction_grid(model: VQVAE, images: torch.Tensor, path: Path) -> None:
    """Originals (top half) above their reconstructions (bottom half), 8 to a row."""
    model.eval()
    with torch.no_grad():
        recon = model(images.to(module_device(model))).reconstruction.clamp(-1, 1).cpu()
    save_grid(torch.cat([images, recon]), path, nrow=8)


def train_vqvae(
    config: ExperimentConfig,
    *,
    resume: bool = False,
    progress: bool = True,
    device: torch.device | None = None,
    group: Distributed = SINGLE,
) -> Path:
    """Train stage 1 as ``config`` says; returns the path of the EMA model checkpoint.

    ``device`` defaults to the CPU; ``group`` is the torchrun process group (one process by
    default): each rank trains on its slice of every global batch, and the quantiser all-reduces
    its codebook statistics (:mod:`difflab.autoencoders.quantizer`).
    """
    run, log = open_run(
        config,
        resume,
        build_vqvae_run,
        lambda r, p: restore_run_state(r, p, VQVAE_KIND, vqvae_meta(r)),
        device=device,
        group=group,
    )
    grid_images = run.dataset.images[:GRID_IMAGES]

    def micro_batch_loss(index: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        part = run.group.shard(len(index))
        x = run.dataset.images[index[part]].to(run.device)  # (B / world, C, H, W)
        loss, terms = vqvae_loss(run.forward_module(), x)
        return loss, {**terms, "code_restarts": float(run.net.quantizer.restarts)}

    def exported_meta() -> dict[str, Any]:
        # latent_scale goes into the exported model's config only: the state file keeps the
        # training config, so that a longer run can still resume from it
        model = run.ema.module
        scale = measure_latent_scale(model, run.dataset.images[:LATENT_SCALE_IMAGES])
        model.config = dataclasses.replace(model.config, latent_scale=scale)
        test = reconstruction_stats(model, load_configured_split(config.data, "test").images)
        return {**vqvae_meta(run), "model": config_to_dict(model.config), "test": test}

    return train_and_export(
        run,
        log,
        micro_batch_loss,
        meta=lambda: vqvae_meta(run),
        final_meta=exported_meta,
        save_samples=lambda path: save_reconstruction_grid(run.ema.module, grid_images, path),
        progress=progress,
    )


# ---- stage 2: the prior over codes -----------------------------------------------------------


def _autoencoder_path(config: ExperimentConfig) -> Path:
    if not config.autoencoder:
        raise DifflabError(
            "a 'kind: vqvae_prior' config needs 'autoencoder: PATH' (a checkpoint from "
            "`difflab train configs/vqvae_mnist.yaml`)."
        )
    return Path(config.autoencoder)


def build_prior_run(config: ExperimentConfig) -> AutoencoderRun:
    """Encode the training split with the frozen VQ-VAE and build the prior and its optimizer."""
    autoencoder = load_vqvae(_autoencoder_path(config))
    dataset = load_configured_split(config.data, "train")
    ae = autoencoder.config
    if (ae.in_channels, ae.image_size) != (dataset.channels, dataset.image_size):
        raise DifflabError(
            f"the autoencoder {config.autoencoder} takes {ae.in_channels}x{ae.image_size}x"
            f"{ae.image_size} images but dataset {dataset.name!r} has {dataset.channels}x"
            f"{dataset.image_size}x{dataset.image_size}; use the dataset it was trained on."
        )
    preset, values = config.model_preset("prior-mnist")
    values.setdefault("num_codes", ae.num_codes)
    values.setdefault("grid_size", ae.grid_size)
    net_config = prior_config(preset, **values)
    if (net_config.num_codes, net_config.grid_size) != (ae.num_codes, ae.grid_size):
        raise DifflabError(
            f"the prior's codes ({net_config.num_codes} on a {net_config.grid_size}x"
            f"{net_config.grid_size} grid) differ from the autoencoder's ({ae.num_codes} on "
            f"{ae.grid_size}x{ae.grid_size}); remove model.num_codes / model.grid_size."
        )
    if net_config.num_classes and net_config.num_classes != dataset.num_classes:
        raise DifflabError(
            f"model.num_classes is {net_config.num_classes} but dataset {dataset.name!r} has "
            f"{dataset.num_classes} classes."
        )
    check_train_config(config.train, net_config)
    codes = encode_to_codes(autoencoder, dataset.images)  # (N, h, w)
    torch.manual_seed(config.train.seed)
    return _new_run(
        config,
        dataset,
        CodePrior(net_config),
        codes=codes,
        autoencoder=autoencoder,
        autoencoder_digest=file_digest(_autoencoder_path(config)),
    )


def prior_meta(run: AutoencoderRun) -> dict[str, Any]:
    return {
        **run_meta(run, PRIOR_KIND, PRIOR_ARCH),
        "autoencoder": {
            "path": str(_autoencoder_path(run.config)),
            "sha256": run.autoencoder_digest,
        },
    }


def restore_prior_state(run: AutoencoderRun, path: Path) -> None:
    meta = restore_run_state(run, path, PRIOR_KIND, prior_meta(run))
    if meta.get("autoencoder", {}).get("sha256") != run.autoencoder_digest:
        raise DifflabError(
            f"{path} was trained on the codes of another autoencoder than {run.config.autoencoder}; "
            "resume with the same autoencoder or use a new train.out_dir."
        )


@torch.no_grad()
def prior_nll(
    prior: CodePrior, codes: torch.Tensor, labels: torch.Tensor | None, image_dims: int
) -> dict[str, float]:
    """Test NLL of ``codes`` (N, h, w): nats and bits per code, bits per image dimension."""
    prior.eval()
    device = module_device(prior)
    total = 0.0
    for start in range(0, len(codes), EVAL_BATCH):
        batch = codes[start : start + EVAL_BATCH].to(device)
        y = labels[start : start + EVAL_BATCH].to(device) if labels is not None else None
        total += code_nll(prior, batch, y).item() * len(batch)
    nats = total / len(codes)
    length = prior.config.length
    return {
        "nats_per_code": nats,
        "bits_per_code": bits_per_code(nats),
        "bits_per_image_dim": bits_per_image_dim(nats, length, image_dims),
        "uniform_bits_per_code": math.log2(prior.config.num_codes),
    }


def train_prior(
    config: ExperimentConfig,
    *,
    resume: bool = False,
    progress: bool = True,
    device: torch.device | None = None,
    group: Distributed = SINGLE,
) -> Path:
    """Train stage 2 as ``config`` says; returns the path of the EMA prior checkpoint.

    ``device`` and ``group`` as for :func:`train_vqvae`.
    """
    run, log = open_run(
        config, resume, build_prior_run, restore_prior_state, device=device, group=group
    )
    assert run.codes is not None and run.autoencoder is not None
    codes, autoencoder = run.codes, run.autoencoder.to(run.device)
    conditional = run.net.config.num_classes > 0

    def micro_batch_loss(index: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        part = run.group.shard(len(index))
        labels = None
        if conditional:  # dropout drawn for the whole global batch, then sliced
            drop = torch.rand(index.shape, generator=run.generator) < config.train.label_dropout
            labels = run.dataset.labels[index].masked_fill(drop, NULL_LABEL)[part]
            labels = labels.to(run.device)  # (B / world,)
        loss = code_nll(run.forward_module(), codes[index[part]].to(run.device), labels)
        return loss, {"bits_per_code": bits_per_code(loss.item())}

    def final_meta() -> dict[str, Any]:
        test = load_configured_split(config.data, "test")
        dims = test.channels * test.image_size**2
        test_codes = encode_to_codes(autoencoder, test.images)
        labels = test.labels if conditional else None
        return {**prior_meta(run), "test": prior_nll(run.ema.module, test_codes, labels, dims)}

    return train_and_export(
        run,
        log,
        micro_batch_loss,
        meta=lambda: prior_meta(run),
        final_meta=final_meta,
        save_samples=lambda path: save_prior_samples(run.ema.module, autoencoder, path),
        progress=progress,
    )


@torch.no_grad()
def save_prior_samples(prior: CodePrior, autoencoder: VQVAE, path: Path, count: int = 40) -> None:
    """Codes drawn from ``prior`` (one class per row when conditional), decoded to images."""
    classes = prior.config.num_classes
    labels = torch.arange(count) * classes // count if classes else None
    images = sample_vqvae(prior, autoencoder, count, labels, seed=1234)
    save_grid(images, path, nrow=count // classes if classes else 8)
