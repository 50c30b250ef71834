"""``difflab info CHECKPOINT`` (or ``--presets``): what a checkpoint holds, and its cost.

The cost is GFLOPs of one forward pass on one image (``difflab.models.forward_gflops``:
FlopCounterMode, a multiply-add = 2 FLOPs; the DiT paper's "Gflops" are half of these).
"""

from __future__ import annotations

import argparse
import json
from typing import Any

import torch

from difflab.errors import DifflabError
from difflab.io.checkpoint import load_checkpoint
from difflab.models import (
    ARCHITECTURES,
    PRESETS,
    build_model,
    config_from_dict,
    forward_gflops,
    model_config,
)

FLOPS_NOTE = "GFLOPs: one forward pass on one image (FlopCounterMode, multiply-add = 2 FLOPs)"


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("info", help="describe a checkpoint, or list the model presets")
    parser.add_argument("checkpoint", nargs="?")
    parser.add_argument(
        "--presets",
        action="store_true",
        help="list the model presets with parameter counts and GFLOPs per forward pass",
    )
    parser.add_argument(
        "--json", action="store_true", help="print the checkpoint's metadata as JSON"
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    if args.presets:
        for name in PRESETS:
            arch, config = model_config(name)
            print(
                f"{name:20s} {_parameter_count(arch, config) / 1e6:8.2f} M parameters "
                f"{forward_gflops(arch, config):10.3f} GFLOPs"
            )
        print(FLOPS_NOTE)
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
    if meta.get("arch") in ARCHITECTURES and isinstance(meta.get("model"), dict):
        config = config_from_dict(meta["arch"], meta["model"])
        print(f"cost: {forward_gflops(meta['arch'], config):.3f} GFLOPs per forward pass per image")
    if "train_cpu_seconds" in meta:  # recorded since difflab train kept the time
        print(
            f"training: {meta['train_seconds']:.0f} s wall-clock, {meta['train_cpu_seconds']:.0f} "
            "CPU-seconds of optimizer updates"
        )
    print(f"versions: {json.dumps(meta.get('versions', {}), sort_keys=True)}")
    return 0


def _parameter_count(arch: str, config: Any) -> int:
    """Parameters of a network, counted on the meta device (no memory, no initialisation cost)."""
    with torch.device("meta"):
        net = build_model(arch, config)
    return sum(p.numel() for p in net.parameters())
