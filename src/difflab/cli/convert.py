"""``difflab convert SRC DST``: models between difflab, diffusers and the reference DiT code."""

from __future__ import annotations

import argparse

from difflab.convert import TARGETS, convert


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "convert",
        help="convert a model between difflab, diffusers and the facebookresearch/DiT code",
        description="Convert SRC into DST, detecting SRC's format: a difflab checkpoint is "
        "exported to a diffusers folder; a diffusers DiT or UNet2DModel folder, or a reference DiT "
        "state dict, is imported as a difflab checkpoint. DST must not exist.",
    )
    parser.add_argument(
        "src",
        help="a difflab .safetensors checkpoint, a diffusers model or pipeline folder, or a "
        "facebookresearch/DiT state dict (.safetensors, or .pt/.pth with --allow-pickle)",
    )
    parser.add_argument(
        "dst", help="a new .safetensors file (to difflab) or a new folder (to diffusers)"
    )
    parser.add_argument(
        "--to",
        choices=TARGETS,
        default=None,
        help="target format (default: diffusers for a difflab checkpoint, difflab otherwise)",
    )
    parser.add_argument(
        "--allow-pickle",
        action="store_true",
        help="read .pt/.pth/.bin files (Python pickles) with torch.load(weights_only=True)",
    )
    parser.add_argument(
        "--preset",
        default=None,
        metavar="NAME",
        help="reference DiT: the dit-* preset giving its heads (and image size without "
        "pos_embed), e.g. dit-xl-2; default: the paper's Table 1 for its depth and width",
    )
    parser.add_argument(
        "--num-heads",
        type=int,
        default=None,
        metavar="N",
        help="reference DiT: the number of attention heads (not stored in its tensors)",
    )
    parser.add_argument(
        "--allow-timestep-shift",
        action="store_true",
        help="export a DiT whose timestep features differ from diffusers' (10000^(-i/128) vs "
        "10000^(-i/127)); its outputs in diffusers then differ from difflab's",
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    done = convert(
        args.src,
        args.dst,
        to=args.to,
        allow_pickle=args.allow_pickle,
        preset=args.preset,
        num_heads=args.num_heads,
        allow_timestep_shift=args.allow_timestep_shift,
    )
    source = done.source
    print(f"wrote {done.out} ({done.target}) from {source.path} ({source.format} {source.arch})")
    return 0
