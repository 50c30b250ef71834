"""Training and sampling throughput of the ``unet-mnist`` preset on one device (the GPU path).

Measured, on synthetic 28x28 images (the networks, not data loading):

* training images/s of one full step (denoising loss, backward, fused ``AdamW.step``) at batch
  128, in fp32, under bf16 autocast, under bf16 autocast with channels_last, and (``--compile``)
  bf16 with ``torch.compile``;
* DDIM-50 sampling (eta = 0) of 64 images in fp32 and under bf16 autocast, in seconds.

``scripts/gpu_check.sh`` runs it on a GPU machine (``--device cuda``) together with the suite's
device tests and writes one JSON file; ``--quick`` is a smoke test of a few tiny steps (its numbers
mean nothing) that also runs on the CPU. Every timed call ends with a device synchronisation.
"""

from __future__ import annotations

import argparse
import json
import time
import xml.etree.ElementTree as ElementTree
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from common import RESULTS_DIR, Timing, machine_info, write_json
from difflab.diffusion import Denoiser, NoiseSchedule, denoising_loss, timestep_sequence
from difflab.io.device import autocast, select_device
from difflab.models import build_model, model_config
from difflab.samplers import ddim_sample

PRESET = "unet-mnist"


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device, warmup: int, repeats: int) -> Timing:
    """Seconds per call of ``fn`` after ``warmup`` untimed calls, synchronised on ``device``."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        synchronize(device)
        samples.append(time.perf_counter() - start)
    return Timing.from_samples(samples)


def training_step(
    device: torch.device, batch: int, *, bf16: bool, channels_last: bool, compile: bool
) -> Callable[[], None]:
    """One optimizer step of a fresh ``unet-mnist`` on a fixed synthetic batch."""
    torch.manual_seed(0)
    net = build_model(*model_config(PRESET)).to(device)
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    model = torch.compile(net) if compile else net
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-4, fused=True)
    schedule = NoiseSchedule.from_name("linear", 1000)
    x0 = torch.rand(batch, 1, 28, 28, device=device) * 2 - 1  # (B, 1, 28, 28)
    generator = torch.Generator().manual_seed(0)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with autocast(bf16, device):
            loss = denoising_loss(model, schedule, x0, generator=generator)
        loss.backward()
        optimizer.step()

    return step


def sampling_run(device: torch.device, count: int, steps: int, bf16: bool) -> Callable[[], None]:
    torch.manual_seed(0)
    net = build_model(*model_config(PRESET)).to(device).eval()
    denoiser = Denoiser(net, NoiseSchedule.from_name("linear", 1000))
    x_T = torch.randn(count, 1, 28, 28, generator=torch.Generator().manual_seed(0)).to(device)
    timesteps = timestep_sequence(1000, steps)

    @torch.no_grad()
    def run() -> None:
        with autocast(bf16, device):
            ddim_sample(denoiser, x_T, timesteps, eta=0.0)

    return run


def test_summary(junit: Path | None) -> dict[str, Any] | None:
    """Counts from a pytest ``--junitxml`` report (None when there is none)."""
    if junit is None or not junit.exists():
        return None
    suite = ElementTree.parse(junit).getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    counts = {key: int(suite.get(key, 0)) for key in ("tests", "failures", "errors", "skipped")}
    failed = [
        f"{case.get('classname')}::{case.get('name')}"
        for case in suite.iter("testcase")
        if case.find("failure") is not None or case.find("error") is not None
    ]
    return {
        **counts,
        "passed": counts["tests"] - sum(counts[k] for k in counts if k != "tests"),
        "failed": failed,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--quick", action="store_true", help="a smoke test: tiny sizes, 1 repeat")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile (slow)")
    parser.add_argument("--junit", type=Path, default=None, help="pytest report to include")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "gpu_throughput.json")
    args = parser.parse_args()
    device = select_device(args.device)
    batch, count, steps = (8, 4, 2) if args.quick else (128, 64, 50)
    warmup, repeats = (1, 1) if args.quick else (3, 10)
    variants = {
        "fp32": dict(bf16=False, channels_last=False, compile=False),
        "bf16": dict(bf16=True, channels_last=False, compile=False),
        "bf16_channels_last": dict(bf16=True, channels_last=True, compile=False),
    }
    if args.compile:
        variants["bf16_compile"] = dict(bf16=True, channels_last=False, compile=True)
    training = {}
    for name, options in variants.items():
        timing = timed(training_step(device, batch, **options), device, warmup, repeats)
        training[name] = {"images_per_s": batch / timing.median, "step_s": timing.as_dict()}
        print(f"train {name}: {batch / timing.median:.0f} images/s", flush=True)
    sampling = {}
    for name, bf16 in (("fp32", False), ("bf16", True)):
        timing = timed(sampling_run(device, count, steps, bf16), device, 1, 1 if args.quick else 3)
        sampling[name] = {"seconds": timing.median, "runs": timing.as_dict()}
        print(f"DDIM-{steps} of {count} images {name}: {timing.median:.2f} s", flush=True)
    report = {
        "benchmark": "gpu_throughput",
        "preset": PRESET,
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "quick": args.quick,
        "training": {"batch": batch, **training},
        "sampling": {"images": count, "steps": steps, **sampling},
        "tests": test_summary(args.junit),
        "machine": machine_info(),
    }
    write_json(args.out, report)
    print(json.dumps({"wrote": str(args.out)}))


if __name__ == "__main__":
    main()
