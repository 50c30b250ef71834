"""The training loop: one readable function for every diffusion backbone.

AdamW with linear warm-up, EMA weights, gradient clipping and accumulation, optional bf16
autocast, periodic PNG grids and JSONL metrics, and atomic checkpoints from which ``resume=True``
continues bit for bit (model, EMA, optimizer, step, data order and RNG state). Under torchrun
the same loop trains data-parallel (:mod:`difflab.io.process_group`, :mod:`difflab.training.distributed`).
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import torch

from difflab.config import DiffusionConfig, ExperimentConfig, TrainConfig, config_to_dict
from difflab.data import ImageDataset, load_configured_split
from difflab.diffusion import (
    Conditioning,
    NoiseSchedule,
    denoising_loss,
    draw_noise,
)
from difflab.errors import DifflabError
from difflab.io.images import save_grid
from difflab.io.process_group import SINGLE, Distributed
from difflab.models import build_model, model_config
from difflab.pipelines import DiffusionPipeline, ModelDescription
from difflab.pipelines.latent import LatentStage, open_latent_stage
from difflab.training.data_order import BatchStream
from difflab.training.ema import EMA
from difflab.training.latent_cache import cached_latents
from difflab.training.state import (
    MODEL_FILE,
    ResumableRun,
    open_run,
    restore_run_state,
    run_meta,
    save_run_state,
)
from difflab.training.update import run_training

SAMPLE_SEED = 1234  # the fixed x_T of every sample grid of a run


@dataclasses.dataclass(kw_only=True)
class TrainingRun(ResumableRun):
    """Everything a diffusion training run holds in memory; ``arch`` names the backbone."""

    arch: str
    schedule: NoiseSchedule
    latent_stage: LatentStage | None = None  # latent diffusion: the frozen autoencoder


def build_run(config: ExperimentConfig) -> TrainingRun:
    """Load the data and build model, schedule, EMA and optimizer from a config.

    With ``autoencoder: PATH`` the model is a latent diffusion model (Rombach et al. 2022): the
    training images are encoded once (cached, :mod:`difflab.training.latent_cache`) and the
    network's size and channels are the latents'.
    """
    dataset = load_configured_split(config.data, "train")
    latent_stage = None
    if config.autoencoder:
        latent_stage = open_latent_stage(config.autoencoder)
        dataset = latent_dataset(dataset, latent_stage, config)
    preset, model_values = config.model_preset("unet-mnist")
    model_values.setdefault("image_size", dataset.image_size)
    model_values.setdefault("in_channels", dataset.channels)
    model_values.setdefault("out_channels", dataset.channels)
    arch, net_config = model_config(preset, **model_values)
    if net_config.num_classes and dataset.num_classes == 0:
        raise DifflabError(
            f"model.num_classes is {net_config.num_classes} but dataset {dataset.name!r} has no labels; set model.num_classes=0."
        )
    train = config.train
    check_train_config(train, net_config)
    torch.manual_seed(train.seed)
    net = build_model(arch, net_config)
    return TrainingRun(
        config=config,
        dataset=dataset,
        arch=arch,
        net=net,
        schedule=build_schedule(config.diffusion),
        ema=EMA(net, train.ema_decay),
        optimizer=build_optimizer(net, train),
        stream=BatchStream(len(dataset), train.batch_size, train.seed),
        generator=torch.Generator().manual_seed(train.seed + 1),
        latent_stage=latent_stage,
    )


def latent_dataset(dataset: Any, stage: LatentStage, config: ExperimentConfig) -> ImageDataset:
    """The training split as scaled latents ``E(x) * latent_scale`` (cached on disk), with the
    dataset's labels and name."""
    if (dataset.channels, dataset.image_size, dataset.image_size) != stage.image_shape:
        c, size, _ = stage.image_shape
        raise DifflabError(
            f"the autoencoder {stage.path} takes {c}×{size}×{size} images but the data are "
            f"{dataset.channels}×{dataset.image_size}×{dataset.image_size}; set data.image_size "
            "and data.channels to the autoencoder's."
        )
    key = {"autoencoder": stage.sha256, "data": config_to_dict(config.data), "split": "train"}
    latents, _ = cached_latents(stage.autoencoder, dataset.images, len(dataset), key)
    return ImageDataset(dataset.name, latents, dataset.labels.clone(), dataset.class_names)


def build_schedule(diffusion: DiffusionConfig) -> NoiseSchedule:
    """The noise schedule a ``diffusion`` config section describes."""
    return NoiseSchedule.from_name(
        diffusion.schedule, diffusion.num_timesteps, diffusion.beta_start, diffusion.beta_end
    )


