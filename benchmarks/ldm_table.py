"""Latent Diffusion's autoencoder table on emoji: reconstruction against f, KL vs VQ, loss ablation.

Rombach et al., "High-Resolution Image Synthesis with Latent Diffusion Models" (CVPR 2022),
measured in the shape of its reconstruction table at a size a 2-core CPU can afford:

1. **autoencoders**: ``configs/ae_emoji_f4.yaml`` trained for ``--steps`` at ``--image-size`` px
   (base_channels ``--base-channels``, one residual block per level) with the LDM loss (L1 + LPIPS-VGG
   + KL) at f = 2, 4, 8, the VQ regulariser at f = 4, and the loss ablation at f = 4 (L1 only;
   L1 + LPIPS; L1 + LPIPS + PatchGAN from half-way). Held-out emoji (the test split) are
   reconstructed: PSNR (on [0, 1] pixels, per image then averaged), SSIM (scikit-image, per image,
   RGB), LPIPS-Alex, rFD-VGG16 (FD-VGG16 of the reconstructions against the originals), latent
   shape, and encode / decode images per second (batches of 64, one process).

Goals (issue 14): reconstruction degrades monotonically with f; at f = 4 PSNR >= 27 dB and
LPIPS-Alex <= 0.05 (the issue states them at 64 px after a full training run); LPIPS + GAN lower
rFD against L1 alone at a PSNR within 1 dB.

    python benchmarks/ldm_table.py --threads 1            # make bench-ldm
    python benchmarks/ldm_table.py --train-only f2,f8     # train some runs (e.g. one per core)
    python benchmarks/ldm_table.py --quick                # smoke test (numbers measure nothing)

Trained runs are kept in ``runs/ldm_table/`` and reused. Writes ``ldm_table.{json,md,png}``
(``ldm_table_quick.*`` with ``--quick``).
"""

from __future__ import annotations

import argparse
import itertools
import json
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

import common as bench
from difflab.autoencoders.kl import load_autoencoder
from difflab.config import load_config
from difflab.data import load_dataset
from difflab.metrics import LPIPS
from difflab.metrics.features import build_feature_extractor, extract_features
from difflab.metrics.frechet import FeatureStats
from difflab.training.autoencoder_loop import autoencoder_stats, reconstruct, train_autoencoder

NAME = "ldm_table"
CONFIG = bench.REPO / "configs" / "ae_emoji_f4.yaml"
RUN_ROOT = bench.REPO / "runs" / "ldm_table"
# name -> (f, regulariser, loss: "l1" | "lpips" | "lpips+gan")
VARIANTS: dict[str, tuple[int, str, str]] = {
    "f2": (2, "kl", "lpips"),
    "f4": (4, "kl", "lpips"),
    "f8": (8, "kl", "lpips"),
    "f4-vq": (4, "vq", "lpips"),
    "f4-l1": (4, "kl", "l1"),
    "f4-gan": (4, "kl", "lpips+gan"),
}
NUM_CODES = 512  # VQ codebook at this size (the paper's VQ-f4 has 8192)
PSNR_GOAL_DB = 27.0
LPIPS_GOAL = 0.05
SPEED_BATCH = 64


def overrides_of(name: str, args: argparse.Namespace, out_dir: Path) -> list[str]:
    """The ``key=value`` overrides of ``configs/ae_emoji_f4.yaml`` that make variant ``name``."""
    f, regularizer, loss = VARIANTS[name]
    values = [
        f"model.preset=ae-f{f}",
        f"model.regularizer={regularizer}",
        f"model.base_channels={args.base_channels}",
        "model.num_res_blocks=1",
        f"model.loss.perceptual_weight={0.0 if loss == 'l1' else 1.0}",
        f"model.loss.disc_start={args.steps // 2 if loss == 'lpips+gan' else args.steps + 1}",
        f"data.image_size={args.image_size}",
        f"train.steps={args.steps}",
        f"train.batch_size={args.batch_size}",
        f"train.out_dir={out_dir}",
        "train.sample_every=100000",
        f"train.checkpoint_every={max(args.steps // 4, 1)}",
        "train.log_every=25",
    ]
    if regularizer == "vq":
        values += [f"model.num_codes={NUM_CODES}"]
    if args.quick:
        values += [
            "data.limit=8",
            "model.loss.disc_channels=8",
            "train.log_every=1000",
        ]
    return values


def run_dir(name: str, args: argparse.Namespace, root: Path) -> Path:
    return root / f"{name}-{args.image_size}px-c{args.base_channels}-{args.steps}"


