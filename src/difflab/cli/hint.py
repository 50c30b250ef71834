"""``difflab hint KIND IMAGE --out HINT.png``: the control hint of an image, as a PNG to edit."""

from __future__ import annotations

import argparse
from pathlib import Path

from difflab.data.hints import HINT_MAKERS, make_hint, read_hint_image
from difflab.errors import DifflabError
from difflab.io.images import save_png, to_uint8


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "hint", help="make a ControlNet hint (edges, scribbles, colour regions) from an image"
    )
    parser.add_argument("kind", choices=tuple(HINT_MAKERS), help="which hint to make")
    parser.add_argument("image", help="the source image (PNG, JPEG, ...)")
    parser.add_argument("--out", default="outputs/hint.png", help="the PNG to write")
    parser.add_argument(
        "--sigma", type=float, default=None, help="canny/scribble: Gaussian smoothing in pixels"
    )
    parser.add_argument("--seed", type=int, default=None, help="scribble: random seed")
    parser.add_argument(
        "--regions", type=int, default=None, help="segmentation: number of colour regions"
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    out = Path(args.out)
    if out.suffix.lower() != ".png":
        raise DifflabError(f"--out {args.out} must end in .png.")
    given = {"sigma": args.sigma, "seed": args.seed, "regions": args.regions}
    options = {name: value for name, value in given.items() if value is not None}
    image = read_hint_image(args.image)  # (C, H, W) in [-1, 1]
    try:
        hint = make_hint(args.kind, image, **options)  # (C', H, W)
    except TypeError:
        raise DifflabError(
            f"{', '.join('--' + name for name in options)} does not apply to a {args.kind} hint."
        ) from None
    save_png(to_uint8(hint[None])[0], out)
    print(
        f"wrote the {args.kind} hint of {args.image} ({hint.shape[-1]}x{hint.shape[-2]}) to {out}"
    )
    return 0
