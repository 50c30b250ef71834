"""``difflab train CONFIG [key=value ...] [--resume] [--device D]``: a diffusion model or a noisy classifier.

Under ``torchrun --nproc_per_node N -m difflab train ...`` the processes train one model together
(see :mod:`difflab.training.distributed`); only rank 0 prints.
"""

from __future__ import annotations

import argparse

from difflab.cli.common import add_device_argument
from difflab.config import load_config
from difflab.errors import DifflabError
from difflab.training import train
from difflab.training.checkpoint import load_checkpoint
from difflab.training.classifier_loop import train_classifier
from difflab.training.distributed import process_group
from difflab.utils.device import select_device

KINDS: tuple[str, ...] = ("diffusion", "classifier")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train", help="train a model (kind: diffusion) or a noisy classifier (kind: classifier)"
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
        if config.kind == "diffusion":
            path = train(config, **options)
            report = [f"trained model: {path}"]
        else:
            path = train_classifier(config, **options)
            report = [f"trained noisy classifier: {path}"]
            table = load_checkpoint(path)[1].get("accuracy_vs_t", []) if group.is_main else []
            if table:
                summary = ", ".join(f"t={row['t']}: {row['accuracy']:.3f}" for row in table)
                report.append(f"held-out accuracy by timestep: {summary}")
    if group.is_main:  # the other processes of a torchrun group stay silent
        print("\n".join(report))
    return 0
