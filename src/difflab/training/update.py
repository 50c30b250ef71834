"""One optimizer update, the part every training loop shares.

Linear warm-up of the learning rate (then constant or cosine decay), ``grad_accum`` micro-batches drawn from the run's
:class:`~difflab.training.data_order.BatchStream` (each under bf16 autocast on the run's device
when asked; the gradient all-reduce of data-parallel training only on the last), a stop, or a
skip (``train.skip_nonfinite``), on a non-finite loss, gradient clipping, the AdamW step and the
EMA update. What a micro-batch's loss *is* comes from the caller (:data:`MicroBatchLoss`).
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from pathlib import Path

import torch

from difflab.config import TrainConfig
from difflab.errors import DifflabError
from difflab.io.device import autocast
from difflab.io.process_group import on_main
from difflab.training.distributed import no_sync
from difflab.training.progress import JsonlLog, Progress
from difflab.training.state import STATE_FILE, ResumableRun

MicroBatchLoss = Callable[[torch.Tensor], tuple[torch.Tensor, dict[str, float]]]
"""``loss(index)``: ``index`` (B,) int64 is the global micro-batch, the same on every rank of a
torchrun group; the callback returns the loss of this rank's slice ``run.group.shard(B)`` and the
named floats to log. Random draws (noise, timesteps, label dropout) are made for all B images and
then sliced, so that N processes see exactly the numbers one process would."""


def learning_rate(train: TrainConfig, step: int) -> float:
    """The learning rate of update ``step`` (0-based): linear warm-up to ``train.lr`` over
    ``warmup_steps``, then constant (``lr_decay: constant``) or a half cosine down to
    ``lr_floor * lr`` at ``train.steps`` (``lr_decay: cosine``).

    The cosine is SGDR's annealing without restarts (Loshchilov & Hutter 2017, eq. 5):
    ``lr_t = floor + (lr - floor) (1 + cos(pi p)) / 2`` with ``p`` the fraction of the
    post-warm-up updates done. A pure function of the step, so a resumed run follows it exactly.
    """
    if train.warmup_steps and step < train.warmup_steps:
        return train.lr * (step + 1) / train.warmup_steps
    if train.lr_decay == "constant":
        return train.lr
    decay_steps = max(train.steps - train.warmup_steps, 1)
    progress = min((step - train.warmup_steps) / decay_steps, 1.0)
    floor = train.lr * train.lr_floor
    return floor + (train.lr - floor) * (1 + math.cos(math.pi * progress)) / 2


def optimizer_update(
    run: ResumableRun, micro_batch_loss: MicroBatchLoss
) -> dict[str, float] | None:
    """One optimizer update of ``run`` over ``train.grad_accum`` micro-batches.

    Returns ``loss`` and the logged floats, each averaged over the micro-batches and the ranks;
    ``None`` when the loss was not finite and the batch was skipped (at most
    ``train.skip_nonfinite`` times in a run). Past that, raises with the step and the last good
    checkpoint. The step counter advances only on an update.
    """
    train = run.config.train
    for param_group in run.optimizer.param_groups:
        param_group["lr"] = learning_rate(train, run.step)
    run.optimizer.zero_grad(set_to_none=True)
    model = run.forward_module()
    totals: dict[str, float] = {}
    for micro in range(train.grad_accum):
        last = micro == train.grad_accum - 1
        with contextlib.nullcontext() if last else no_sync(model):
            with autocast(train.bf16, run.device):
                loss, logged = micro_batch_loss(run.stream.next())
            (loss / train.grad_accum).backward()
        for name, value in {"loss": loss.item(), **logged}.items():
            totals[name] = totals.get(name, 0.0) + value / train.grad_accum
    totals = dict(zip(totals, run.group.all_mean_many(list(totals.values())), strict=True))
    if not math.isfinite(totals["loss"]):
        if run.skipped < train.skip_nonfinite:
            run.skipped += 1
            run.optimizer.zero_grad(set_to_none=True)
            return None
        raise DifflabError(nonfinite_message(run, totals["loss"]))
    if train.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(run.net.parameters(), train.grad_clip)
    run.optimizer.step()
    run.ema.update(run.net)
    run.step += 1
    return totals


def nonfinite_message(run: ResumableRun, loss: float) -> str:
    """The sentence a run stops with when its loss is NaN or infinite."""
    train = run.config.train
    last = Path(train.out_dir) / STATE_FILE
    where = (
        f"the last good checkpoint is {last}" if last.exists() else "no checkpoint was written yet"
    )
    skipped = f", after skipping {run.skipped} such batches" if run.skipped else ""
    return (
        f"the loss became {loss} at step {run.step + 1}{skipped} ({where}); lower train.lr, "
        "enable train.grad_clip or raise train.skip_nonfinite, then rerun with --resume."
    )


def note_skipped(run: ResumableRun, bar: Progress, log: JsonlLog | None) -> None:
    """Report a batch skipped for its non-finite loss on the progress line and in the metrics."""
    bar.note(
        f"skipped a batch with a non-finite loss at step {run.step + 1} "
        f"({run.skipped} of at most {run.config.train.skip_nonfinite})"
    )
    if log is not None:
        log.write({"step": run.step + 1, "skipped_nonfinite": run.skipped})


def run_training(
    run: ResumableRun,
    log: JsonlLog | None,
    micro_batch_loss: MicroBatchLoss,
    *,
    save_state: Callable[[bool], None],
    save_samples: Callable[[Path], None] | None = None,
    progress: bool = True,
) -> None:
    """Update ``run`` until ``train.steps``: the loop every trainer shares.

    Logs ``loss``, the callback's named floats and the learning rate every ``log_every`` steps
    (rank 0), calls ``save_samples(path)`` every ``sample_every`` steps and ``save_state(last)``
    every ``checkpoint_every`` steps and after the last one (``last=True``), each on rank 0 while
    the other ranks wait. The updates' wall-clock and process CPU seconds add up in
    ``run.train_seconds`` / ``run.train_cpu_seconds`` (every checkpoint's JSON records them).
    """
    train = run.config.train
    out_dir = Path(train.out_dir)
    group = run.group
    bar = Progress(train.steps, run.step, enabled=progress and group.is_main)
    images_seen = 0
    run.net.train()
    while run.step < train.steps:
        wall, cpu = time.perf_counter(), time.process_time()
        logged = optimizer_update(run, micro_batch_loss)
        run.train_seconds += time.perf_counter() - wall
        run.train_cpu_seconds += time.process_time() - cpu
        images_seen += train.batch_size * train.grad_accum
        if logged is None:  # a non-finite loss, skipped (train.skip_nonfinite)
            note_skipped(run, bar, log)
            continue
        last = run.step == train.steps
        if log is not None and (run.step % train.log_every == 0 or last):
            speed = bar.update(run.step, logged["loss"], images_seen)
            lr = run.optimizer.param_groups[0]["lr"]
            log.write({"step": run.step, **logged, "lr": lr, **speed})
        if save_samples is not None and (run.step % train.sample_every == 0 or last):
            path = out_dir / "samples" / f"step_{run.step:07d}.png"
            on_main(group, lambda path=path: save_samples(path))
            run.net.train()
        if last or run.step % train.checkpoint_every == 0:
            on_main(group, lambda last=last: save_state(last))
    bar.close()
