"""``difflab train CONFIG [key=value ...] [--resume]``."""

from __future__ import annotations

import argparse

from difflab.config import load_config
from difflab.training import train


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("train", help="train a model from a config file")
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
    path = train(config, resume=args.resume, progress=not args.quiet)
    print(f"trained model: {path}")
    return 0
