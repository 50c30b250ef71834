"""Training a ControlNet on a locked base model (``kind: controlnet`` configs).

The config's ``model`` section names the base (``base``: a diffusion checkpoint or a shipped
name, optionally pinned by ``base_sha256``), the hint (``hint``: a :data:`~difflab.data.hints.
HINT_MAKERS` name, computed once for the training images and cached on disk) and any
:class:`~difflab.models.controlnet.ControlNetConfig` field. Only the control branch is in the
optimizer, the EMA and the checkpoint, which records the base's path and SHA-256; the base runs
frozen (eval mode, no gradients) inside every forward. Labels are dropped with probability
``train.label_dropout`` (the paper drops 50 % of the prompts so that the ControlNet learns to read
the hint alone, sec. 3.4). Every ``sample_every`` steps a grid of held-out test hints and their
samples is written and the edge F1 of those samples is logged (``edge_f1`` in metrics.jsonl), the
curve on which the paper's "sudden convergence" shows.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from difflab.config import ExperimentConfig, config_to_dict, dataclass_from_dict
from difflab.data import load_configured_split, load_dataset
from difflab.data.hints import canny_hint, edge_f1, make_hint
from difflab.data.streaming import data_cache_dir, settings_digest
from difflab.diffusion import Conditioning, NoiseSchedule, denoising_loss, draw_noise
from difflab.errors import DifflabError
from difflab.io.atomic import atomic_path
from difflab.io.images import save_grid
from difflab.io.process_group import SINGLE, Distributed
from difflab.io.weights import resolve_checkpoint
from difflab.models.controlnet import (
    CONTROL_KIND,
    ControlledNetwork,
    ControlNetConfig,
    build_controlnet,
)
from difflab.pipelines import DiffusionPipeline, load_pipeline
from difflab.pipelines.control import controlled_pipeline
from difflab.pipelines.recorded import file_record
from difflab.training.data_order import BatchStream
from difflab.training.ema import EMA
from difflab.training.loop import SAMPLE_SEED, build_optimizer
from difflab.training.progress import JsonlLog
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

RUN_KEYS = ("base", "base_sha256", "hint")
"""``model`` entries that are not ControlNetConfig fields."""

EVAL_IMAGES = 36  # held-out test hints of every sample grid and edge-F1 point (a 6 x 6 grid)


@dataclasses.dataclass(kw_only=True)
class ControlRun(ResumableRun):
    """A ControlNet training run: ``net`` is the control branch; ``base`` the locked model."""

    base: DiffusionPipeline
    base_file: dict[str, str]  # path and SHA-256
    hint_kind: str
    hints: torch.Tensor  # (N, C_h, H, W) the training images' hints
    schedule: NoiseSchedule
    evaluation: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None  # see held_out


def control_settings(config: ExperimentConfig) -> tuple[str, str | None, str, dict[str, Any]]:
    """(base, pinned SHA-256 or None, hint kind, ControlNetConfig entries) of the model section."""
    values = dict(config.model)
    base = values.pop("base", None)
    if not isinstance(base, str) or not base:
        raise DifflabError(
            "a controlnet config needs model.base: the diffusion checkpoint to control (a path "
            "or a shipped name such as mnist_cond)."
        )
    values.pop("preset", None)
    return base, values.pop("base_sha256", None), str(values.pop("hint", "canny")), values


def cached_hints(kind: str, images: torch.Tensor, key: dict[str, Any]) -> torch.Tensor:
    """``make_hint(kind, images)`` (N, C, H, W), kept as float16 in the data cache under ``key``."""
    path = data_cache_dir() / "hints" / f"{settings_digest({**key, 'hint': kind})}.npy"
    if path.is_file():
        stored = np.load(path, allow_pickle=False)
        if stored.shape[0] == len(images) and stored.shape[-2:] == tuple(images.shape[-2:]):
            return torch.from_numpy(stored.astype(np.float32))
    hints = make_hint(kind, images)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.save(handle, hints.numpy().astype(np.float16))
    return hints


def build_control_run(config: ExperimentConfig) -> ControlRun:
    """Load the locked base (checked against ``model.base_sha256`` when given), the data and their
    hints, and build the ControlNet from the base with its optimizer and EMA."""
    base_name, pinned, hint_kind, values = control_settings(config)
    base_path = resolve_checkpoint(base_name)
    record = file_record(base_path)
    if pinned is not None and pinned != record["sha256"]:
        raise DifflabError(
            f"the base {base_path} has SHA-256 {record['sha256'][:12]}…, not the "
            f"model.base_sha256 {str(pinned)[:12]}… the config pins; give the base it names."
        )
    base = load_pipeline(base_path)
    if base.autoencoder is not None:
        raise DifflabError(
            f"{base_path} is a latent model; difflab trains ControlNets for pixel-space bases only "
            "so far (the model and pipeline support latent bases)."
        )
    if config_to_dict(config.diffusion) != config_to_dict(base.description.diffusion):
        raise DifflabError(
            f"the config's diffusion section differs from the schedule {base_path} was trained "
            "with; drop the diffusion section (a ControlNet uses its base's)."
        )
    dataset = load_configured_split(config.data, "train")
    if (dataset.channels, dataset.image_size, dataset.image_size) != base.image_shape:
        c, size, _ = base.image_shape
        raise DifflabError(
            f"the base {base_path} makes {c}×{size}×{size} images but the data are "
            f"{dataset.channels}×{dataset.image_size}×{dataset.image_size}; train on its data."
        )
    key = {"data": config_to_dict(config.data), "split": "train"}
    hints = cached_hints(hint_kind, dataset.images, key)
    defaults = {
        "base_arch": base.description.arch,
        "hint_channels": hints.shape[1],
        "hint_size": base.image_shape[-1],
    }
    control_config = dataclass_from_dict(ControlNetConfig, {**defaults, **values}, "model")
    if control_config.hint_channels != hints.shape[1]:
        raise DifflabError(
            f"model.hint_channels is {control_config.hint_channels} but {hint_kind} hints of "
            f"these images have {hints.shape[1]}; drop model.hint_channels."
        )
    train = config.train
    if not 0 <= train.label_dropout < 1:
        raise DifflabError(f"train.label_dropout must lie in [0, 1), got {train.label_dropout}.")
    base.net.requires_grad_(False).eval()
    torch.manual_seed(train.seed)
    net = build_controlnet(base.net, control_config)
    return ControlRun(
        config=config,
        dataset=dataset,
        net=net,
        ema=EMA(net, train.ema_decay),
        optimizer=build_optimizer(net, train),
        stream=BatchStream(len(dataset), train.batch_size, train.seed),
        generator=torch.Generator().manual_seed(train.seed + 1),
        base=base,
        base_file=record,
        hint_kind=hint_kind,
        hints=hints,
        schedule=base.schedule,
    )


def model_meta(run: ControlRun) -> dict[str, Any]:
    """The JSON of a ControlNet checkpoint: the branch's config, the base file, the hint kind."""
    meta = run_meta(run, CONTROL_KIND, CONTROL_KIND)
    meta["base"] = dict(run.base_file)
    meta["hint"] = run.hint_kind
    return meta


