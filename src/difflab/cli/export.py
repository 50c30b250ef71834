"""``difflab export RUN_CHECKPOINT OUT [--fp16]``: a small inference-only checkpoint."""

from __future__ import annotations

import argparse
from pathlib import Path

from difflab.errors import DifflabError
from difflab.io.atomic import check_output_path
from difflab.io.checkpoint import load_checkpoint, save_checkpoint, split_prefix, with_prefix

TRAINING_ONLY_KEYS = ("state", "versions")  # resume bookkeeping; versions are re-stamped on save


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "export", help="keep only the (EMA) model weights of a checkpoint, optionally in fp16"
    )
    parser.add_argument(
        "checkpoint", help="a run's model.safetensors or checkpoints/last.safetensors"
    )
    parser.add_argument("out", help="the .safetensors file to write")
    parser.add_argument(
        "--fp16",
        action="store_true",
        help="store floating-point weights as float16 (half the size)",
    )
    parser.set_defaults(handler=run)


def export_weights(source: Path, out: Path, fp16: bool) -> Path:
    """Write ``out`` with the EMA weights of ``source`` (or its plain weights when it has no EMA)."""
    tensors, meta = load_checkpoint(source)
    weights = split_prefix(tensors, "ema") or split_prefix(tensors, "model")
    if not weights:
        raise DifflabError(f"{source} holds no model weights to export.")
    if fp16:
        weights = {k: v.half() if v.is_floating_point() else v for k, v in weights.items()}
    kept = {key: value for key, value in meta.items() if key not in TRAINING_ONLY_KEYS}
    kept["weights_dtype"] = "float16" if fp16 else "float32"
    return save_checkpoint(out, with_prefix(weights, "model"), kept)


def run(args: argparse.Namespace) -> int:
    out = Path(args.out)
    if out.suffix != ".safetensors":
        raise DifflabError(f"the output {out} must end in .safetensors.")
    check_output_path(out, "the output", [args.checkpoint])
    path = export_weights(Path(args.checkpoint), out, args.fp16)
    size = path.stat().st_size / 1e6
    print(f"wrote {path} ({size:.1f} MB, {'float16' if args.fp16 else 'float32'} weights)")
    return 0