def train_variant(name: str, args: argparse.Namespace, root: Path) -> dict[str, Any]:
    """Train ``name`` unless its exported model exists; its training time (kept beside it)."""
    out_dir = run_dir(name, args, root)
    timing = out_dir / "bench_train_seconds.json"
    if not (out_dir / "model.safetensors").exists():
        config = load_config(CONFIG, overrides_of(name, args, out_dir))
        start = time.perf_counter()
        train_autoencoder(
            config, resume=(out_dir / "checkpoints").exists(), progress=not args.quick
        )
        seconds = time.perf_counter() - start
        timing.write_text(json.dumps({"seconds": seconds, "threads": torch.get_num_threads()}))
    return json.loads(timing.read_text()) if timing.exists() else {"seconds": None}


def ssim_of(x: torch.Tensor, y: torch.Tensor) -> float:
    """Mean SSIM (scikit-image, RGB, on [0, 1] pixels) of image pairs ``(N, C, H, W)`` in [-1, 1]."""
    from skimage.metrics import structural_similarity

    a = ((x + 1) / 2).clamp(0, 1).permute(0, 2, 3, 1).numpy()  # (N, H, W, C)
    b = ((y + 1) / 2).clamp(0, 1).permute(0, 2, 3, 1).numpy()
    side = min(7, x.shape[-1] - (1 - x.shape[-1] % 2))
    return float(
        np.mean(
            [
                structural_similarity(p, q, channel_axis=2, data_range=1.0, win_size=side)
                for p, q in zip(a, b, strict=True)
            ]
        )
    )


@torch.inference_mode()
def codec_speed(model: Any, images: torch.Tensor, repeats: int) -> dict[str, float]:
    """Encode and decode images per second of one batch (median of ``repeats`` after a warm-up)."""
    model.eval()
    batch = images[:SPEED_BATCH]
    z = model.encode(batch)
    encode = bench.timed(lambda: model.encode(batch), warmup=1, repeats=repeats)
    decode = bench.timed(lambda: model.decode(z), warmup=1, repeats=repeats)
    return {
        "encode_images_per_s": len(batch) / encode.median,
        "decode_images_per_s": len(batch) / decode.median,
        "speed_batch": len(batch),
    }


def evaluate_variant(
    name: str,
    args: argparse.Namespace,
    root: Path,
    test: torch.Tensor,
    reference: FeatureStats,
    lpips: LPIPS,
    vgg: Any,
) -> dict[str, Any]:
    """Held-out reconstruction numbers and codec speed of the trained variant ``name``."""
    f, regularizer, loss = VARIANTS[name]
    model = load_autoencoder(run_dir(name, args, root) / "model.safetensors")
    recon = reconstruct(model, test)  # (N, C, H, W) in [-1, 1]
    stats = autoencoder_stats(model, test)
    with torch.inference_mode():
        distances = torch.cat(
            [lpips(recon[s : s + 64], test[s : s + 64]) for s in range(0, len(test), 64)]
        )
        features = extract_features(vgg, recon, batch_size=64)
    rfd = FeatureStats.from_features(features, vgg.space.id, keep_features=0)
    row = {
        "variant": name,
        "f": f,
        "regularizer": regularizer,
        "loss": loss,
        "latent_shape": list(model.config.latent_shape),
        "parameters": sum(p.numel() for p in model.parameters()),
        "psnr": stats["psnr"],
        "mse": stats["mse"],
        "ssim": ssim_of(recon, test),
        "lpips_alex": float(distances.mean()),
        "rfd_vgg16": reference.frechet_distance(rfd),
        **{k: stats[k] for k in ("codebook_usage", "perplexity") if k in stats},
        **codec_speed(model, test, 1 if args.quick else 5),
    }
    print(
        f"{name:7s} PSNR {row['psnr']:.2f} dB, SSIM {row['ssim']:.3f}, LPIPS-Alex "
        f"{row['lpips_alex']:.4f}, rFD-VGG16 {row['rfd_vgg16']:.2f}",
        flush=True,
    )
    return row