def restore_control_state(run: ControlRun, path: Path) -> None:
    stored = restore_run_state(run, path, CONTROL_KIND, model_meta(run))
    digest = stored.get("base", {}).get("sha256")
    if digest != run.base_file["sha256"]:
        raise DifflabError(
            f"{path} was trained on another base model than {run.base_file['path']} (SHA-256 "
            f"{str(digest)[:12]}… instead of {run.base_file['sha256'][:12]}…); resume with that "
            "base or use a new train.out_dir."
        )


def control_loss(run: ControlRun, index: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
    """The denoising loss of the locked base plus the ControlNet, on this rank's part of ``index``."""
    part = run.group.shard(len(index))
    mine = index[part]
    x0 = run.dataset.images[mine].to(run.device)  # (b, C, H, W)
    drop = torch.rand(index.shape, generator=run.generator) < run.config.train.label_dropout
    labels = run.dataset.labels[mine] if run.base.num_classes else None
    cond = Conditioning(labels=labels, control=run.hints[mine])
    cond = cond.drop(drop[part]).to(run.device)
    shape = (len(index), *run.dataset.images.shape[1:])
    t, eps = draw_noise(run.schedule, shape, run.generator)  # (B,), (B, C, H, W)
    net = ControlledNetwork(run.base.net, [run.forward_module()])
    return denoising_loss(net, run.schedule, x0, cond, noise=(t[part], eps[part])), {}


def held_out(run: ControlRun) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(hints, labels, Canny edges of the images) of the first test images, fixed for a run."""
    if run.evaluation is None:
        data = run.config.data
        test = load_dataset(
            data.name,
            split="test",
            data_dir=data.data_dir,
            image_size=run.dataset.image_size,
            channels=run.dataset.channels,
            limit=EVAL_IMAGES,
        )
        images = test.images[:EVAL_IMAGES]
        run.evaluation = (
            make_hint(run.hint_kind, images),
            test.labels[:EVAL_IMAGES],
            canny_hint(images),
        )
    return run.evaluation


def sample_and_score(run: ControlRun, path: Path, log: JsonlLog | None) -> None:
    """A grid of held-out hints (odd rows) and the EMA ControlNet's samples (even rows), and
    their edge F1 (within 1 px) against the test images' Canny edges, logged as ``edge_f1``."""
    hints, labels, edges = held_out(run)
    pipeline = controlled_pipeline(run.base, [run.ema.module], "training")
    cond = Conditioning(labels=labels if run.base.num_classes else None, control=hints)
    steps = min(run.config.train.sample_steps, run.schedule.num_timesteps)
    images = pipeline.generate(len(hints), cond, seed=SAMPLE_SEED, steps=steps)
    f1 = float(edge_f1(canny_hint(images.clamp(-1, 1)), edges).mean())
    side = int(math.sqrt(len(hints)))
    rows = [
        t for r in range(0, len(hints), side) for t in (hints[r : r + side], images[r : r + side])
    ]
    save_grid(torch.cat(rows), path, nrow=side)
    if log is not None:
        log.write({"step": run.step, "edge_f1": round(f1, 4)})


def train_controlnet(
    config: ExperimentConfig,
    *,
    resume: bool = False,
    progress: bool = True,
    device: torch.device | None = None,
    group: Distributed = SINGLE,
) -> Path:
    """Train the ControlNet ``config`` describes; returns the path of its EMA checkpoint."""
    out_dir = Path(config.train.out_dir)
    run, log = open_run(
        config, resume, build_control_run, restore_control_state, device=device, group=group
    )
    run.base.net.to(run.device)
    try:
        run_training(
            run,
            log,
            lambda index: control_loss(run, index),
            save_state=lambda last: save_run_state(run, out_dir, model_meta(run), model_meta(run)),
            save_samples=lambda path: sample_and_score(run, path, log),
            progress=progress,
        )
    finally:
        close_run(out_dir)
    return out_dir / MODEL_FILE
