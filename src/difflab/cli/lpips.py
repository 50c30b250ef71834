"""``difflab lpips`` (perceptual distances between image files) and ``difflab lpips-eval``.

``difflab lpips IMG0 IMG1 [--spatial map.png]``, ``difflab lpips --dir0 A --dir1 B [--out
dists.csv]`` (files with the same name), ``difflab lpips --all-pairs DIR [--out dists.csv]``;
``difflab lpips-eval --mode 2afc|jnd --root DIR`` scores the metric against BAPPS judgements.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import itertools
import json
from pathlib import Path

import numpy as np
import torch

from difflab.data.folder import IMAGE_EXTENSIONS
from difflab.errors import DifflabError
from difflab.io.atomic import write_bytes_atomic
from difflab.io.images import save_png
from difflab.metrics.bapps import MODES, PAPER_2AFC, evaluate_bapps, read_image
from difflab.metrics.lpips import LPIPS, VERSIONS
from difflab.metrics.pretrained import NET_NAMES


def _add_metric_arguments(parser: argparse.ArgumentParser, default_batch: int) -> None:
    parser.add_argument(
        "--net", choices=NET_NAMES, default="alex", help="backbone (default alex, as the paper)"
    )
    parser.add_argument(
        "--uncalibrated",
        action="store_true",
        help="weight all channels equally (the paper's baseline) instead of the learned weights",
    )
    parser.add_argument("--version", choices=VERSIONS, default="0.1", help="LPIPS version")
    parser.add_argument(
        "--lin-weights", default=None, help="linear-layer file (.pth/.safetensors) to use instead"
    )
    parser.add_argument(
        "--backbone-weights", default=None, help="backbone state dict (required for squeeze)"
    )
    parser.add_argument("--batch-size", type=int, default=default_batch)
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")


def register(subparsers: argparse._SubParsersAction) -> None:
    lpips = subparsers.add_parser(
        "lpips", help="LPIPS perceptual distance between two images, two folders or all pairs"
    )
    lpips.add_argument("images", nargs="*", metavar="IMG", help="two image files to compare")
    lpips.add_argument("--dir0", default=None, help="folder of images ...")
    lpips.add_argument("--dir1", default=None, help="... compared with the same names here")
    lpips.add_argument("--all-pairs", default=None, metavar="DIR", help="every pair in DIR")
    lpips.add_argument(
        "--spatial", default=None, metavar="MAP.png", help="also save the distance map (2 images)"
    )
    lpips.add_argument(
        "--out", default=None, metavar="DISTS.csv", help="write file0,file1,distance"
    )
    _add_metric_arguments(lpips, default_batch=32)
    lpips.set_defaults(handler=run_lpips)

    evaluate = subparsers.add_parser(
        "lpips-eval", help="score LPIPS against human judgements in BAPPS-layout folders"
    )
    evaluate.add_argument("--mode", choices=MODES, required=True)
    evaluate.add_argument(
        "--root", required=True, help="a BAPPS folder, or a folder holding several (e.g. 2afc/val)"
    )
    evaluate.add_argument("--out", default=None, metavar="SCORES.json", help="write the scores")
    _add_metric_arguments(evaluate, default_batch=50)
    evaluate.set_defaults(handler=run_lpips_eval)


def _build_metric(args: argparse.Namespace) -> LPIPS:
    if args.batch_size < 1:
        raise DifflabError(f"--batch-size must be at least 1, got {args.batch_size}.")
    try:
        device = torch.device(args.device)
    except RuntimeError:
        raise DifflabError(f"--device {args.device!r} is not a torch device (try cpu).") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DifflabError(
            f"--device {args.device} asks for CUDA, which this machine lacks; use cpu."
        )
    metric = LPIPS(
        args.net,
        calibrated=not args.uncalibrated,
        version=args.version,
        lin_weights=args.lin_weights,
        backbone_weights=args.backbone_weights,
    )
    return metric.to(device)


def _label(args: argparse.Namespace) -> str:
    return f"{args.net}-{'net' if args.uncalibrated else 'lin'} v{args.version}"


def _image_files(folder: Path, flag: str) -> dict[str, Path]:
    if not folder.is_dir():
        raise DifflabError(f"{flag} {folder} is not a folder.")
    files = {
        p.name: p
        for p in sorted(folder.iterdir())
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS
    }
    if not files:
        raise DifflabError(f"{flag} {folder} holds no image files ({', '.join(IMAGE_EXTENSIONS)}).")
    return files


def _check_pair(path0: Path, image0: torch.Tensor, path1: Path, image1: torch.Tensor) -> None:
    if image0.shape != image1.shape:
        raise DifflabError(
            f"{path0} is {image0.shape[2]}×{image0.shape[1]} but {path1} is "
            f"{image1.shape[2]}×{image1.shape[1]}; LPIPS compares images of the same size, so "
            "resize one of them first."
        )


@torch.no_grad()
def _pair_distances(metric: LPIPS, pairs: list[tuple[Path, Path]], batch_size: int) -> list[float]:
    """Distances of file pairs, batched (consecutive pairs of one size share a batch)."""
    device = metric.input_gain.device
    out: list[float] = []
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start : start + batch_size]
        images = [(read_image(a), read_image(b)) for a, b in chunk]
        for (a, b), (x0, x1) in zip(chunk, images, strict=True):
            _check_pair(a, x0, b, x1)
        # split the chunk where the image size changes
        for _, group in itertools.groupby(images, key=lambda pair: pair[0].shape):
            group = list(group)
            x0 = torch.stack([g[0] for g in group]).to(device)
            x1 = torch.stack([g[1] for g in group]).to(device)
            out += metric(x0, x1).tolist()
    return out


@torch.no_grad()
def _all_pair_distances(
    metric: LPIPS, files: list[Path], batch_size: int
) -> list[tuple[Path, Path, float]]:
    """Every unordered pair: features once per image, then Eq. 1 for each pair."""
    device = metric.input_gain.device
    images = [read_image(p) for p in files]
    for path, image in zip(files, images, strict=True):
        _check_pair(files[0], images[0], path, image)
    features: list[list[torch.Tensor]] = []  # per batch of images, one tensor per tap
    for start in range(0, len(images), batch_size):
        x = metric.check_images(torch.stack(images[start : start + batch_size]).to(device))
        features.append(metric.normalized_features(x))
    taps = [torch.cat(per_tap) for per_tap in zip(*features, strict=True)]  # (N, C_l, H_l, W_l)
    index_pairs = list(itertools.combinations(range(len(files)), 2))
    rows = []
    for start in range(0, len(index_pairs), batch_size):
        chunk = torch.tensor(index_pairs[start : start + batch_size], device=device)  # (P, 2)
        d = metric.compare([t[chunk[:, 0]] for t in taps], [t[chunk[:, 1]] for t in taps])
        rows += [
            (files[i], files[j], v) for (i, j), v in zip(chunk.tolist(), d.tolist(), strict=True)
        ]
    return rows


def _write_csv(path: str, rows: list[tuple[Path, Path, float]]) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["file0", "file1", "distance"])
    writer.writerows([(str(a), str(b), f"{d:.6f}") for a, b, d in rows])
    write_bytes_atomic(path, buffer.getvalue().encode())


def _report(rows: list[tuple[Path, Path, float]], args: argparse.Namespace, what: str) -> None:
    if args.out:
        _write_csv(args.out, rows)
    else:
        for a, b, d in rows:
            print(f"{a.name}\t{b.name}\t{d:.4f}")
    values = np.array([d for _, _, d in rows])
    summary = f"{len(rows)} {what}: LPIPS {_label(args)} mean {values.mean():.4f}"
    if len(rows) > 1:
        summary += (
            f" (std {values.std(ddof=1):.4f}, min {values.min():.4f}, max {values.max():.4f})"
        )
    print(summary + (f"; distances in {Path(args.out).resolve()}" if args.out else ""))


def _save_map(distance_map: torch.Tensor, path: str) -> float:
    """(1, 1, H, W) map as an 8-bit grayscale PNG scaled to its maximum; returns the maximum."""
    if Path(path).suffix.lower() != ".png":
        raise DifflabError(f"--spatial {path} must end in .png.")
    values = distance_map[0, 0].float().cpu().numpy()
    peak = float(values.max())
    scaled = values / peak if peak > 0 else values
    save_png((np.clip(scaled, 0, 1) * 255).round().astype(np.uint8)[..., None], path)
    return peak


def run_lpips(args: argparse.Namespace) -> int:
    modes = [bool(args.images), bool(args.dir0 or args.dir1), bool(args.all_pairs)]
    if sum(modes) != 1:
        raise DifflabError(
            "give two image files, or --dir0 A --dir1 B, or --all-pairs DIR (exactly one of them)."
        )
    if args.spatial and not args.images:
        raise DifflabError("--spatial needs two image files (IMG0 IMG1).")
    if args.images:
        if len(args.images) != 2:
            raise DifflabError(f"give exactly two image files to compare, got {len(args.images)}.")
        path0, path1 = (Path(p) for p in args.images)
        x0, x1 = read_image(path0), read_image(path1)
        _check_pair(path0, x0, path1, x1)
        metric = _build_metric(args)
        device = metric.input_gain.device
        x0, x1 = x0[None].to(device), x1[None].to(device)  # (1, 3, H, W)
        with torch.no_grad():
            distance = metric(x0, x1).item()
            distance_map = metric(x0, x1, spatial=True) if args.spatial else None
        if args.out:
            _write_csv(args.out, [(path0, path1, distance)])
        print(f"LPIPS {_label(args)}: {distance:.4f}  ({path0} vs {path1})")
        if distance_map is not None:
            peak = _save_map(distance_map, args.spatial)
            print(f"distance map (white = {peak:.4f}) saved to {Path(args.spatial).resolve()}")
        return 0
    if args.all_pairs:
        files = list(_image_files(Path(args.all_pairs), "--all-pairs").values())
        if len(files) < 2:
            raise DifflabError(f"--all-pairs {args.all_pairs} needs at least two images.")
        metric = _build_metric(args)
        _report(_all_pair_distances(metric, files, args.batch_size), args, "pairs")
        return 0
    if not (args.dir0 and args.dir1):
        raise DifflabError("give both --dir0 and --dir1.")
    files0 = _image_files(Path(args.dir0), "--dir0")
    files1 = _image_files(Path(args.dir1), "--dir1")
    missing = [name for name in files0 if name not in files1]
    if missing:
        raise DifflabError(
            f"--dir1 {args.dir1} lacks {len(missing)} file(s) of --dir0, e.g. {missing[0]}; "
            "files are paired by name."
        )
    pairs = [(files0[name], files1[name]) for name in files0]
    metric = _build_metric(args)
    distances = _pair_distances(metric, pairs, args.batch_size)
    rows = [(a, b, d) for (a, b), d in zip(pairs, distances, strict=True)]
    _report(rows, args, "corresponding pairs")
    return 0


def run_lpips_eval(args: argparse.Namespace) -> int:
    metric = _build_metric(args)
    results = evaluate_bapps(
        metric, args.root, args.mode, batch_size=args.batch_size, device=args.device
    )
    kind = "2AFC score" if args.mode == "2afc" else "JND mAP"
    width = max(len(r.name) for r in results)
    print(f"LPIPS {_label(args)} on BAPPS {args.mode} ({kind}, %):")
    for r in results:
        human = f"  human {100 * r.human:5.1f}" if r.human is not None else ""
        print(f"  {r.name:<{width}}  n={r.count:<6d} {100 * r.score:5.1f}{human}")
    mean = float(np.mean([r.score for r in results]))
    if len(results) > 1:
        print(f"  {'mean':<{width}}  {'':8s} {100 * mean:5.1f}")
    if args.mode == "2afc":
        paper = ", ".join(f"{k} {v}" for k, v in PAPER_2AFC.items())
        print(f"paper, mean over the six 2AFC val sets: {paper}")
    if args.out:
        payload = {
            "metric": _label(args),
            "mode": args.mode,
            "sets": [dataclasses.asdict(r) for r in results],
            "mean": mean,
        }
        write_bytes_atomic(args.out, (json.dumps(payload, indent=2) + "\n").encode())
        print(f"scores written to {Path(args.out).resolve()}")
    return 0