def build_optimizer(net: torch.nn.Module, train: TrainConfig) -> torch.optim.Optimizer:
    """AdamW (fused kernel) with the config's learning rate and weight decay."""
    return torch.optim.AdamW(
        net.parameters(), lr=train.lr, weight_decay=train.weight_decay, fused=True
    )


def check_train_config(train: Any, net_config: Any) -> None:
    positive = (
        "steps",
        "batch_size",
        "grad_accum",
        "log_every",
        "sample_every",
        "checkpoint_every",
        "sample_steps",
    )
    for name in positive:
        if getattr(train, name) < 1:
            raise DifflabError(f"train.{name} must be at least 1, got {getattr(train, name)}.")
    if not 0 <= train.label_dropout < 1:
        raise DifflabError(f"train.label_dropout must lie in [0, 1), got {train.label_dropout}.")
    if train.label_dropout > 0 and not net_config.num_classes:
        raise DifflabError(
            "train.label_dropout needs a class-conditional model; set model.num_classes."
        )
    if not 0 <= train.ema_decay < 1:
        raise DifflabError(f"train.ema_decay must lie in [0, 1), got {train.ema_decay}.")
    if train.skip_nonfinite < 0:
        raise DifflabError(f"train.skip_nonfinite must be 0 or more, got {train.skip_nonfinite}.")


def model_meta(run: TrainingRun) -> dict[str, Any]:
    """The JSON that describes the model of a run (stored in every checkpoint it writes)."""
    meta = run_meta(run, "diffusion", run.arch)
    if run.latent_stage is not None:
        meta["autoencoder"] = run.latent_stage.meta()
    return meta


def save_training_state(run: TrainingRun, out_dir: Path) -> None:
    """Full state for ``resume`` (checkpoints/last.safetensors) and EMA weights (model.safetensors)."""
    save_run_state(run, out_dir, model_meta(run), model_meta(run))


def restore_training_state(run: TrainingRun, path: Path) -> None:
    stored = restore_run_state(run, path, "diffusion", model_meta(run))
    mine = None if run.latent_stage is None else run.latent_stage.sha256
    if stored.get("autoencoder", {}).get("sha256") != mine:
        raise DifflabError(
            f"{path} was trained on the latents of another autoencoder than "
            f"{run.config.autoencoder}; resume with the same one or use a new train.out_dir."
        )


def diffusion_loss(run: TrainingRun, index: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
    """The denoising loss of this rank's part of the global micro-batch ``index`` (B,)."""
    part = run.group.shard(len(index))
    x0 = run.dataset.images[index[part]].to(run.device)  # (B / world, C, H, W)
    cond = Conditioning()
    if run.net.config.num_classes:
        drop = torch.rand(index.shape, generator=run.generator) < run.config.train.label_dropout
        labels = run.dataset.labels[index]  # (B,)
        cond = Conditioning(labels=labels[part]).drop(drop[part]).to(run.device)
    shape = (len(index), *run.dataset.images.shape[1:])
    t, eps = draw_noise(run.schedule, shape, run.generator)  # (B,), (B, C, H, W)
    noise = (t[part], eps[part])
    return denoising_loss(run.forward_module(), run.schedule, x0, cond, noise=noise), {}


def sample_grid(run: TrainingRun, path: Path, count: int = 64) -> None:
    """DDIM samples of the EMA model with a fixed seed, so grids of successive steps compare."""
    description = ModelDescription.from_meta(model_meta(run), path, run.net.conditioning_fields)
    autoencoder = None
    if run.latent_stage is not None:
        autoencoder = run.latent_stage.autoencoder.to(run.device)
    pipeline = DiffusionPipeline(run.ema.module, run.schedule, description, autoencoder)
    cond = None
    if description.num_classes:
        cond = Conditioning(labels=torch.arange(count) % description.num_classes)
    steps = min(run.config.train.sample_steps, run.schedule.num_timesteps)
    images = pipeline.generate(count, cond, seed=SAMPLE_SEED, steps=steps)
    save_grid(images, path, nrow=int(math.sqrt(count)))


def train(
    config: ExperimentConfig,
    *,
    resume: bool = False,
    progress: bool = True,
    device: torch.device | None = None,
    group: Distributed = SINGLE,
) -> Path:
    """Train a diffusion model as ``config`` says; returns the path of the EMA model checkpoint.

    ``device`` defaults to the CPU; ``group`` is the torchrun process group (one process by default).
    """
    out_dir = Path(config.train.out_dir)
    run, log = open_run(
        config, resume, build_run, restore_training_state, device=device, group=group
    )
    run_training(
        run,
        log,
        lambda index: diffusion_loss(run, index),
        save_state=lambda last: save_training_state(run, out_dir),
        save_samples=lambda path: sample_grid(run, path),
        progress=progress,
    )
    return out_dir / MODEL_FILE
