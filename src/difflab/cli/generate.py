"""``difflab sample``, ``difflab invert`` and ``difflab interpolate``."""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
import time
from pathlib import Path

import torch

from difflab.autoencoders import PRIOR_KIND
from difflab.cli.common import (
    SAMPLE_DEFAULTS,
    add_caption_argument,
    add_device_argument,
    add_guidance_arguments,
    add_sampling_arguments,
    caption_warnings,
    guidance_from_args,
    parse_captions,
    parse_labels,
    resolve_precision,
    sampler_spacing,
)
from difflab.cli.hint import add_control_arguments, control_from_args
from difflab.data import ImageDataset, load_dataset
from difflab.diffusion import Conditioning
from difflab.errors import DifflabError
from difflab.io.atomic import check_output_folder, check_output_path
from difflab.io.checkpoint import load_checkpoint_meta
from difflab.io.device import select_device
from difflab.io.images import save_grid, save_images
from difflab.io.process_group import Distributed, process_group, rank_seed
from difflab.io.weights import resolve_checkpoint
from difflab.models import dataset_captions
from difflab.pipelines import DiffusionPipeline, load_control_pipeline, load_pipeline
from difflab.pipelines.vqvae import load_code_prior, sample_vqvae
from difflab.samplers.ddim import EPS_AT


def register(subparsers: argparse._SubParsersAction) -> None:
    sample = subparsers.add_parser("sample", help="generate images from a checkpoint")
    sample.add_argument("checkpoint")
    add_sampling_arguments(sample, defaults=SAMPLE_DEFAULTS)
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
    sample.add_argument(
        "--labels",
        default=None,
        help="comma-separated labels (cycled), or 'all' (one row per class)",
    )
    add_caption_argument(sample)
    add_guidance_arguments(sample)
    add_control_arguments(sample)
    sample.add_argument(
        "--temperature",
        type=float,
        default=1.0,
        help="VQ-VAE prior checkpoints: softmax temperature of the code sampling",
    )
    sample.add_argument(
        "--autoencoder",
        default=None,
        metavar="CKPT",
        help="VQ-VAE prior checkpoints: the VQ-VAE to decode with (default: the one recorded)",
    )
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
    add_caption_argument(invert)
    invert.add_argument(
        "--eps-at",
        choices=EPS_AT,
        default="source",
        help="evaluate eps at the level an inverse step starts from (source, the default) or ends "
        "at (destination, as diffusers' DDIMInverseScheduler; better at very few steps)",
    )
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
    add_caption_argument(interp)
    interp.add_argument("--out", default="outputs/interpolation.png")
    add_device_argument(interp)
    interp.set_defaults(handler=run_interpolate)


def _check_count(name: str, value: int) -> None:
    if value < 1:
        raise DifflabError(f"--{name} must be at least 1, got {value}.")


def _check_png(path: str, checkpoint: str | None = None) -> Path:
    out = Path(path)
    if out.suffix.lower() != ".png":
        raise DifflabError(f"--out {path} must end in .png.")
    return check_output_path(out, "--out", [checkpoint] if checkpoint else [])


def _label_text(args: argparse.Namespace) -> str | None:
    if args.label is not None and args.labels is not None:
        raise DifflabError("give either --label or --labels, not both.")
    return str(args.label) if args.label is not None else args.labels


def _grid_columns(args: argparse.Namespace, count: int, num_classes: int) -> int:
    """One row per class for ``--labels all``, else a square-ish grid."""
    if args.labels == "all":
        return math.ceil(args.n / num_classes)
    return math.ceil(math.sqrt(count))


def _write_samples(args: argparse.Namespace, images: torch.Tensor, out: Path, nrow: int) -> None:
    save_grid(images, out, nrow=nrow)
    if args.out_dir:
        save_images(images, args.out_dir)


