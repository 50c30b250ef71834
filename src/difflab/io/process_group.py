"""Processes and machines working as one group (torchrun), for training, sampling and evaluation.

``torchrun --nproc_per_node N -m difflab train CONFIG`` starts N processes and sets ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT`` in each; :func:`process_group`
reads them and joins the processes in one group (gloo on the CPU, nccl on CUDA). A process that
torchrun did not start gets :data:`SINGLE`, and every helper here then does nothing: a
single-process run is exactly what it was before distributed training existed.

How training splits the work (see :mod:`difflab.training.update`): every rank draws the same global
mini-batch of ``train.batch_size`` indices, and the noise for all of it, from generators seeded
alike, and trains on its contiguous slice of ``batch_size / world_size`` images; DDP averages the
gradients, so N processes with global batch B take the steps one process with batch B takes.
Rank 0 alone writes checkpoints, sample grids and metrics.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import hashlib
import json
import os
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from difflab.errors import DifflabError

TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK")
TIMEOUT = datetime.timedelta(minutes=30)  # how long a rank waits for the others at a collective

T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class Distributed:
    """This process's place in the group: ``rank`` of ``world_size``, on ``device``."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def active(self) -> bool:
        """True when there is a process group to talk to (more than one process)."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that writes files and prints progress."""
        return self.rank == 0

    def shard(self, batch: int) -> slice:
        """This rank's contiguous part of a global batch of ``batch`` items."""
        if batch % self.world_size:
            raise DifflabError(
                f"a global batch of {batch} does not split evenly over {self.world_size} "
                f"processes; make train.batch_size a multiple of {self.world_size}."
            )
        size = batch // self.world_size
        return slice(self.rank * size, (self.rank + 1) * size)

    def portion(self, count: int) -> slice:
        """This rank's contiguous share of ``count`` items; the first ``count % world`` get one more."""
        base, extra = divmod(count, self.world_size)
        start = self.rank * base + min(self.rank, extra)
        return slice(start, start + base + (self.rank < extra))

    def all_mean(self, value: float) -> float:
        """The mean of ``value`` over all ranks (the value itself in a single process)."""
        return self.all_mean_many([value])[0]

    def all_mean_many(self, values: list[float]) -> list[float]:
        """The mean over all ranks of each of ``values``, in one all-reduce."""
        if not self.active:
            return values
        total = torch.tensor(values, dtype=torch.float64, device=_collective_device())
        dist.all_reduce(total)
        return (total / self.world_size).tolist()

    def gather(self, value: T) -> list[T]:
        """Every rank's ``value`` (any picklable object the ranks made themselves), in rank order."""
        if not self.active:
            return [value]
        values: list[Any] = [None] * self.world_size
        dist.all_gather_object(values, value)
        return values

    def from_main(self, value: T) -> T:
        """Rank 0's ``value`` on every rank."""
        if not self.active:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        if self.active:
            dist.barrier()


SINGLE = Distributed()


def _collective_device() -> torch.device:
    """Where tensors for collectives live: the current GPU under nccl, else the CPU."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def launched_by_torchrun() -> bool:
    return all(name in os.environ for name in TORCHRUN_VARIABLES)


def current() -> Distributed:
    """The group this process belongs to (:data:`SINGLE` when there is none)."""
    if not (dist.is_available() and dist.is_initialized()):
        return SINGLE
    return Distributed(
        dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0"))
    )


@contextlib.contextmanager
def process_group(device_type: str) -> Iterator[Distributed]:
    """Join the torchrun group for the body (gloo for ``"cpu"``, nccl for ``"cuda"``), then leave it.

    Outside torchrun, or with a world of one, no group is created and :data:`SINGLE` is yielded.
    """
    if not launched_by_torchrun() or int(os.environ["WORLD_SIZE"]) == 1 or dist.is_initialized():
        yield current()
        return
    if device_type == "cuda":
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    dist.init_process_group("nccl" if device_type == "cuda" else "gloo", timeout=TIMEOUT)
    try:
        yield current()
        dist.barrier()  # no rank tears the group down while another still talks to it
    finally:
        dist.destroy_process_group()


def config_fingerprint(config: dict[str, Any]) -> str:
    """A short hash of a JSON-ready config dict, equal on ranks whose configs are equal."""
    text = json.dumps(config, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def check_same_config(group: Distributed, config: dict[str, Any]) -> None:
    """Raise on every rank if any rank was given a config different from rank 0's."""
    prints = group.gather(config_fingerprint(config))
    differ = [rank for rank, value in enumerate(prints) if value != prints[0]]
    if differ:
        raise DifflabError(
            f"rank {differ[0]} was given a different config than rank 0 (fingerprint "
            f"{prints[differ[0]]} vs {prints[0]}); start every process with the same config "
            "file and overrides."
        )


def on_main(group: Distributed, action: Callable[[], T]) -> T:
    """Run ``action`` on rank 0 only and hand its result to every rank.

    A :class:`DifflabError` (or an OS error) raised by the action is raised on every rank, so all
    processes stop with the same sentence instead of the others waiting for rank 0 for ever.
    """
    result: Any = None
    failure: str | None = None
    if group.is_main:
        try:
            result = action()
        except DifflabError as error:
            if not group.active:
                raise
            failure = str(error)
    result, failure = group.from_main((result, failure))
    if failure is not None:
        raise DifflabError(failure)
    return result


def rank_seed(seed: int, rank: int, step: int) -> int:
    """Seed of rank ``rank``'s global RNG (dropout) from ``step`` on; rank 0 keeps ``seed``'s stream."""
    return (seed * 1_000_003 + rank * 7_919 + step) % (2**63)
