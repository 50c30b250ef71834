"""``difflab train CONFIG [key=value ...] [--resume]``: a diffusion model or a noisy classifier."""

from __future__ import annotations

import argparse

from difflab.config import load_config
from difflab.errors import DifflabError
from difflab.training import train
from difflab.training.checkpoint import load_checkpoint
from difflab.training.classifier_loop import train_classifier
from difflab.training.vqvae_loop import train_prior, train_vqvae

KINDS: tuple[str, ...] = ("diffusion", "classifier", "vqvae", "vqvae_prior")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train a diffusion model, a noisy classifier, a VQ-VAE or a VQ-VAE prior (the "
        "config's kind)",
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
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    config = load_config(args.config, args.overrides)
    if config.kind == "diffusion":
        path = train(config, resume=args.resume, progress=not args.quiet)
        print(f"trained model: {path}")
        return 0
    if config.kind == "classifier":
        path = train_classifier(config, resume=args.resume, progress=not args.quiet)
        table = load_checkpoint(path)[1].get("accuracy_vs_t", [])
        summary = ", ".join(f"t={row['t']}: {row['accuracy']:.3f}" for row in table)
        print(f"trained noisy classifier: {path}")
        if summary:
            print(f"held-out accuracy by timestep: {summary}")
        return 0
    if config.kind == "vqvae":
        path = train_vqvae(config, resume=args.resume, progress=not args.quiet)
        test = load_checkpoint(path)[1].get("test", {})
        print(f"trained VQ-VAE: {path}")
        if test:
            print(
                f"test split: MSE {test['mse']:.5f}, PSNR {test['psnr']:.2f} dB, "
                f"{100 * test['codebook_usage']:.1f} % of codes used, perplexity "
                f"{test['perplexity']:.1f}"
            )
        return 0
    if config.kind == "vqvae_prior":
        path = train_prior(config, resume=args.resume, progress=not args.quiet)
        test = load_checkpoint(path)[1].get("test", {})
        print(f"trained VQ-VAE prior: {path}")
        if test:
            print(
                f"test split NLL: {test['bits_per_code']:.3f} bits per code (uniform: "
                f"{test['uniform_bits_per_code']:.1f}), {test['bits_per_image_dim']:.4f} bits/dim"
            )
        return 0
    raise DifflabError(
        f"config kind {config.kind!r} is not trainable; use one of {', '.join(KINDS)}."
    )