def run_sample(args: argparse.Namespace) -> int:
    """Sample; under torchrun every rank draws its share of ``--n`` and rank 0 writes them all."""
    _check_count("n", args.n)
    out = _check_png(args.out, args.checkpoint)
    if args.out_dir:
        check_output_folder(args.out_dir, "--out-dir")
    args.checkpoint = str(resolve_checkpoint(args.checkpoint))  # a path, or a shipped name
    if load_checkpoint_meta(args.checkpoint).get("kind") == PRIOR_KIND:
        return _sample_vqvae_prior(args, out)
    with process_group(select_device(args.device).type) as group:
        return sample_shard(args, out, group)


def sample_shard(args: argparse.Namespace, out: Path, group: Distributed) -> int:
    load = load_control_pipeline if args.control else load_pipeline
    device = select_device(args.device, group.local_rank)
    pipeline = load(
        [args.checkpoint, *args.control] if args.control else args.checkpoint,
        device,
        resolve_precision(args.precision, device, report=group.is_main),
    )
    label_text = _label_text(args)
    guidance = guidance_from_args(args, pipeline)
    num_classes = pipeline.target_classes(guidance)
    labels = parse_labels(label_text, args.n, num_classes)
    total = args.n if labels is None else len(labels)  # --labels all fills whole rows
    captions = checked_captions(args, pipeline, total, group.is_main)
    part = group.portion(total)
    count = part.stop - part.start  # 0 on the last ranks when there are fewer images than ranks
    start = time.perf_counter()
    cond = None
    if labels is not None:
        mine = labels[part] if count else labels[:1]  # a rank with no share draws one, unused
        cond = Conditioning(labels=mine)
    if captions is not None:
        texts = captions[part] if count else captions[:1]
        cond = pipeline.caption_conditioning(texts, None if cond is None else cond.labels)
    hint, control = control_from_args(args, max(count, 1))
    if hint is not None:
        cond = dataclasses.replace(cond or Conditioning(), control=hint)
    images = pipeline.generate(
        max(count, 1),
        cond,
        seed=args.seed if group.is_main else rank_seed(args.seed, group.rank, 0),
        sampler=args.sampler,
        steps=args.steps,
        spacing=sampler_spacing(args, pipeline, guidance),
        eta=args.eta,
        sigma_hat=args.sigma_hat,
        guidance=guidance,
        control=control,
    )
    images = torch.cat(group.gather(images[:count].cpu()))  # (total, C, H, W), rank 0's first
    elapsed = time.perf_counter() - start
    if not group.is_main:
        return 0
    _write_samples(args, images, out, _grid_columns(args, total, num_classes))
    guided = f", {guidance.describe()}" if guidance is not None else ""
    processes = f" on {group.world_size} processes" if group.active else ""
    print(
        f"wrote {total} samples ({args.sampler}, {args.steps} steps{guided}, {elapsed:.1f} s"
        f"{processes}) to {out.resolve()}"
    )
    return 0


def checked_captions(
    args: argparse.Namespace, pipeline: DiffusionPipeline, total: int, report: bool
) -> list[str] | None:
    """The ``--caption`` values cycled to ``total``; refused for a model without a caption
    encoder, required by one with; unknown and cut words are reported (when ``report``)."""
    captions = parse_captions(args.captions, total)
    if captions is None:
        if pipeline.text_encoder is not None:
            raise DifflabError(
                f"{args.checkpoint} is conditioned on captions; give --caption TEXT (--caption '' "
                "for unconditional samples)."
            )
        return None
    if pipeline.text_encoder is None:
        raise DifflabError(
            f"{args.checkpoint} was not trained on captions (it has no caption encoder); drop "
            "--caption."
        )
    if report:
        for line in caption_warnings(pipeline, captions):
            print(line, file=sys.stderr)
    return captions


