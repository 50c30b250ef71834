"""``difflab train CONFIG [key=value ...] [--resume] [--device D]``: any trainable kind of model
(a diffusion model, a noisy classifier, a VQ-VAE and its prior, a perceptual autoencoder).

Under ``torchrun --nproc_per_node N -m difflab train ...`` the processes train one model together
(see :mod:`difflab.io.process_group`); only rank 0 prints.
"""

from __future__ import annotations

import argparse
from typing import Any

from difflab.cli.common import add_device_argument
from difflab.config import load_config
from difflab.errors import DifflabError
from difflab.io.checkpoint import load_checkpoint_meta
from difflab.io.device import select_device
from difflab.io.process_group import process_group
from difflab.training import train
from difflab.training.autoencoder_loop import (
    latent_summary,
    stats_summary,
    train_autoencoder,
)
from difflab.training.classifier_loop import train_classifier
from difflab.training.control_loop import train_controlnet
from difflab.training.vqvae_loop import train_prior, train_vqvae

KINDS: tuple[str, ...] = (
    "diffusion",
    "classifier",
    "vqvae",
    "vqvae_prior",
    "autoencoder",
    "controlnet",
)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train a diffusion model, a noisy classifier, a VQ-VAE, a VQ-VAE prior or a "
        "perceptual autoencoder (the config's kind)",
    )
    parser.add_argument("config", help="YAML experiment file, e.g. configs/mnist.yaml")
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="key=value",
        help="override config entries, e.g. train.steps=500",
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in train.out_dir exactly where it stopped",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress line")
    add_device_argument(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    config = load_config(args.config, args.overrides)
    if config.kind not in KINDS:
        raise DifflabError(
            f"config kind {config.kind!r} is not trainable; use one of {', '.join(KINDS)}."
        )
    with process_group(select_device(args.device).type) as group:
        device = select_device(args.device, group.local_rank)
        options = dict(resume=args.resume, progress=not args.quiet, device=device, group=group)
        report: list[str] = []
        if config.kind == "diffusion":
            path = train(config, **options)
            report = [f"trained model: {path}"]
        elif config.kind == "controlnet":
            report = [f"trained ControlNet: {train_controlnet(config, **options)}"]
        elif config.kind == "classifier":
            path = train_classifier(config, **options)
            report = [f"trained noisy classifier: {path}"]
            table = load_checkpoint_meta(path).get("accuracy_vs_t", []) if group.is_main else []
            if table:
                summary = ", ".join(f"t={row['t']}: {row['accuracy']:.3f}" for row in table)
                report.append(f"held-out accuracy by timestep: {summary}")
        else:
            report = train_autoencoder_kind(config, options)
    if group.is_main:  # the other processes of a torchrun group stay silent
        print("\n".join(report))
    return 0


def train_autoencoder_kind(config: Any, options: dict[str, Any]) -> list[str]:
    """Train a VQ-VAE, its prior or a perceptual autoencoder; the lines that report the result
    (on rank 0)."""
    if config.kind == "autoencoder":
        path = train_autoencoder(config, **options)
        report = [f"trained autoencoder: {path}"]
        meta = load_checkpoint_meta(path) if options["group"].is_main else {}
        if meta:
            report.append(f"test split: {stats_summary(meta['test'])}; {latent_summary(meta)}")
        return report
    if config.kind == "vqvae":
        path = train_vqvae(config, **options)
        report = [f"trained VQ-VAE: {path}"]
        test = load_checkpoint_meta(path).get("test", {}) if options["group"].is_main else {}
        if test:
            report.append(
                f"test split: MSE {test['mse']:.5f}, PSNR {test['psnr']:.2f} dB, "
                f"{100 * test['codebook_usage']:.1f} % of codes used, perplexity "
                f"{test['perplexity']:.1f}"
            )
        return report
    path = train_prior(config, **options)
    report = [f"trained VQ-VAE prior: {path}"]
    test = load_checkpoint_meta(path).get("test", {}) if options["group"].is_main else {}
    if test:
        report.append(
            f"test split NLL: {test['bits_per_code']:.3f} bits per code (uniform: "
            f"{test['uniform_bits_per_code']:.1f}), {test['bits_per_image_dim']:.4f} bits/dim"
        )
    return report
