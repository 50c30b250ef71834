"""``difflab eval`` (sample a checkpoint and measure it), ``difflab fd`` and ``difflab fd-stats``.

``difflab eval CHECKPOINT --n 2000 --sampler ddim --steps 50 [--out results.json]``;
``difflab fd A B`` (each a folder of images, a dataset such as ``mnist:train``, or a statistics
file); ``difflab fd-stats DATA --out stats.npz``. The numbers are FD-MNIST / FD-Fashion /
FD-VGG16 / FD-AlexNet, named after their feature space: none is comparable to a published FID.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

from difflab.cli.common import (
    add_guidance_arguments,
    add_sampling_arguments,
    guidance_from_args,
    resolve_precision,
    sampler_spacing,
)
from difflab.errors import DifflabError
from difflab.io.atomic import check_output_path, write_bytes_atomic
from difflab.io.images import save_grid
from difflab.metrics.evaluate import DEFAULT_SAMPLE_BATCH, compare, format_summary
from difflab.metrics.features import (
    FEATURE_NAMES,
    PRETRAINED_NETS,
    FeatureExtractor,
    build_feature_extractor,
)
from difflab.metrics.reference import (
    DATA_SPLITS,
    DEFAULT_FEATURE_BATCH,
    KEEP_FEATURES,
    data_stats,
    default_features,
)
from difflab.pipelines import evaluate_pipeline, load_pipeline

GRID_IMAGES = 64


def _add_feature_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--features",
        choices=FEATURE_NAMES,
        default=None,
        help="feature space (default: the dataset's CNN, vgg16 for folders)",
    )
    parser.add_argument(
        "--feature-size",
        type=int,
        default=None,
        help=f"input side of {'/'.join(PRETRAINED_NETS)} in pixels (default 128)",
    )
    parser.add_argument("--device", default="cpu", help="torch device of the feature network")


def register(subparsers: argparse._SubParsersAction) -> None:
    evaluate = subparsers.add_parser(
        "eval", help="sample a checkpoint; report FD, precision/recall and label accuracy"
    )
    evaluate.add_argument("checkpoint")
    add_sampling_arguments(evaluate)
    add_guidance_arguments(evaluate)
    evaluate.add_argument("--n", type=int, default=2000, help="number of samples (default 2000)")
    evaluate.add_argument(
        "--batch-size",
        type=int,
        default=DEFAULT_SAMPLE_BATCH,
        help=f"images sampled at once (default {DEFAULT_SAMPLE_BATCH}; bounds memory)",
    )
    evaluate.add_argument(
        "--reference",
        default=None,
        help="statistics .npz, dataset (e.g. mnist:test) or folder; default: the test split of "
        "the checkpoint's training data",
    )
    evaluate.add_argument("--out", default=None, metavar="RESULTS.json", help="write the results")
    evaluate.add_argument(
        "--grid", default=None, metavar="GRID.png", help=f"save the first {GRID_IMAGES} samples"
    )
    evaluate.add_argument("--quiet", action="store_true", help="no progress line")
    _add_feature_arguments(evaluate)
    evaluate.set_defaults(handler=run_eval)

    fd = subparsers.add_parser(
        "fd", help="Fréchet distance and precision/recall between two sets of images"
    )
    fd.add_argument("a", help="folder of images, dataset (mnist, mnist:train, ...) or stats .npz")
    fd.add_argument("b", help="the same kinds; B is the 'generated' side of precision/recall")
    _add_data_arguments(fd)
    fd.add_argument("--out", default=None, metavar="RESULTS.json", help="write the results")
    _add_feature_batch_argument(fd)
    _add_feature_arguments(fd)
    fd.set_defaults(handler=run_fd)

    stats = subparsers.add_parser(
        "fd-stats", help="save the feature statistics of a dataset or an image folder (.npz)"
    )
    stats.add_argument("data", help="folder of images or dataset (mnist, mnist:train, ...)")
    stats.add_argument("--out", required=True, metavar="STATS.npz")
    _add_data_arguments(stats)
    stats.add_argument(
        "--keep-features",
        type=int,
        default=KEEP_FEATURES,
        help=f"feature rows stored for precision/recall (default {KEEP_FEATURES}; 0: none)",
    )
    _add_feature_batch_argument(stats)
    _add_feature_arguments(stats)
    stats.set_defaults(handler=run_fd_stats)


def _add_feature_batch_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--batch-size",
        type=int,
        default=DEFAULT_FEATURE_BATCH,
        help=f"images per forward pass of the feature network (default {DEFAULT_FEATURE_BATCH})",
    )


def _add_data_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--split",
        choices=DATA_SPLITS,
        default=None,
        help="dataset split (default test; folders: every image)",
    )
    parser.add_argument(
        "--image-size", type=int, default=None, help="resize (and center-crop) images to this side"
    )
    parser.add_argument("--limit", type=int, default=None, help="use at most this many images")


def _check_positive(flag: str, value: int | None) -> None:
    if value is not None and value < 1:
        raise DifflabError(f"{flag} must be at least 1, got {value}.")


def _extractor(args: argparse.Namespace, fallback: str | None) -> FeatureExtractor | None:
    """The extractor the flags ask for (``--features``, else ``fallback``); None: the library picks."""
    _check_positive("--batch-size", args.batch_size)
    _check_positive("--feature-size", args.feature_size)
    try:
        device = torch.device(args.device)
    except RuntimeError:
        raise DifflabError(f"--device {args.device!r} is not a torch device (try cpu).") from None
    name = args.features or fallback
    if args.feature_size is not None and name not in PRETRAINED_NETS:
        raise DifflabError(
            f"--feature-size applies to --features {' or '.join(PRETRAINED_NETS)} only."
        )
    if name is None:
        return None
    return build_feature_extractor(name, image_size=args.feature_size, device=device)


def _check_suffix(flag: str, path: str | None, suffix: str) -> None:
    """An output path: the suffix, and a place it can be written (checked before any work)."""
    if path is not None and Path(path).suffix.lower() != suffix:
        raise DifflabError(f"{flag} {path} must end in {suffix}.")
    if path is not None:
        check_output_path(path, flag)


def _write_json(path: str, result: dict[str, Any]) -> Path:
    out = Path(path)
    write_bytes_atomic(out, (json.dumps(result, indent=2) + "\n").encode())
    return out


def run_eval(args: argparse.Namespace) -> int:
    _check_positive("--n", args.n)
    _check_suffix("--out", args.out, ".json")
    _check_suffix("--grid", args.grid, ".png")
    extractor = _extractor(args, None)
    kept: list[torch.Tensor] = []
    start = time.perf_counter()
    show = not args.quiet and sys.stderr.isatty()

    def callback(done: int, total: int, images: torch.Tensor) -> None:
        if args.grid and sum(len(k) for k in kept) < GRID_IMAGES:
            kept.append(images[: GRID_IMAGES - sum(len(k) for k in kept)])
        if show:
            elapsed = time.perf_counter() - start
            print(f"\rsampled {done}/{total} images ({elapsed:.0f} s)", end="", file=sys.stderr)

    precision = resolve_precision(args.precision, torch.device("cpu"))
    pipeline = load_pipeline(args.checkpoint, precision=precision)
    guidance = guidance_from_args(args, pipeline)
    result = evaluate_pipeline(
        pipeline,
        n=args.n,
        sampler=args.sampler,
        steps=args.steps,
        eta=args.eta,
        spacing=sampler_spacing(args, pipeline, guidance),
        seed=args.seed,
        batch_size=args.batch_size,
        sigma_hat=args.sigma_hat,
        guidance=guidance,
        features=extractor,
        reference=args.reference,
        callback=callback,
        device=args.device,
    )
    result["checkpoint"] = args.checkpoint
    if show:
        print(file=sys.stderr)
    sampler = f"{args.sampler} S={args.steps} eta={args.eta:g}" + (
        " sigma-hat" if args.sigma_hat else ""
    )
    if guidance is not None:
        sampler += f", {guidance.describe()}"
    line = (
        f"{format_summary(result)} ({args.n} samples, {sampler}; sampling "
        f"{result['sample_seconds']:.1f} s, metrics {result['eval_seconds']:.1f} s)"
    )
    if args.grid:
        save_grid(torch.cat(kept), args.grid)
        line += f"; grid {Path(args.grid).resolve()}"
    if args.out:
        line += f"; results {_write_json(args.out, result).resolve()}"
    print(line)
    return 0


def run_fd(args: argparse.Namespace) -> int:
    _check_suffix("--out", args.out, ".json")
    _check_positive("--limit", args.limit)
    _check_positive("--image-size", args.image_size)
    extractor = _extractor(args, None)
    result = compare(
        args.a,
        args.b,
        features=extractor,
        split=args.split,
        image_size=args.image_size,
        limit=args.limit,
        batch_size=args.batch_size,
        device=args.device,
    )
    a, b = result["a"], result["b"]
    line = (
        f"{format_summary(result)} (A: {a['source']}, {a['n']} images; B: {b['source']}, "
        f"{b['n']} images)"
    )
    if args.out:
        line += f"; results {_write_json(args.out, result).resolve()}"
    print(line)
    return 0


def run_fd_stats(args: argparse.Namespace) -> int:
    _check_positive("--limit", args.limit)
    _check_positive("--image-size", args.image_size)
    if args.keep_features < 0:
        raise DifflabError(f"--keep-features must be 0 or more, got {args.keep_features}.")
    _check_suffix("--out", args.out, ".npz")
    out = Path(args.out)
    extractor = _extractor(args, args.features or default_features(args.data))
    stats = data_stats(
        args.data,
        features=extractor,
        split=args.split,
        image_size=args.image_size,
        limit=args.limit,
        batch_size=args.batch_size,
        keep_features=args.keep_features,
    )
    stats.save(out)
    kept = 0 if stats.features is None else len(stats.features)
    print(
        f"wrote {out.resolve()}: {stats.count} images of {stats.source} "
        f"({stats.image_size}×{stats.image_size}) in {stats.feature_space}, "
        f"{kept} feature rows kept for precision/recall"
    )
    return 0
