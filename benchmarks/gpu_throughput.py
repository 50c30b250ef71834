"""Training and sampling throughput of the ``unet-mnist`` preset on one device (the GPU path).

Measured, on synthetic 28x28 images (the networks, not data loading):

* training images/s of one full step (denoising loss, backward, fused ``AdamW.step``) at batch
  128, in fp32, under bf16 autocast, under bf16 autocast with channels_last, and (``--compile``)
  bf16 with ``torch.compile``;
* DDIM-50 sampling (eta = 0) of 64 images through ``DiffusionPipeline.generate``, in fp32 and
  bf16, in seconds.

``scripts/gpu_check.sh`` runs it on a GPU machine (``--device cuda``) together with the suite's
device tests and writes one JSON file; ``--quick`` is a smoke test of a few tiny steps (its numbers
mean nothing) that also runs on the CPU. Every timed call ends with a device synchronisation.
"""

from __future__ import annotations

import argparse
import json
import xml.etree.ElementTree as ElementTree
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

import common as bench
from difflab.diffusion import NoiseSchedule, denoising_loss
from difflab.io.device import autocast, select_device
from difflab.models import build_model, model_config

PRESET = "unet-mnist"
VARIANTS = {
    "fp32": dict(bf16=False, channels_last=False, compile=False),
    "bf16": dict(bf16=True, channels_last=False, compile=False),
    "bf16_channels_last": dict(bf16=True, channels_last=True, compile=False),
}


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


def sampling_run(device: torch.device, count: int, steps: int, bf16: bool) -> Callable[[], Any]:
    """One DDIM run of a fresh ``unet-mnist`` pipeline on ``device``."""
    torch.manual_seed(0)
    pipeline = bench.race_pipeline(
        build_model(*model_config(PRESET)).to(device), "bf16" if bf16 else "fp32"
    )
    return lambda: pipeline.generate(count, seed=0, steps=steps, eta=0.0)


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
    passed = counts["tests"] - sum(counts[k] for k in counts if k != "tests")
    return {**counts, "passed": passed, "failed": failed}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--quick", action="store_true", help="a smoke test: tiny sizes, 1 repeat")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile (slow)")
    parser.add_argument("--junit", type=Path, default=None, help="pytest report to include")
    parser.add_argument("--out", type=Path, default=bench.RESULTS_DIR / "gpu_throughput.json")
    args = parser.parse_args(argv)
    device = select_device(args.device)
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    batch, count, steps = (8, 4, 2) if args.quick else (128, 64, 50)
    warmup, repeats = (1, 1) if args.quick else (3, 10)
    variants = dict(VARIANTS)
    if args.compile:
        variants["bf16_compile"] = dict(bf16=True, channels_last=False, compile=True)
    training = {}
    for name, options in variants.items():
        step = training_step(device, batch, **options)
        timing = bench.timed(step, warmup=warmup, repeats=repeats, sync=sync)
        training[name] = {"images_per_s": batch / timing.median, "step_s": timing.as_dict()}
        print(f"train {name}: {batch / timing.median:.0f} images/s", flush=True)
    sampling = {}
    for name, bf16 in (("fp32", False), ("bf16", True)):
        run = sampling_run(device, count, steps, bf16)
        timing = bench.timed(run, warmup=1, repeats=1 if args.quick else 3, sync=sync)
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
        "machine": bench.machine_info(),
    }
    bench.write_json(args.out, report)
    print(json.dumps({"wrote": str(args.out)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