def _sample_vqvae_prior(args: argparse.Namespace, out: Path) -> int:
    """``difflab sample`` of a VQ-VAE prior checkpoint: codes from the prior, decoded by the VQ-VAE."""
    diffusion_only = {
        "--classifier": args.classifier,
        "--classifier-scale": args.classifier_scale,
        "--guidance-scale": args.guidance_scale,
        "--dynamic-threshold": args.dynamic_threshold,
        "--caption": args.captions,
        "--hint": args.hint,
        "--control": args.control,
    }
    given = [flag for flag, value in diffusion_only.items() if value is not None]
    if given:
        raise DifflabError(
            f"{given[0]} applies to diffusion models; {args.checkpoint} is a VQ-VAE prior."
        )
    prior, autoencoder = load_code_prior(args.checkpoint, args.autoencoder)
    num_classes = prior.config.num_classes
    labels = parse_labels(_label_text(args), args.n, num_classes)
    count = args.n if labels is None else len(labels)
    start = time.perf_counter()
    images = sample_vqvae(
        prior, autoencoder, count, labels, temperature=args.temperature, seed=args.seed
    )
    elapsed = time.perf_counter() - start
    _write_samples(args, images, out, _grid_columns(args, count, num_classes))
    print(
        f"wrote {count} samples (VQ-VAE prior, temperature {args.temperature:g}, "
        f"{elapsed:.1f} s) to {out.resolve()}"
    )
    return 0


def run_invert(args: argparse.Namespace) -> int:
    _check_count("n", args.n)
    out = _check_png(args.out, args.checkpoint)
    pipeline = load_pipeline(args.checkpoint, select_device(args.device))
    channels, size, _ = pipeline.image_shape
    dataset = load_dataset(
        args.data,
        split="test",
        data_dir=args.data_dir,
        image_size=size,
        channels=channels,
        limit=args.n,
    )
    x0 = dataset.images.to(pipeline.device)  # (n, C, H, W)
    cond = _dataset_conditioning(args, pipeline, dataset)
    x_T = pipeline.invert(x0, args.steps, args.spacing, cond, eps_at=args.eps_at)
    recon = pipeline.reconstruct(x_T, args.steps, args.spacing, cond)
    mse = torch.mean((recon - x0) ** 2).item()
    rows = [x0, recon]
    if x_T.shape == x0.shape:  # pixel space: the noises between (latent noises have no image)
        rows.insert(1, x_T.clamp(-3, 3) / 3)
    save_grid(torch.cat(rows), out, nrow=len(x0))
    print(
        f"inverted {len(x0)} images with {args.steps} DDIM steps: reconstruction MSE {mse:.6f}; grid at {out.resolve()}"
    )
    return 0


def _dataset_conditioning(
    args: argparse.Namespace, pipeline: DiffusionPipeline, dataset: ImageDataset
) -> Conditioning | None:
    """What the images to invert are conditioned on: their labels for a class-conditional model,
    and for a caption model ``--caption`` (cycled) or else the captions the model was trained on
    (the dataset's own, or its class names)."""
    labels = dataset.labels if pipeline.num_classes else None
    encoder = pipeline.text_encoder
    if encoder is not None and args.captions is None:
        own = dataset_captions(encoder.config, dataset, range(len(dataset.images)))
        if own is None:
            raise DifflabError(
                f"{args.checkpoint} is conditioned on captions and --data {args.data} has none; "
                "give --caption TEXT."
            )
        return pipeline.caption_conditioning(own, labels)
    captions = checked_captions(args, pipeline, len(dataset.images), report=True)
    if captions is not None:
        return pipeline.caption_conditioning(captions, labels)
    return None if labels is None else Conditioning(labels=labels)


def run_interpolate(args: argparse.Namespace) -> int:
    _check_count("points", args.points)
    out = _check_png(args.out, args.checkpoint)
    pipeline = load_pipeline(args.checkpoint, select_device(args.device))
    cond = None if args.label is None else Conditioning(labels=torch.tensor([args.label]))
    captions = checked_captions(args, pipeline, 1, report=True)
    if captions is not None:
        cond = pipeline.caption_conditioning(captions, None if cond is None else cond.labels)
    if cond is not None:
        pipeline.check_conditioning(cond, None)
    images = pipeline.interpolate(
        args.seed, args.seed_b, args.points, args.steps, args.spacing, cond
    )
    save_grid(images, out, nrow=args.points)
    print(f"wrote a {args.points}-point interpolation to {out.resolve()}")
    return 0
