"""What every training loop does the same way: open a run, and take one optimizer update.

:func:`open_run` checks the output folder, builds the run, restores it on ``--resume``, puts it on
its device and wraps it for data-parallel training; :func:`optimizer_update` runs ``grad_accum``
micro-batches (the gradient all-reduce only on the last), stops or skips on a non-finite loss,
clips, steps AdamW and updates the EMA. A loop supplies only its loss (:data:`MicroLoss`).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import torch

from difflab.config import config_to_dict
from difflab.errors import DifflabError
from difflab.training.distributed import (
    SINGLE,
    Distributed,
    check_same_config,
    data_parallel,
    no_sync,
    on_main,
    rank_seed,
)
from difflab.training.progress import JsonlLog, Progress
from difflab.training.state import (
    STATE_FILE,
    ResumableRun,
    check_output_dir,
    remove_empty_folders,
    resume_path,
    trim_log,
)
from difflab.utils.atomic import remove_temporaries
from difflab.utils.device import autocast

RunT = TypeVar("RunT", bound=ResumableRun)

MicroLoss = Callable[[torch.Tensor, slice], torch.Tensor]
"""``loss(index, part)``: ``index`` (B,) int64 holds the global micro-batch (the same on every
rank), ``part`` this rank's slice of it; returns the scalar loss of this rank's images. Random
draws (noise, timesteps, label dropout) are made for all B images and then sliced with ``part``,
so that N processes see exactly the numbers one process would."""


def open_run(
    config: Any,
    resume: bool,
    build: Callable[[Any], RunT],
    restore: Callable[[RunT, Path], None],
    *,
    device: torch.device | None = None,
    group: Distributed = SINGLE,
) -> tuple[RunT, JsonlLog | None]:
    """Check ``train.out_dir``, build the run, restore it when resuming, and ready it to train.

    Every rank must be given the same config (checked first). Rank 0 checks the folder for writing
    and for a run it would overwrite before any data is loaded; on resume every rank reads the same
    state file, and metric lines written after that checkpoint are dropped so the log continues
    where the state does. Returns the run and, on rank 0, its metrics log (``None`` elsewhere).
    """
    device = device or torch.device("cpu")
    check_same_config(group, config_to_dict(config))
    train = config.train
    group.shard(train.batch_size)  # a global batch that does not split is refused before any work
    out_dir = Path(config.train.out_dir)

    def check_folder() -> tuple[Path | None, Path | None]:
        created = check_output_dir(out_dir)
        try:
            state = resume_path(out_dir, resume)
        except DifflabError:
            if created is not None:
                remove_empty_folders(created)
            raise
        remove_temporaries(out_dir)  # what a killed run was writing; its files before are whole
        return state, created

    state_path, created = on_main(group, check_folder)
    try:
        run = build(config)
        run.device, run.group = device, group
        for module in (run.net, run.ema.module):  # before restoring: optimizer state follows
            module.to(device)
            if train.channels_last:
                module.to(memory_format=torch.channels_last)
        if state_path is not None:
            restore(run, state_path)
    except BaseException:  # bad data or a bad state file: leave no empty run folder behind
        if created is not None and group.is_main:
            remove_empty_folders(created)
        raise
    steps = group.gather(run.step)
    if len(set(steps)) > 1:
        raise DifflabError(
            f"the ranks resumed from different steps ({steps}); train.out_dir must be one folder "
            "that every machine sees (a shared file system)."
        )
    if group.rank:  # rank 0 keeps the resumed RNG stream; the others draw their own dropout masks
        torch.manual_seed(rank_seed(train.seed, group.rank, run.step))
    model = data_parallel(run.net, group, device)
    run.model = torch.compile(model) if train.compile else model
    log = None
    if group.is_main:
        log = JsonlLog(out_dir / "metrics.jsonl")
        trim_log(log.path, run.step)  # lines a killed run wrote after its last checkpoint
    return run, log


def learning_rate(train: Any, step: int) -> float:
    """Linear warm-up to ``train.lr`` over ``warmup_steps``, then constant."""
    if train.warmup_steps and step < train.warmup_steps:
        return train.lr * (step + 1) / train.warmup_steps
    return train.lr


def optimizer_update(run: ResumableRun, micro_loss: MicroLoss) -> float | None:
    """One optimizer update over ``grad_accum`` micro-batches; the mean loss over all ranks.

    Returns ``None`` when the loss was not finite and the batch was skipped (at most
    ``train.skip_nonfinite`` times in a run); past that, raises with the step and the last good
    checkpoint. The step counter advances only on an update.
    """
    train = run.config.train
    for param_group in run.optimizer.param_groups:
        param_group["lr"] = learning_rate(train, run.step)
    run.optimizer.zero_grad(set_to_none=True)
    part = run.group.shard(train.batch_size)
    model = run.forward_module()
    total = 0.0
    for micro in range(train.grad_accum):
        index = run.stream.next()  # (B,) the global micro-batch
        last = micro == train.grad_accum - 1
        with contextlib.nullcontext() if last else no_sync(model):
            with autocast(train.bf16, run.device):
                loss = micro_loss(index, part)
            (loss / train.grad_accum).backward()
        total += loss.item()
    mean_loss = run.group.all_mean(total / train.grad_accum)
    if not math.isfinite(mean_loss):
        if run.skipped < train.skip_nonfinite:
            run.skipped += 1
            run.optimizer.zero_grad(set_to_none=True)
            return None
        raise DifflabError(nonfinite_message(run, mean_loss))
    if train.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(run.net.parameters(), train.grad_clip)
    run.optimizer.step()
    run.ema.update(run.net)
    run.step += 1
    return mean_loss


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


def main_only(run: ResumableRun, action: Callable[[], object]) -> None:
    """Run ``action`` (a checkpoint, a sample grid) on rank 0 while the other ranks wait."""
    on_main(run.group, action)


def note_skipped(run: ResumableRun, bar: Progress, log: JsonlLog | None) -> None:
    """Report a batch skipped for its non-finite loss on the progress line and in the metrics."""
    bar.note(
        f"skipped a batch with a non-finite loss at step {run.step + 1} "
        f"({run.skipped} of at most {run.config.train.skip_nonfinite})"
    )
    if log is not None:
        log.write({"step": run.step + 1, "skipped_nonfinite": run.skipped})
