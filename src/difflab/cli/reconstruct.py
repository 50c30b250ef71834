"""``difflab reconstruct CKPT``: dataset images through an autoencoder (a VQ-VAE or a perceptual
autoencoder), originals above reconstructions, and the reconstruction error."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from difflab.autoencoders import AUTOENCODER_KIND, VQVAE_KIND, load_autoencoder
from difflab.data import ImageDataset, load_dataset
from difflab.errors import DifflabError
from difflab.io.checkpoint import load_checkpoint_meta
from difflab.io.images import save_grid
from difflab.pipelines.vqvae import load_vqvae
from difflab.training.autoencoder_loop import (
    autoencoder_stats,
    latent_summary,
    reconstruct,
    stats_summary,
)
from difflab.training.vqvae_loop import reconstruction_stats

KINDS = (VQVAE_KIND, AUTOENCODER_KIND)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "reconstruct",
        help="encode and decode dataset images with a VQ-VAE or perceptual autoencoder checkpoint",
    )
    parser.add_argument(
        "checkpoint", help="an autoencoder checkpoint (kind: vqvae or kind: autoencoder)"
    )
    parser.add_argument("--data", default="mnist", help="dataset name or image folder")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--split", choices=("train", "test"), default="test")
    parser.add_argument("--n", type=int, default=64, help="number of images")
    parser.add_argument(
        "--out",
        default="outputs/reconstruction.png",
        help="PNG grid: originals, then reconstructions",
    )
    parser.set_defaults(handler=run)


def _dataset(args: argparse.Namespace, image_size: int, channels: int) -> ImageDataset:
    return load_dataset(
        args.data,
        split=args.split,
        data_dir=args.data_dir,
        image_size=image_size,
        channels=channels,
        limit=args.n,
    )


def run(args: argparse.Namespace) -> int:
    if args.n < 1:
        raise DifflabError(f"--n must be at least 1, got {args.n}.")
    out = Path(args.out)
    if out.suffix.lower() != ".png":
        raise DifflabError(f"--out {args.out} must end in .png.")
    meta = load_checkpoint_meta(args.checkpoint)
    kind = meta.get("kind")
    if kind not in KINDS:
        raise DifflabError(
            f"{args.checkpoint} holds a {kind!r} checkpoint; difflab reconstruct takes an "
            "autoencoder (kind: vqvae or kind: autoencoder)."
        )
    if kind == AUTOENCODER_KIND:
        model = load_autoencoder(args.checkpoint)
        dataset = _dataset(args, model.config.image_size, model.config.in_channels)
        images = dataset.images  # (n, C, H, W)
        summary = f"{stats_summary(autoencoder_stats(model, images))}; {latent_summary(meta)}"
        recon = reconstruct(model, images)
    else:
        vqvae = load_vqvae(args.checkpoint)
        dataset = _dataset(args, vqvae.config.image_size, vqvae.config.in_channels)
        images = dataset.images  # (n, C, H, W)
        stats = reconstruction_stats(vqvae, images)
        with torch.no_grad():
            recon = vqvae(images).reconstruction.clamp(-1, 1)
        summary = (
            f"MSE {stats['mse']:.5f}, PSNR {stats['psnr']:.2f} dB, "
            f"{100 * stats['codebook_usage']:.1f} % of codes used"
        )
    save_grid(torch.cat([images, recon]), out, nrow=8)
    print(
        f"reconstructed {len(images)} {dataset.name} images: {summary}; originals above "
        f"reconstructions in {out.resolve()}"
    )
    return 0