def goals_of(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The issue's goals, each with its verdict and the numbers behind it."""
    by = {r["variant"]: r for r in rows}
    goals: dict[str, Any] = {}
    kl = [by[n] for n in ("f2", "f4", "f8") if n in by]
    if len(kl) > 1:
        psnr = [r["psnr"] for r in kl]
        lp = [r["lpips_alex"] for r in kl]
        goals["monotone_in_f"] = {
            "met": all(a > b for a, b in itertools.pairwise(psnr))
            and all(a < b for a, b in itertools.pairwise(lp)),
            "psnr": psnr,
            "lpips_alex": lp,
        }
    if "f4" in by:
        goals["f4_psnr"] = {"met": by["f4"]["psnr"] >= PSNR_GOAL_DB, "value": by["f4"]["psnr"]}
        goals["f4_lpips"] = {
            "met": by["f4"]["lpips_alex"] <= LPIPS_GOAL,
            "value": by["f4"]["lpips_alex"],
        }
    if "f4-l1" in by and "f4-gan" in by:
        l1, gan = by["f4-l1"], by["f4-gan"]
        goals["gan_lowers_rfd"] = {
            "met": gan["rfd_vgg16"] < l1["rfd_vgg16"] and abs(gan["psnr"] - l1["psnr"]) <= 1.0,
            "rfd": [l1["rfd_vgg16"], gan["rfd_vgg16"]],
            "psnr": [l1["psnr"], gan["psnr"]],
        }
    return goals


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """Train (or reuse) every variant, then measure each on the held-out emoji."""
    report: dict[str, Any] = {"machine": bench.machine_info(), "quick": args.quick}
    names = bench.comma_list(args.variants)
    settings = {k: getattr(args, k) for k in ("steps", "batch_size", "image_size", "base_channels")}
    report["settings"] = {**settings, "num_res_blocks": 1, "num_codes": NUM_CODES}
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch) if args.quick else RUN_ROOT
        training = {name: train_variant(name, args, root) for name in names}
        start = time.perf_counter()
        test = load_dataset(
            "emoji", split="test", image_size=args.image_size, limit=8 if args.quick else None
        ).images
        lpips, vgg = LPIPS("alex").eval(), build_feature_extractor("vgg16").eval()
        with torch.inference_mode():
            reference = FeatureStats.from_features(
                extract_features(vgg, test, batch_size=64), vgg.space.id, keep_features=0
            )
        rows = []
        for name in names:
            row = evaluate_variant(name, args, root, test, reference, lpips, vgg)
            row["train_seconds"] = training[name].get("seconds")
            row["train_threads"] = training[name].get("threads")
            rows.append(row)
    report["held_out"] = {"dataset": "emoji", "split": "test", "n": len(test)}
    report["autoencoders"] = rows
    report["goals"] = goals_of(rows)
    report["eval_seconds"] = time.perf_counter() - start
    return report


# ----------------------------------------------------------------------------- report

LOSS_NAMES = {"l1": "L1", "lpips": "L1 + LPIPS", "lpips+gan": "L1 + LPIPS + GAN"}


def verdict(goal: dict[str, Any] | None) -> str:
    return "not measured" if goal is None else ("met" if goal["met"] else "MISSED")


def autoencoder_rows(rows: list[dict[str, Any]]) -> list[list[Any]]:
    return [
        [
            r["variant"],
            r["f"],
            r["regularizer"].upper(),
            LOSS_NAMES[r["loss"]],
            "x".join(str(s) for s in r["latent_shape"]),
            f"{r['psnr']:.2f}",
            f"{r['ssim']:.3f}",
            f"{r['lpips_alex']:.4f}",
            f"{r['rfd_vgg16']:.1f}",
            f"{r['encode_images_per_s']:.0f}",
            f"{r['decode_images_per_s']:.0f}",
            bench.fmt(None if r["train_seconds"] is None else r["train_seconds"] / 60, 1, ""),
        ]
        for r in rows
    ]


HEADER = [
    "run",
    "f",
    "reg.",
    "loss",
    "latent",
    "PSNR (dB)",
    "SSIM",
    "LPIPS-Alex",
    "rFD-VGG16",
    "encode img/s",
    "decode img/s",
    "train min",
]


def goals_markdown(goals: dict[str, Any]) -> str:
    lines = []
    g = goals.get("monotone_in_f")
    if g:
        lines.append(
            f"- Reconstruction degrades monotonically with f (PSNR falls, LPIPS rises over f = 2, 4,"
            f" 8): **{verdict(g)}** (PSNR {', '.join(f'{v:.2f}' for v in g['psnr'])} dB; LPIPS "
            f"{', '.join(f'{v:.4f}' for v in g['lpips_alex'])})."
        )
    for key, text, unit in (
        ("f4_psnr", f"f = 4 PSNR >= {PSNR_GOAL_DB:g} dB", " dB"),
        ("f4_lpips", f"f = 4 LPIPS-Alex <= {LPIPS_GOAL:g}", ""),
    ):
        if key in goals:
            lines.append(f"- {text}: **{verdict(goals[key])}** ({goals[key]['value']:.3f}{unit}).")
    g = goals.get("gan_lowers_rfd")
    if g:
        lines.append(
            f"- L1 + LPIPS + GAN lowers rFD-VGG16 against L1 alone at a PSNR within 1 dB: "
            f"**{verdict(g)}** (rFD {g['rfd'][0]:.1f} -> {g['rfd'][1]:.1f}, PSNR "
            f"{g['psnr'][0]:.2f} -> {g['psnr'][1]:.2f} dB)."
        )
    return "\n".join(lines)


