"""``difflab hint KIND IMAGE --out HINT.png``: the control hint of an image, as a PNG to edit;
and the ``difflab sample`` options of ControlNet checkpoints (``--hint``, ``--control-scale``, ...)."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from difflab.data.hints import HINT_MAKERS, make_hint, read_hint_image
from difflab.errors import DifflabError
from difflab.io.images import save_png, to_uint8
from difflab.models.controlnet import ControlSettings


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


def add_control_arguments(parser: argparse.ArgumentParser) -> None:
    """``--hint IMAGE`` (repeatable), ``--control CKPT`` (more ControlNets), ``--control-scale``,
    ``--guess-mode``, ``--control-start`` / ``--control-end``: sampling a ControlNet model."""
    parser.add_argument(
        "--hint",
        action="append",
        default=None,
        metavar="IMAGE",
        help="ControlNet checkpoints: the hint image every sample follows (e.g. from `difflab "
        "hint canny`); one per ControlNet when --control adds more",
    )
    parser.add_argument(
        "--control",
        action="append",
        default=None,
        metavar="CKPT",
        help="another ControlNet of the same base, applied together with the first (sum of "
        "their outputs)",
    )
    parser.add_argument(
        "--control-scale",
        default=None,
        metavar="S[,S...]",
        help="weight of the ControlNet's outputs (default 1); one per ControlNet with --control",
    )
    parser.add_argument(
        "--guess-mode",
        action="store_true",
        help="ControlNet guess mode: control only the conditional branch of classifier-free "
        "guidance, with decaying per-resolution scales",
    )
    parser.add_argument(
        "--control-start",
        type=float,
        default=0.0,
        metavar="F",
        help="fraction of the sampling trajectory at which control starts (default 0)",
    )
    parser.add_argument(
        "--control-end",
        type=float,
        default=1.0,
        metavar="F",
        help="fraction of the sampling trajectory at which control ends (default 1)",
    )


def control_from_args(
    args: argparse.Namespace, count: int
) -> tuple[torch.Tensor | None, ControlSettings | None]:
    """(the hint (count, C, H, W), the sampling controls) the arguments ask for; (None, None)
    without --hint. Hints of several ControlNets are stacked along the channels."""
    given = args.control_scale is not None or args.guess_mode or args.control
    given = given or (args.control_start, args.control_end) != (0.0, 1.0)
    if not args.hint:
        if given:
            raise DifflabError(
                "the control options need --hint IMAGE (and a ControlNet checkpoint)."
            )
        return None, None
    hints = [read_hint_image(path) for path in args.hint]
    if len({tuple(h.shape[-2:]) for h in hints}) > 1:
        raise DifflabError("the --hint images have different sizes; give hints of one size.")
    hint = torch.cat(hints)[None].expand(count, -1, -1, -1)  # (count, C, H, W)
    scale: float | list[float] = 1.0
    if args.control_scale is not None:
        try:
            values = [float(part) for part in args.control_scale.split(",")]
        except ValueError:
            raise DifflabError(
                f"--control-scale {args.control_scale!r} must be numbers separated by commas."
            ) from None
        scale = values[0] if len(values) == 1 else values
    settings = ControlSettings(scale, args.guess_mode, args.control_start, args.control_end)
    return hint, settings
