"""``difflab info CHECKPOINT`` (or ``--presets``): what a checkpoint holds."""

from __future__ import annotations

import argparse
import json

from difflab.errors import DifflabError
from difflab.models import PRESETS, build_model, model_config
from difflab.training.checkpoint import load_checkpoint


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("info", help="describe a checkpoint, or list the model presets")
    parser.add_argument("checkpoint", nargs="?")
    parser.add_argument(
        "--presets", action="store_true", help="list the model presets with parameter counts"
    )
    parser.add_argument(
        "--json", action="store_true", help="print the checkpoint's metadata as JSON"
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    if args.presets:
        for name in PRESETS:
            net = build_model(*model_config(name))
            print(f"{name:20s} {sum(p.numel() for p in net.parameters()) / 1e6:8.2f} M parameters")
        return 0
    if not args.checkpoint:
        raise DifflabError("give a checkpoint path, or --presets.")
    tensors, meta = load_checkpoint(args.checkpoint)
    if args.json:
        print(json.dumps(meta, indent=2, sort_keys=True))
        return 0
    groups: dict[str, int] = {}
    for key, value in tensors.items():
        groups[key.split(".")[0]] = groups.get(key.split(".")[0], 0) + value.numel()
    print(f"checkpoint: {args.checkpoint}")
    print(f"kind: {meta.get('kind')}  arch: {meta.get('arch')}  step: {meta.get('step')}")
    for name, count in groups.items():
        print(f"tensors '{name}': {count / 1e6:.2f} M values")
    for section in ("data", "diffusion", "model"):
        if section in meta:
            print(f"{section}: {json.dumps(meta[section], sort_keys=True)}")
    print(f"versions: {json.dumps(meta.get('versions', {}), sort_keys=True)}")
    return 0
