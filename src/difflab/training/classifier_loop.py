"""Training the noisy classifier p_φ(y | x_t) of classifier guidance (Dhariwal & Nichol 2021, sec. 4).

Every image of a mini-batch gets its own ``t ~ U{0..T-1}`` and ``eps ~ N(0, I)``; the classifier
sees ``x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps`` (the forward process of the
``diffusion`` section, which must be the one of the model it will guide) and minimises the
cross-entropy ``-log p_φ(y | x_t)``. The optimisation is that of :mod:`difflab.training.loop`:
AdamW with linear warm-up, gradient accumulation and clipping, optional bf16 autocast, EMA
weights, JSONL metrics and atomic checkpoints from which ``resume=True`` continues bit for bit.

A ``kind: classifier`` config uses the sections as a diffusion config does, except that
``model.preset`` names a classifier preset (:data:`~difflab.models.classifier.CLASSIFIER_PRESETS`),
``train.label_dropout`` must be 0, and ``train.sample_every`` / ``train.sample_steps`` are unused.
At the end the EMA classifier's accuracy on held-out images (the test split, at most
:data:`EVAL_IMAGES`, or ``data.limit``) is measured at :data:`EVAL_TIMESTEPS` noise levels and written to
``accuracy_vs_t.json`` and into the model checkpoint's metadata.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from difflab.config import ExperimentConfig
from difflab.data import ImageDataset, load_configured_split
from difflab.diffusion import NoiseSchedule
from difflab.errors import DifflabError
from difflab.models.classifier import (
    CLASSIFIER_ARCH,
    CLASSIFIER_KIND,
    NoisyClassifier,
    classifier_config,
)
from difflab.training.data_order import BatchStream
from difflab.training.ema import EMA
from difflab.training.loop import (
    build_optimizer,
    build_schedule,
    check_train_config,
    learning_rate,
)
from difflab.training.progress import Progress
from difflab.training.state import (
    MODEL_FILE,
    open_run,
    restore_run_state,
    run_meta,
    save_run_state,
)
from difflab.utils.atomic import atomic_path

ACCURACY_FILE = "accuracy_vs_t.json"
EVAL_IMAGES = 1000  # held-out images of the final accuracy-vs-t table
EVAL_TIMESTEPS = 10  # noise levels of that table, evenly spaced over 0..T-1
EVAL_BATCH = 500
EVAL_SEED = 0


@dataclasses.dataclass
class ClassifierRun:
    """Everything a classifier training run holds in memory."""

    config: ExperimentConfig
    dataset: ImageDataset
    net: NoisyClassifier
    schedule: NoiseSchedule
    ema: EMA
    optimizer: torch.optim.Optimizer
    stream: BatchStream
    generator: torch.Generator
    step: int = 0


def _load_split(config: ExperimentConfig, split: str, limit: int | None) -> ImageDataset:
    return load_configured_split(config.data, split, limit)


def build_classifier_run(config: ExperimentConfig) -> ClassifierRun:
    """Load the labelled data and build classifier, schedule, EMA and optimizer from a config."""
    if config.kind != CLASSIFIER_KIND:
        raise DifflabError(
            f"a noisy classifier is trained from a 'kind: {CLASSIFIER_KIND}' config, not "
            f"'kind: {config.kind}'."
        )
    dataset = _load_split(config, "train", config.data.limit)
    if dataset.num_classes == 0:
        raise DifflabError(
            f"dataset {dataset.name!r} has no labels, so a classifier cannot be trained on it; "
            "use a labelled dataset (mnist, fashion-mnist, digits, or a folder of class folders)."
        )
    model_values = dict(config.model)
    preset = model_values.pop("preset", None)
    if preset is None:
        raise DifflabError(
            "config section 'model' needs a 'preset' (e.g. classifier-mnist) for a classifier."
        )
    model_values.setdefault("image_size", dataset.image_size)
    model_values.setdefault("in_channels", dataset.channels)
    model_values.setdefault("num_classes", dataset.num_classes)
    net_config = classifier_config(preset, **model_values)
    if net_config.num_classes != dataset.num_classes:
        raise DifflabError(
            f"model.num_classes is {net_config.num_classes} but dataset {dataset.name!r} has "
            f"{dataset.num_classes} classes; remove model.num_classes."
        )
    train = config.train
    check_train_config(train, net_config)
    if train.label_dropout:
        raise DifflabError(
            "train.label_dropout applies to class-conditional diffusion models, not to a "
            "classifier; remove it from the config."
        )
    torch.manual_seed(train.seed)
    net = NoisyClassifier(net_config)
    return ClassifierRun(
        config=config,
        dataset=dataset,
        net=net,
        schedule=build_schedule(config.diffusion),
        ema=EMA(net, train.ema_decay),
        optimizer=build_optimizer(net, train),
        stream=BatchStream(len(dataset), train.batch_size, train.seed),
        generator=torch.Generator().manual_seed(train.seed + 1),
    )


def noisy_classification_loss(
    net: NoisyClassifier,
    schedule: NoiseSchedule,
    x0: torch.Tensor,
    labels: torch.Tensor,
    *,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, int]:
    """Cross-entropy of the classifier on ``x_t ~ q(x_t | x_0)`` at a random t per image.

    Args:
        x0: (B, C, H, W) clean images in [-1, 1].
        labels: (B,) int64 classes.
        generator: draws t and eps, so that a run is reproducible.

    Returns:
        (mean cross-entropy, a scalar tensor; number of correctly classified images).
    """
    batch = x0.shape[0]
    t = torch.randint(0, schedule.num_timesteps, (batch,), generator=generator, device=x0.device)
    eps = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
    logits = net(schedule.q_sample(x0, t, eps), t)  # (B, K)
    correct = int((logits.argmax(1) == labels).sum())
    return F.cross_entropy(logits.float(), labels), correct


def train_classifier_step(run: ClassifierRun) -> tuple[float, float]:
    """One optimizer update over ``grad_accum`` micro-batches; (mean loss, training accuracy)."""
    train = run.config.train
    for group in run.optimizer.param_groups:
        group["lr"] = learning_rate(train, run.step)
    run.optimizer.zero_grad(set_to_none=True)
    total, correct = 0.0, 0
    for _ in range(train.grad_accum):
        index = run.stream.next()
        x0, labels = run.dataset.images[index], run.dataset.labels[index]  # (B, C, H, W), (B,)
        autocast = (
            torch.autocast("cpu", dtype=torch.bfloat16) if train.bf16 else contextlib.nullcontext()
        )
        with autocast:
            loss, right = noisy_classification_loss(
                run.net, run.schedule, x0, labels, generator=run.generator
            )
        (loss / train.grad_accum).backward()
        total += loss.item()
        correct += right
    mean_loss = total / train.grad_accum
    if not math.isfinite(mean_loss):
        raise DifflabError(
            f"the loss became {mean_loss} at step {run.step + 1}; lower train.lr or enable "
            "train.grad_clip, then rerun with --resume."
        )
    if train.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(run.net.parameters(), train.grad_clip)
    run.optimizer.step()
    run.ema.update(run.net)
    run.step += 1
    return mean_loss, correct / (train.batch_size * train.grad_accum)


def evaluation_timesteps(num_timesteps: int, count: int = EVAL_TIMESTEPS) -> list[int]:
    """``count`` timesteps evenly spaced over ``0 .. T-1`` (both ends included, no repeats)."""
    values = torch.linspace(0, num_timesteps - 1, count).round().long().unique()
    return [int(t) for t in values]


@torch.no_grad()
def accuracy_by_timestep(
    net: NoisyClassifier,
    schedule: NoiseSchedule,
    images: torch.Tensor,
    labels: torch.Tensor,
    timesteps: list[int],
    *,
    batch_size: int = EVAL_BATCH,
    seed: int = EVAL_SEED,
) -> list[dict[str, float]]:
    """Top-1 accuracy of ``net`` on ``x_t`` of ``images`` (N, C, H, W) at each of ``timesteps``.

    The noise is drawn from a generator seeded with ``seed``, so a table is reproducible.

    Returns:
        ``[{"t": t, "alpha_bar": alpha_bar_t, "accuracy": fraction correct}, ...]``.
    """
    was_training = net.training
    net.eval()
    generator = torch.Generator().manual_seed(seed)
    rows = []
    for t in timesteps:
        correct = 0
        for start in range(0, len(images), batch_size):
            x0, y = images[start : start + batch_size], labels[start : start + batch_size]
            t_batch = torch.full((len(x0),), t, dtype=torch.long)
            eps = torch.randn(x0.shape, generator=generator, dtype=x0.dtype)
            logits = net(schedule.q_sample(x0, t_batch, eps), t_batch)  # (b, K)
            correct += int((logits.argmax(1) == y).sum())
        rows.append(
            {
                "t": t,
                "alpha_bar": float(schedule.alpha_bar[t]),
                "accuracy": correct / max(len(images), 1),
            }
        )
    net.train(was_training)
    return rows


def classifier_meta(run: ClassifierRun) -> dict[str, Any]:
    """The JSON that describes the classifier of a run (stored in every checkpoint it writes)."""
    return run_meta(run, CLASSIFIER_KIND, CLASSIFIER_ARCH)


def save_classifier_state(
    run: ClassifierRun, out_dir: Path, extra_meta: dict[str, Any] | None = None
) -> None:
    """Full state for ``resume`` (checkpoints/last.safetensors) and EMA weights (model.safetensors)."""
    save_run_state(
        run, out_dir, classifier_meta(run), {**classifier_meta(run), **(extra_meta or {})}
    )


def restore_classifier_state(run: ClassifierRun, path: Path) -> None:
    """Put model, EMA, optimizer, data order and RNG states back as ``path`` recorded them."""
    restore_run_state(run, path, CLASSIFIER_KIND, classifier_meta(run))


def held_out_accuracy(run: ClassifierRun) -> list[dict[str, float]]:
    """The EMA classifier's accuracy-vs-t table on the test split.

    Uses the first EVAL_IMAGES test images, or fewer when ``data.limit`` is smaller.
    """
    limit = min(EVAL_IMAGES, run.config.data.limit or EVAL_IMAGES)
    test = _load_split(run.config, "test", limit)
    return accuracy_by_timestep(
        run.ema.module,
        run.schedule,
        test.images,
        test.labels,
        evaluation_timesteps(run.schedule.num_timesteps),
    )


def train_classifier(
    config: ExperimentConfig, *, resume: bool = False, progress: bool = True
) -> Path:
    """Train a noisy classifier as ``config`` says; returns the path of the EMA checkpoint.

    The checkpoint (``kind: classifier``) carries ``accuracy_vs_t``, also written to
    ``train.out_dir/accuracy_vs_t.json``.
    """
    out_dir = Path(config.train.out_dir)
    run, log = open_run(config, resume, build_classifier_run, restore_classifier_state)
    train_cfg = config.train
    bar = Progress(train_cfg.steps, run.step, enabled=progress)
    images_seen = 0
    run.net.train()
    while run.step < train_cfg.steps:
        loss, accuracy = train_classifier_step(run)
        images_seen += train_cfg.batch_size * train_cfg.grad_accum
        last = run.step == train_cfg.steps
        if run.step % train_cfg.log_every == 0 or last:
            speed = bar.update(run.step, loss, images_seen)
            log.write(
                {
                    "step": run.step,
                    "loss": loss,
                    "accuracy": accuracy,
                    "lr": run.optimizer.param_groups[0]["lr"],
                    **speed,
                }
            )
        if last:
            table = held_out_accuracy(run)
            with atomic_path(out_dir / ACCURACY_FILE) as tmp:
                tmp.write_text(json.dumps({"step": run.step, "accuracy_vs_t": table}, indent=2))
            save_classifier_state(run, out_dir, {"accuracy_vs_t": table})
        elif run.step % train_cfg.checkpoint_every == 0:
            save_classifier_state(run, out_dir)
    bar.close()
    return out_dir / MODEL_FILE
