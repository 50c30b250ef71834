"""``difflab sample``, ``difflab invert`` and ``difflab interpolate``."""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import torch

from difflab.cli.common import (
    add_device_argument,
    add_guidance_arguments,
    add_sampling_arguments,
    guidance_from_args,
    parse_labels,
)
from difflab.data import load_dataset
from difflab.errors import DifflabError
from difflab.pipelines import load_diffusion_model
from difflab.training.distributed import Distributed, process_group, rank_seed
from difflab.utils.device import select_device
from difflab.utils.images import save_grid, save_images


def register(subparsers: argparse._SubParsersAction) -> None:
    sample = subparsers.add_parser("sample", help="generate images from a checkpoint")
    sample.add_argument("checkpoint")
    add_sampling_arguments(sample)
    sample.add_argument(
        "--n",
        "--num-samples",
        dest="n",
        type=int,
        default=64,
        help="number of images (under torchrun write --num-samples: torchrun takes --n as an "
        "abbreviation of its own options)",
    )
    sample.add_argument("--label", type=int, default=None, help="class label for every image")
    sample.add_argument("--labels", default=None, help="comma-separated labels (cycled), or 'all'")
    add_guidance_arguments(sample)
    sample.add_argument("--out", default="outputs/samples.png", help="PNG grid to write")
    sample.add_argument("--out-dir", default=None, help="also write each image as its own PNG here")
    add_device_argument(sample)
    sample.set_defaults(handler=run_sample)

    invert = subparsers.add_parser(
        "invert", help="DDIM-invert dataset images to noise and reconstruct them"
    )
    invert.add_argument("checkpoint")
    add_sampling_arguments(invert, with_sampler=False)
    invert.add_argument("--data", default="mnist", help="dataset name or image folder")
    invert.add_argument("--data-dir", default=None)
    invert.add_argument("--n", type=int, default=8)
    invert.add_argument(
        "--out", default="outputs/inversion.png", help="grid: originals, noises, reconstructions"
    )
    add_device_argument(invert)
    invert.set_defaults(handler=run_invert)

    interp = subparsers.add_parser("interpolate", help="decode a spherical path between two noises")
    interp.add_argument("checkpoint")
    add_sampling_arguments(interp, with_sampler=False)
    interp.add_argument(
        "--seed-b", type=int, default=1, help="seed of the second noise (--seed is the first)"
    )
    interp.add_argument("--points", type=int, default=10)
    interp.add_argument("--label", type=int, default=None)
    interp.add_argument("--out", default="outputs/interpolation.png")
    add_device_argument(interp)
    interp.set_defaults(handler=run_interpolate)


def _check_count(name: str, value: int) -> None:
    if value < 1:
        raise DifflabError(f"--{name} must be at least 1, got {value}.")


def _check_png(path: str) -> Path:
    out = Path(path)
    if out.suffix.lower() != ".png":
        raise DifflabError(f"--out {path} must end in .png.")
    return out


def run_sample(args: argparse.Namespace) -> int:
    """Sample; under torchrun every rank draws its share of ``--n`` and rank 0 writes them all."""
    _check_count("n", args.n)
    out = _check_png(args.out)
    with process_group(select_device(args.device).type) as group:
        return sample_shard(args, out, group)


def sample_shard(args: argparse.Namespace, out: Path, group: Distributed) -> int:
    model = load_diffusion_model(args.checkpoint, select_device(args.device, group.local_rank))
    if args.label is not None and args.labels is not None:
        raise DifflabError("give either --label or --labels, not both.")
    guidance = guidance_from_args(args, model)
    classifier = guidance.classifier if guidance is not None else None
    # the classes of a conditional model, else those of the guiding classifier
    num_classes = model.num_classes or (classifier.config.num_classes if classifier else 0)
    labels = parse_labels(
        str(args.label) if args.label is not None else args.labels, args.n, num_classes
    )
    part = group.portion(args.n)
    count = part.stop - part.start  # 0 on the last ranks when --n is smaller than the group
    start = time.perf_counter()
    images = model.sample(
        max(count, 1),
        sampler=args.sampler,
        steps=args.steps,
        eta=args.eta,
        sigma_hat=args.sigma_hat,
        spacing=args.spacing,
        seed=args.seed if group.is_main else rank_seed(args.seed, group.rank, 0),
        labels=None if labels is None else labels[part],
        clip_x0=args.clip_x0,
        guidance=guidance,
    )
    images = torch.cat(group.gather(images[:count].cpu()))  # (n, C, H, W), rank 0's first
    elapsed = time.perf_counter() - start
    if not group.is_main:
        return 0
    nrow = num_classes if args.labels == "all" else math.ceil(math.sqrt(args.n))
    save_grid(images, out, nrow=nrow)
    if args.out_dir:
        save_images(images, args.out_dir)
    steps = (
        model.schedule.num_timesteps
        if args.sampler == "ddpm" and args.steps is None
        else args.steps
    )
    guided = f", {guidance.describe()}" if guidance is not None else ""
    processes = f" on {group.world_size} processes" if group.active else ""
    print(
        f"wrote {args.n} samples ({args.sampler}, {steps} steps{guided}, {elapsed:.1f} s"
        f"{processes}) to {out.resolve()}"
    )
    return 0


def run_invert(args: argparse.Namespace) -> int:
    _check_count("n", args.n)
    out = _check_png(args.out)
    model = load_diffusion_model(args.checkpoint, select_device(args.device))
    channels, size, _ = model.image_shape
    dataset = load_dataset(
        args.data,
        split="test",
        data_dir=args.data_dir,
        image_size=size,
        channels=channels,
        limit=args.n,
    )
    x0 = dataset.images.to(model.device)  # (n, C, H, W)
    labels = dataset.labels.to(model.device) if model.num_classes else None
    x_T = model.invert(x0, args.steps, args.spacing, labels)
    recon = model.reconstruct(x_T, args.steps, args.spacing, labels)
    mse = torch.mean((recon - x0) ** 2).item()
    save_grid(torch.cat([x0, x_T.clamp(-3, 3) / 3, recon]), out, nrow=len(x0))
    print(
        f"inverted {len(x0)} images with {args.steps} DDIM steps: reconstruction MSE {mse:.6f}; grid at {out.resolve()}"
    )
    return 0


def run_interpolate(args: argparse.Namespace) -> int:
    _check_count("points", args.points)
    out = _check_png(args.out)
    model = load_diffusion_model(args.checkpoint, select_device(args.device))
    images = model.interpolate(
        args.seed, args.seed_b, args.points, args.steps, args.spacing, args.label
    )
    save_grid(images, out, nrow=args.points)
    print(f"wrote a {args.points}-point interpolation to {out.resolve()}")
    return 0