def render_markdown(report: dict[str, Any]) -> str:
    """The autoencoder table, the goals and the settings, from the JSON."""
    s, held = report["settings"], report["held_out"]
    rows = report["autoencoders"]
    vq = [r for r in rows if "codebook_usage" in r]
    vq_line = "".join(
        f"{r['variant']}: {100 * r['codebook_usage']:.1f} % of the {s['num_codes']} codes in use, "
        f"perplexity {r['perplexity']:.0f}. "
        for r in vq
    )
    return bench.sections(
        f"# Latent Diffusion autoencoders{' (quick: numbers measure nothing)' if report['quick'] else ''}",
        f"Every autoencoder: {s['image_size']} px emoji, base_channels {s['base_channels']}, "
        f"{s['num_res_blocks']} residual block per level, {s['steps']} steps of batch "
        f"{s['batch_size']}, one thread each (two trainings side by side on the 2 cores). "
        f"Held-out: the {held['n']} {held['dataset']} {held['split']} images. A CPU-budget run, far "
        "from the paper's (hundreds of thousands of steps at 256 px) and from the issue's 64 px.",
        "## Reconstruction (held-out emoji)",
        bench.markdown_table(HEADER, autoencoder_rows(rows)),
        "PSNR on [0, 1] pixels per image, then averaged; SSIM per image (scikit-image, RGB); "
        "rFD-VGG16: FD-VGG16 of the reconstructions against the originals; encode/decode: one "
        f"batch of {rows[0]['speed_batch']}, 1 thread. {vq_line}".strip(),
        "## Goals (issue 14)",
        goals_markdown(report["goals"]),
        "" if report["quick"] else bench.machine_line(report["machine"]),
    )


def figures(report: dict[str, Any], out_dir: Path) -> list[Path]:
    """PSNR, LPIPS-Alex and rFD-VGG16 of every autoencoder."""
    rows = report["autoencoders"]
    figure, axes = bench.pyplot().subplots(1, 3, figsize=(12, 3.5))
    names = [r["variant"] for r in rows]
    for axis, key, label in (
        (axes[0], "psnr", "PSNR (dB), higher is better"),
        (axes[1], "lpips_alex", "LPIPS-Alex, lower is better"),
        (axes[2], "rfd_vgg16", "rFD-VGG16, lower is better"),
    ):
        axis.bar(range(len(rows)), [r[key] for r in rows], color="tab:blue")
        axis.set_xticks(range(len(rows)), names, rotation=20, fontsize=8)
        axis.set_title(label, fontsize=9)
    return [bench.save_figure(figure, out_dir / f"{bench.stem_of(NAME, report['quick'])}.png")]


def main(argv: Sequence[str] | None = None) -> int:
    parser = bench.bench_parser(__doc__, "smoke test: 8 images of 32 px, 2 steps, tiny networks")
    parser.add_argument("--steps", type=int, default=250, help="training steps per autoencoder")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--base-channels", type=int, default=32)
    parser.add_argument(
        "--variants", default=",".join(VARIANTS), help=f"comma list of {tuple(VARIANTS)}"
    )
    parser.add_argument("--train-only", help="comma list of variants: train them, report nothing")
    args = bench.parse(parser, argv)
    if args.quick:
        args.steps, args.batch_size, args.image_size, args.base_channels = 2, 4, 32, 8
    unknown = set(bench.comma_list(args.train_only or args.variants)) - set(VARIANTS)
    if unknown:
        parser.error(f"unknown variants {sorted(unknown)}; choose from {tuple(VARIANTS)}")
    if args.train_only:
        for name in bench.comma_list(args.train_only):
            print(name, train_variant(name, args, RUN_ROOT), flush=True)
        return 0
    return bench.publish(args, NAME, lambda: measure(args), render_markdown, figures)


if __name__ == "__main__":
    raise SystemExit(main())
