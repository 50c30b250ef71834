"""The training loop: one readable function for every diffusion backbone.

AdamW with linear warm-up, EMA weights, gradient clipping and accumulation, optional bf16
autocast, periodic PNG grids and JSONL metrics, and atomic checkpoints from which ``resume=True``
continues bit for bit (model, EMA, optimizer, step, data order and RNG state). Under torchrun
the same loop trains data-parallel (:mod:`difflab.io.process_group`, :mod:`difflab.training.distributed`).

A U-Net with ``context_dim > 0`` is trained on captions (Latent Diffusion's cross-attention
conditioning): a learned caption encoder τ_θ (:mod:`difflab.models.text`, settings in
``model.text_encoder``) is built from the training captions' words, attached to the network and
optimised, averaged and saved with it; each batch's captions become the Conditioning's tokens,
dropped with probability ``train.label_dropout`` (with the labels) for classifier-free guidance.
"""

from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path
from typing import Any

import torch

from difflab.config import ExperimentConfig, TrainConfig, check_ranges, config_to_dict
from difflab.data import ImageDataset, load_configured_split
from difflab.diffusion import (
    Conditioning,
    NoiseSchedule,
    denoising_loss,
    draw_noise,
)
from difflab.diffusion.schedule import schedule_from_config
from difflab.errors import DifflabError
from difflab.io.checkpoint import load_checkpoint_meta
from difflab.io.images import save_grid
from difflab.io.process_group import SINGLE, Distributed
from difflab.io.validation import shorten
from difflab.models import (
    TextEncoderConfig,
    attach_caption_encoder,
    build_caption_encoder,
    build_model,
    caption_encoder_meta,
    caption_encoder_of,
    dataset_captions,
    model_config,
)
from difflab.pipelines import DiffusionPipeline, ModelDescription
from difflab.pipelines.latent import LatentStage, open_latent_stage
from difflab.training.data_order import BatchStream
from difflab.training.ema import EMA
from difflab.training.latent_cache import cached_latents
from difflab.training.state import (
    MODEL_FILE,
    ResumableRun,
    close_run,
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
    encoder_values = model_values.pop("text_encoder", None)
    model_values.setdefault("image_size", dataset.image_size)
    model_values.setdefault("in_channels", dataset.channels)
    model_values.setdefault("out_channels", dataset.channels)
    arch, net_config = model_config(preset, **model_values)
    if net_config.num_classes and dataset.num_classes == 0:
        raise DifflabError(
            f"model.num_classes is {net_config.num_classes} but dataset {dataset.name!r} has no labels; set model.num_classes=0."
        )
    captions = training_captions(dataset, net_config, encoder_values)
    train = config.train
    check_train_config(train, net_config)
    check_sizes(arch, net_config, train, dataset)
    torch.manual_seed(train.seed)
    net = build_model(arch, net_config)
    if captions is not None:
        encoder_config, texts = captions
        attach_caption_encoder(net, build_caption_encoder(encoder_config, texts))
    return TrainingRun(
        config=config,
        dataset=dataset,
        arch=arch,
        net=net,
        schedule=schedule_from_config(config.diffusion),
        ema=EMA(net, train.ema_decay, warmup=train.ema_warmup),
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
    labels = dataset.labels.clone()
    return ImageDataset(dataset.name, latents, labels, dataset.class_names, dataset.captions)


def training_captions(
    dataset: Any, net_config: Any, encoder_values: Any
) -> tuple[TextEncoderConfig, tuple[str, ...]] | None:
    """The caption encoder's settings and one caption per training image, for a network that
    cross-attends to tokens (``context_dim > 0``); None for any other network.

    Captions are the dataset's own, or each image's class name with
    ``model.text_encoder.captions: class_names``.
    """
    context_dim = getattr(net_config, "context_dim", 0)
    if not context_dim:
        if encoder_values is not None:
            raise DifflabError(
                "model.text_encoder needs a network that cross-attends to tokens; set "
                "model.context_dim > 0 (e.g. preset unet-tiny-text) or drop model.text_encoder."
            )
        return None
    values = dict(encoder_values or {})
    if values.setdefault("dim", context_dim) != context_dim:
        raise DifflabError(
            f"model.text_encoder.dim is {values['dim']} but the tokens must have the U-Net's "
            f"width model.context_dim={context_dim}; drop model.text_encoder.dim."
        )
    config = TextEncoderConfig.from_dict(values, "model.text_encoder")
    if config.captions == "class_names":
        if not dataset.class_names:
            raise DifflabError(
                f"model.text_encoder.captions is class_names but dataset {dataset.name!r} has no "
                "classes; use a labelled dataset or captions: dataset."
            )
        return config, tuple(dataset.class_names[int(label)] for label in dataset.labels)
    if not dataset.captions:
        raise DifflabError(
            f"model.context_dim is {context_dim}, so the U-Net reads caption tokens, but dataset "
            f"{dataset.name!r} has no captions; train on a captioned dataset (emoji), set "
            "model.text_encoder.captions=class_names, or set model.context_dim=0."
        )
    return config, tuple(dataset.captions)


def caption_texts(run: TrainingRun, index: torch.Tensor) -> list[str]:
    """The training captions of the dataset items ``index`` (k,)."""
    encoder = caption_encoder_of(run.net)
    assert encoder is not None
    captions = dataset_captions(encoder.config, run.dataset, index)
    assert captions is not None  # build_run refuses a dataset without them
    return captions


def build_optimizer(net: torch.nn.Module, train: TrainConfig) -> torch.optim.Optimizer:
    """AdamW (fused kernel) with the config's learning rate and weight decay."""
    return torch.optim.AdamW(
        net.parameters(), lr=train.lr, weight_decay=train.weight_decay, fused=True
    )


def check_train_config(train: TrainConfig, net_config: Any) -> None:
    """What the train section's schema (:class:`~difflab.config.TrainConfig`: ranges checked when
    it is built) cannot see alone: label dropout needs a conditional model, the vlb term
    (``train.vlb_weight``) learned variances (without the term they keep their initial values)."""
    check_ranges(train, "train")  # a TrainConfig changed in Python after it was built
    if train.vlb_weight > 0 and not getattr(net_config, "learn_sigma", False):
        raise DifflabError(
            "train.vlb_weight > 0 (L_hybrid) trains only learned variances; set "
            "model.learn_sigma=true too (e.g. model.learn_sigma=true train.vlb_weight=0.001)."
        )
    if train.label_dropout > 0 and not conditional(net_config):
        raise DifflabError(
            "train.label_dropout needs a class- or caption-conditional model; set "
            "model.num_classes or model.context_dim."
        )


ACTIVATION_BYTES_PER_INPUT_VALUE = 1024  # rough: ~256 float32 activations kept per input value
TRAINING_COPIES = 5  # weights, gradients, EMA and AdamW's two moments


def check_sizes(arch: str, net_config: Any, train: TrainConfig, dataset: Any) -> None:
    """Refuse, before allocating, a network torch cannot build from its config (a width its heads
    do not divide, a negative size) and a network or micro-batch that cannot fit in memory.

    The network is first built on the meta device (no memory); the batch estimate is rough (about
    :data:`ACTIVATION_BYTES_PER_INPUT_VALUE` bytes of activations per input value) and only stops
    sizes that are far out of reach.
    """
    try:
        with torch.device("meta"):
            probe = build_model(arch, net_config)
    except (ValueError, RuntimeError, AssertionError, TypeError, ZeroDivisionError) as error:
        raise DifflabError(
            f"the model config cannot be built ({shorten(str(error)).rstrip('.')}); check the "
            "model section (e.g. num_heads must divide every level's width)."
        ) from None
    parameters = sum(p.numel() for p in probe.parameters())
    memory = physical_memory_bytes()
    if parameters * 4 * TRAINING_COPIES > memory:
        raise DifflabError(
            f"the model has {parameters:,} parameters, too many to train in this machine's "
            f"{memory / 2**30:.0f} GiB of memory; choose a smaller model section."
        )
    values = math.prod(dataset.images.shape[1:])
    batch_bytes = train.batch_size * values * ACTIVATION_BYTES_PER_INPUT_VALUE
    if batch_bytes > memory:
        most = max(1, memory // (values * ACTIVATION_BYTES_PER_INPUT_VALUE))
        raise DifflabError(
            f"train.batch_size={train.batch_size} needs roughly {batch_bytes / 2**30:,.0f} GiB for "
            f"one micro-batch but this machine has {memory / 2**30:.0f} GiB; use at most about "
            f"{most} (with train.grad_accum for a larger effective batch)."
        )


def physical_memory_bytes() -> int:
    """The machine's RAM (``sysconf``; 16 GiB where the platform does not say)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 16 * 2**30


def conditional(net_config: Any) -> bool:
    """Whether a network reads labels or caption tokens (what label dropout drops)."""
    return bool(net_config.num_classes or getattr(net_config, "context_dim", 0))


def model_meta(run: TrainingRun) -> dict[str, Any]:
    """The JSON that describes the model of a run (stored in every checkpoint it writes)."""
    meta = run_meta(run, "diffusion", run.arch)
    if run.latent_stage is not None:
        meta["autoencoder"] = run.latent_stage.meta()
    encoder = caption_encoder_of(run.net)
    if encoder is not None:
        meta["text_encoder"] = caption_encoder_meta(encoder)
    return meta


def save_training_state(run: TrainingRun, out_dir: Path) -> None:
    """Full state for ``resume`` (checkpoints/last.safetensors) and EMA weights (model.safetensors)."""
    save_run_state(run, out_dir, model_meta(run), model_meta(run))


def restore_training_state(run: TrainingRun, path: Path) -> None:
    mine = model_meta(run).get("text_encoder")
    if load_checkpoint_meta(path, kind="diffusion").get("text_encoder") != mine:
        raise DifflabError(
            f"{path} was trained with another caption encoder (settings or vocabulary) than "
            "this config and data give; resume with the same ones or use a new train.out_dir."
        )
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
    if conditional(run.net.config):
        drop = torch.rand(index.shape, generator=run.generator) < run.config.train.label_dropout
        labels = run.dataset.labels[index[part]] if run.net.config.num_classes else None
        tokens = mask = None
        encoder = caption_encoder_of(run.net)  # inside the data-parallel module: grads all-reduce
        if encoder is not None:
            tokens, mask = encoder.encode(caption_texts(run, index[part]))  # (b, L, D), (b, L)
        cond = Conditioning(labels=labels, tokens=tokens, token_mask=mask)
        cond = cond.drop(drop[part]).to(run.device)
    shape = (len(index), *run.dataset.images.shape[1:])
    t, eps = draw_noise(run.schedule, shape, run.generator)  # (B,), (B, C, H, W)
    noise = (t[part], eps[part])
    train = run.config.train
    loss = denoising_loss(
        run.forward_module(),
        run.schedule,
        x0,
        cond,
        noise=noise,
        vlb_weight=train.vlb_weight,
        min_snr_gamma=train.min_snr_gamma,
    )
    return loss, {}


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
    if pipeline.text_encoder is not None:  # one row per caption of the first dataset items
        rows = torch.arange(count) // int(math.sqrt(count)) % len(run.dataset)
        labels = run.dataset.labels[rows] if description.num_classes else None
        cond = pipeline.caption_conditioning(caption_texts(run, rows), labels=labels)
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
    try:
        run_training(
            run,
            log,
            lambda index: diffusion_loss(run, index),
            save_state=lambda last: save_training_state(run, out_dir),
            save_samples=lambda path: sample_grid(run, path),
            progress=progress,
        )
    finally:
        close_run(out_dir)  # the folder's lock, for the next run of this process
    return out_dir / MODEL_FILE
