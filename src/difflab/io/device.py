"""Which device a command runs on (``--device auto|cpu|cuda``) and how bf16 autocast is entered there."""

from __future__ import annotations

import contextlib

import torch

from difflab.errors import DifflabError

DEVICE_CHOICES: tuple[str, ...] = ("auto", "cpu", "cuda")


def select_device(name: str = "auto", local_rank: int = 0) -> torch.device:
    """``"auto"``: the GPU when CUDA is available, else the CPU; ``"cuda"`` insists on a GPU.

    ``local_rank`` picks the GPU of this process when torchrun starts several on one machine.
    """
    if name not in DEVICE_CHOICES:
        raise DifflabError(f"unknown device {name!r}; choose one of {', '.join(DEVICE_CHOICES)}.")
    if name == "cpu" or (name == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise DifflabError(
            "--device cuda was asked for, but this PyTorch build sees no CUDA GPU; use "
            "--device cpu (or auto), or install a CUDA build of PyTorch on a GPU machine."
        )
    if local_rank >= torch.cuda.device_count():
        raise DifflabError(
            f"process {local_rank} on this machine needs GPU {local_rank}, but only "
            f"{torch.cuda.device_count()} are visible; start at most that many processes per node."
        )
    return torch.device("cuda", local_rank)


def autocast(enabled: bool, device: torch.device) -> contextlib.AbstractContextManager[object]:
    """bf16 autocast on ``device``'s type when ``enabled``, else nothing."""
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)
