"""One optimizer update, the part every training loop shares.

Linear warm-up of the learning rate, ``grad_accum`` micro-batches drawn from the run's
:class:`~difflab.training.data_order.BatchStream` (each under bf16 autocast when asked), a stop
with the step number on a non-finite loss, gradient clipping, the AdamW step and the EMA update.
What a micro-batch's loss *is* comes from the caller.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from difflab.errors import DifflabError
from difflab.training.state import STATE_FILE, ResumableRun

MicroBatchLoss = Callable[[torch.Tensor], tuple[torch.Tensor, dict[str, float]]]


def learning_rate(train: Any, step: int) -> float:
    """Linear warm-up to ``train.lr`` over ``warmup_steps``, then constant."""
    if train.warmup_steps and step < train.warmup_steps:
        return train.lr * (step + 1) / train.warmup_steps
    return train.lr


def autocast_context(bf16: bool) -> contextlib.AbstractContextManager:
    return torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()


def check_finite_loss(loss: float, step: int, out_dir: str) -> None:
    """Stop a run whose loss is NaN or infinite, naming the step and the last good checkpoint."""
    if math.isfinite(loss):
        return
    last = Path(out_dir) / STATE_FILE
    where = (
        f"the last good checkpoint is {last}" if last.exists() else "no checkpoint was written yet"
    )
    raise DifflabError(
        f"the loss became {loss} at step {step} ({where}); lower train.lr or enable "
        "train.grad_clip, then rerun with --resume."
    )


def optimizer_update(run: ResumableRun, micro_batch_loss: MicroBatchLoss) -> dict[str, float]:
    """One optimizer update of ``run`` over ``train.grad_accum`` micro-batches.

    ``micro_batch_loss(indices)`` gets the (B,) dataset indices of a micro-batch and returns the
    loss to minimise and the named floats to log; those are averaged over the micro-batches and
    returned with ``loss`` (the mean loss).
    """
    train = run.config.train
    for group in run.optimizer.param_groups:
        group["lr"] = learning_rate(train, run.step)
    run.optimizer.zero_grad(set_to_none=True)
    totals: dict[str, float] = {}
    for _ in range(train.grad_accum):
        with autocast_context(train.bf16):
            loss, logged = micro_batch_loss(run.stream.next())
        (loss / train.grad_accum).backward()
        for name, value in {"loss": loss.item(), **logged}.items():
            totals[name] = totals.get(name, 0.0) + value / train.grad_accum
    check_finite_loss(totals["loss"], run.step + 1, train.out_dir)
    if train.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(run.net.parameters(), train.grad_clip)
    run.optimizer.step()
    run.ema.update(run.net)
    run.step += 1
    return totals
