"""Which device a command runs on (``--device auto|cpu|cuda``) and how bf16 autocast is entered there."""

from __future__ import annotations

import contextlib
import functools
from pathlib import Path

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


BF16_SETTINGS = (True, False, "auto")
"""``train.bf16``: always, never, or ``"auto"``: where the hardware computes bf16 natively."""


@functools.lru_cache(maxsize=1)
def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bf16 natively (AVX-512 BF16 or AMX). Without it (AVX2 only,
    or AVX-512 without BF16) PyTorch emulates bf16, about 10x slower than fp32."""
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:  # not Linux: trust PyTorch's kernel choice
        return "AMX" in torch.backends.cpu.get_cpu_capability()
    return "avx512_bf16" in flags or "amx_bf16" in flags


def bf16_enabled(setting: bool | str, device: torch.device) -> bool:
    """Resolve a ``train.bf16`` setting on ``device``: ``"auto"`` is on where bf16 is native
    (CUDA GPUs that support it, CPUs with AVX-512 BF16 or AMX)."""
    if setting not in BF16_SETTINGS:
        raise DifflabError(f"train.bf16 must be true, false or auto, got {setting!r}.")
    if setting != "auto":
        return bool(setting)
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and cpu_has_native_bf16()


def autocast(
    setting: bool | str, device: torch.device
) -> contextlib.AbstractContextManager[object]:
    """bf16 autocast on ``device``'s type when ``setting`` asks for it (:func:`bf16_enabled`),
    else nothing."""
    if not bf16_enabled(setting, device):
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)
