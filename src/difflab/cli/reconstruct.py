"""``difflab reconstruct CKPT``: dataset images through a VQ-VAE, originals above reconstructions."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from difflab.data import load_dataset
from difflab.errors import DifflabError
from difflab.io.images import save_grid
from difflab.pipelines.vqvae import load_vqvae
from difflab.training.vqvae_loop import reconstruction_stats


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "reconstruct", help="encode and decode dataset images with a VQ-VAE checkpoint"
    )
    parser.add_argument("checkpoint", help="a VQ-VAE checkpoint (kind: vqvae)")
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


def run(args: argparse.Namespace) -> int:
    if args.n < 1:
        raise DifflabError(f"--n must be at least 1, got {args.n}.")
    out = Path(args.out)
    if out.suffix.lower() != ".png":
        raise DifflabError(f"--out {args.out} must end in .png.")
    model = load_vqvae(args.checkpoint)
    config = model.config
    dataset = load_dataset(
        args.data,
        split=args.split,
        data_dir=args.data_dir,
        image_size=config.image_size,
        channels=config.in_channels,
        limit=args.n,
    )
    images = dataset.images  # (n, C, H, W)
    stats = reconstruction_stats(model, images)
    with torch.no_grad():
        recon = model(images).reconstruction.clamp(-1, 1)
    save_grid(torch.cat([images, recon]), out, nrow=8)
    print(
        f"reconstructed {len(images)} {dataset.name} images: MSE {stats['mse']:.5f}, PSNR "
        f"{stats['psnr']:.2f} dB, {100 * stats['codebook_usage']:.1f} % of codes used; "
        f"originals above reconstructions in {out.resolve()}"
    )
    return 0
