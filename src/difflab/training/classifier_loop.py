"""Training the noisy classifier p_φ(y | x_t) of classifier guidance (Dhariwal & Nichol 2021, sec. 4).

Every image of a mini-batch gets its own ``t ~ U{0..T-1}`` and ``eps ~ N(0, I)``; the classifier
sees ``x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps`` (the forward process of the
``diffusion`` section, which must be the one of the model it will guide) and minimises the
cross-entropy ``-log p_φ(y | x_t)``. The optimisation is that of :mod:`difflab.training.loop`:
AdamW with linear warm-up, gradient accumulation and clipping, optional bf16 autocast, EMA
weights, JSONL metrics and atomic checkpoints from which ``resume=True`` continues bit for bit,
and data-parallel training under torchrun.

A ``kind: classifier`` config uses the sections as a diffusion config does, except that
``model.preset`` names a classifier preset (:data:`~difflab.models.classifier.CLASSIFIER_PRESETS`),
``train.label_dropout`` must be 0, and ``train.sample_every`` / ``train.sample_steps`` are unused.
At the end the EMA classifier's accuracy on held-out images (the test split, at most
:data:`EVAL_IMAGES`, or ``data.limit``) is measured at :data:`EVAL_TIMESTEPS` noise levels and written to
``accuracy_vs_t.json`` and into the model checkpoint's metadata.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from difflab.config import ExperimentConfig
from difflab.data import load_configured_split
from difflab.diffusion import NoiseSchedule, draw_noise
from difflab.diffusion.schedule import schedule_from_config
from difflab.errors import DifflabError
from difflab.io.atomic import atomic_path
from difflab.io.process_group import SINGLE, Distributed
from difflab.models.classifier import (
    CLASSIFIER_ARCH,
    CLASSIFIER_KIND,
    NoisyClassifier,
    classifier_config,
)
from difflab.training.data_order import BatchStream
from difflab.training.ema import EMA
from difflab.training.loop import build_optimizer, check_train_config
from difflab.training.state import (
    MODEL_FILE,
    ResumableRun,
    open_run,
    restore_run_state,
    run_meta,
    save_run_state,
)
from difflab.training.update import run_training

ACCURACY_FILE = "accuracy_vs_t.json"
EVAL_IMAGES = 1000  # held-out images of the final accuracy-vs-t table
EVAL_TIMESTEPS = 10  # noise levels of that table, evenly spaced over 0..T-1
EVAL_BATCH = 500
EVAL_SEED = 0


@dataclasses.dataclass(kw_only=True)
class ClassifierRun(ResumableRun):
    """Everything a classifier training run holds in memory (``net`` is a NoisyClassifier)."""

    schedule: NoiseSchedule


def build_classifier_run(config: ExperimentConfig) -> ClassifierRun:
    """Load the labelled data and build classifier, schedule, EMA and optimizer from a config."""
    if config.kind != CLASSIFIER_KIND:
        raise DifflabError(
            f"a noisy classifier is trained from a 'kind: {CLASSIFIER_KIND}' config, not "
            f"'kind: {config.kind}'."
        )
    dataset = load_configured_split(config.data, "train")
    if dataset.num_classes == 0:
        raise DifflabError(
            f"dataset {dataset.name!r} has no labels, so a classifier cannot be trained on it; "
            "use a labelled dataset (mnist, fashion-mnist, digits, or a folder of class folders)."
        )
    preset, model_values = config.model_preset("classifier-mnist")
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
        schedule=schedule_from_config(config.diffusion),
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
    noise: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, int]:
    """Cross-entropy of the classifier on ``x_t ~ q(x_t | x_0)`` at a random t per image.

    Args:
        x0: (B, C, H, W) clean images in [-1, 1].
        labels: (B,) int64 classes.
        generator: draws t and eps (see :func:`~difflab.diffusion.draw_noise`), so that a run
            is reproducible.
        noise: ``(t (B,), eps (B, C, H, W))`` drawn beforehand, instead of from ``generator``.

    Returns:
        (mean cross-entropy, a scalar tensor; number of correctly classified images).
    """
    if noise is None:
        noise = draw_noise(schedule, tuple(x0.shape), generator, x0.device)
    t, eps = (value.to(x0.device) for value in noise)
    logits = net(schedule.q_sample(x0, t, eps.to(x0.dtype)), t)  # (B, K)
    correct = int((logits.argmax(1) == labels).sum())
    return F.cross_entropy(logits.float(), labels), correct


def classifier_loss(
    run: ClassifierRun, index: torch.Tensor
) -> tuple[torch.Tensor, dict[str, float]]:
    """Cross-entropy of this rank's part of the global micro-batch ``index`` (B,), and accuracy."""
    part = run.group.shard(len(index))
    x0 = run.dataset.images[index[part]].to(run.device)  # (B / world, C, H, W)
    labels = run.dataset.labels[index[part]].to(run.device)  # (B / world,)
    t, eps = draw_noise(run.schedule, (len(index), *x0.shape[1:]), run.generator)
    loss, right = noisy_classification_loss(
        run.forward_module(), run.schedule, x0, labels, noise=(t[part], eps[part])
    )
    return loss, {"accuracy": right / len(x0)}


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
    device = next(net.parameters(), images).device  # a parameter-free net runs where the images are
    rows = []
    for t in timesteps:
        correct = 0
        for start in range(0, len(images), batch_size):
            x0 = images[start : start + batch_size].to(device)  # (b, C, H, W)
            y = labels[start : start + batch_size].to(device)  # (b,)
            t_batch = torch.full((len(x0),), t, dtype=torch.long, device=device)
            eps = torch.randn(x0.shape, generator=generator, dtype=x0.dtype).to(device)
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
    test = load_configured_split(run.config.data, "test", limit)
    return accuracy_by_timestep(
        run.ema.module,
        run.schedule,
        test.images,
        test.labels,
        evaluation_timesteps(run.schedule.num_timesteps),
    )


def train_classifier(
    config: ExperimentConfig,
    *,
    resume: bool = False,
    progress: bool = True,
    device: torch.device | None = None,
    group: Distributed = SINGLE,
) -> Path:
    """Train a noisy classifier as ``config`` says; returns the path of the EMA checkpoint.

    The checkpoint (``kind: classifier``) carries ``accuracy_vs_t``, also written to
    ``train.out_dir/accuracy_vs_t.json``. ``device`` and ``group`` as for
    :func:`~difflab.training.loop.train`.
    """
    out_dir = Path(config.train.out_dir)
    run, log = open_run(
        config, resume, build_classifier_run, restore_classifier_state, device=device, group=group
    )

    def save_state(last: bool) -> None:
        if last:
            finish_classifier(run, out_dir)
        else:
            save_classifier_state(run, out_dir)

    run_training(
        run,
        log,
        lambda index: classifier_loss(run, index),
        save_state=save_state,
        progress=progress,
    )
    return out_dir / MODEL_FILE


def finish_classifier(run: ClassifierRun, out_dir: Path) -> None:
    """The held-out accuracy table, written to its JSON file and into the final checkpoint."""
    table = held_out_accuracy(run)
    with atomic_path(out_dir / ACCURACY_FILE) as tmp:
        tmp.write_text(json.dumps({"step": run.step, "accuracy_vs_t": table}, indent=2))
    save_classifier_state(run, out_dir, {"accuracy_vs_t": table})
