"""Gradient averaging for data-parallel training: PyTorch's DDP behind the network contract.

The process group itself (ranks, collectives, ``process_group``) lives in
:mod:`difflab.io.process_group`, below training, because sampling and evaluation use it too.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel

from difflab.io.process_group import Distributed


class DataParallel(DistributedDataParallel):
    """DDP that still answers for the network contract (``prediction``, ``config``, ...)."""

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.module, name)


def data_parallel(
    net: torch.nn.Module, group: Distributed, device: torch.device
) -> torch.nn.Module:
    """``net`` wrapped for gradient averaging across ``group`` (``net`` itself in one process)."""
    if not group.active:
        return net
    device_ids = [device.index] if device.type == "cuda" else None
    return DataParallel(net, device_ids=device_ids)


def no_sync(model: torch.nn.Module) -> contextlib.AbstractContextManager[Any]:
    """Skip the gradient all-reduce of this backward (an accumulation micro-step)."""
    model = getattr(model, "_orig_mod", model)  # what torch.compile wrapped
    if isinstance(model, DistributedDataParallel):
        return model.no_sync()
    return contextlib.nullcontext()
