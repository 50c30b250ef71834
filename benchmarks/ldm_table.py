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

2. **latent**: pixel vs latent diffusion, the same recipe trained for the same wall clock on
   pixels and on the f = 2, 4, 8 latents (and a DiT-S/2 on f = 4): FD-VGG16, images/s, s/sample.
3. **shipped**: the shipped ``weights/ae_emoji_f4`` (its reconstruction row, as in part 1) and
   ``weights/ldm_emoji`` (FD-VGG16 of samples for the held-out emoji's names and groups, at
   classifier-free guidance w = 1 and 3; seconds per sample, decoder included).

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
import shutil
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
from difflab.data import ImageDataset, load_dataset
from difflab.io.checkpoint import load_checkpoint_meta
from difflab.io.weights import resolve_checkpoint
from difflab.metrics import LPIPS
from difflab.metrics.features import build_feature_extractor, extract_features
from difflab.metrics.frechet import FeatureStats
from difflab.models import forward_gflops
from difflab.pipelines import evaluate_pipeline, load_pipeline
from difflab.samplers import Guidance
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
    row = {"variant": name, "f": f, "regularizer": regularizer, "loss": loss}
    row |= reconstruction_row(model, test, reference, lpips, vgg, 1 if args.quick else 5)
    print(
        f"{name:7s} PSNR {row['psnr']:.2f} dB, SSIM {row['ssim']:.3f}, LPIPS-Alex "
        f"{row['lpips_alex']:.4f}, rFD-VGG16 {row['rfd_vgg16']:.2f}",
        flush=True,
    )
    return row


def reconstruction_row(
    model: Any,
    test: torch.Tensor,
    reference: FeatureStats,
    lpips: LPIPS,
    vgg: Any,
    repeats: int,
) -> dict[str, Any]:
    """PSNR, SSIM, LPIPS-Alex, rFD-VGG16 of ``model``'s reconstructions of ``test`` (N, C, H, W);
    latent shape, parameters and codec speed."""
    recon = reconstruct(model, test)  # (N, C, H, W) in [-1, 1]
    stats = autoencoder_stats(model, test)
    with torch.inference_mode():
        distances = torch.cat(
            [lpips(recon[s : s + 64], test[s : s + 64]) for s in range(0, len(test), 64)]
        )
        features = extract_features(vgg, recon, batch_size=64)
    rfd = FeatureStats.from_features(features, vgg.space.id, keep_features=0)
    return {
        "latent_shape": list(model.config.latent_shape),
        "parameters": sum(p.numel() for p in model.parameters()),
        "psnr": stats["psnr"],
        "mse": stats["mse"],
        "ssim": ssim_of(recon, test),
        "lpips_alex": float(distances.mean()),
        "rfd_vgg16": reference.frechet_distance(rfd),
        **{k: stats[k] for k in ("codebook_usage", "perplexity") if k in stats},
        **codec_speed(model, test, repeats),
    }


# ----------------------------------------------------------------------------- pixel vs latent

LATENT_RUNS: dict[str, int] = {"ldm-f1": 1, "ldm-f2": 2, "ldm-f4": 4, "ldm-f8": 8, "dit-f4": 4}
"""Run name -> f (1: pixels). ``dit-*`` runs train a DiT instead of the U-Net."""
BACKBONE_PRESETS = {"ldm": "unet-mnist", "dit": "dit-mnist-s-2"}
"""The U-Net recipe, and the DiT the DiT paper trains on latents (DiT-S/2 at hidden 128, depth 6:
16 tokens of a 3x8x8 latent, 0.040 forward GFLOPs against the U-Net's 0.031 there)."""


def backbone_preset(name: str) -> str:
    return BACKBONE_PRESETS[name.split("-")[0]]


DIFFUSION_CONFIG = bench.REPO / "configs" / "digits_tiny.yaml"


def diffusion_overrides(
    name: str, args: argparse.Namespace, out_dir: Path, steps: int
) -> list[str]:
    """The same recipe (unet-mnist or DiT-S/2 sizes, T = 1000) on pixels or a part-1 latent."""
    f = LATENT_RUNS[name]
    values = [
        "data.name=emoji",
        f"data.image_size={args.image_size}",
        f"model.preset={backbone_preset(name)}",
        "diffusion.num_timesteps=1000",
        f"train.steps={steps}",
        f"train.batch_size={args.diffusion_batch_size}",
        "train.lr=0.0005",
        f"train.log_every={min(5, steps)}",
        "train.sample_every=100000",
        f"train.sample_steps={args.sample_steps}",  # the end-of-run grid, as the benchmark samples
        f"train.checkpoint_every={max(steps, 1)}",
        f"train.out_dir={out_dir}",
    ]
    if f > 1:
        values.append(f"autoencoder={run_dir(f'f{f}', args, out_dir.parent) / 'model.safetensors'}")
    if args.quick:
        values.append("data.limit=8")
    return values


def last_rate(out_dir: Path) -> float:
    """Training images per second in the last logged interval of a run's metrics.jsonl."""
    lines = (out_dir / "metrics.jsonl").read_text().splitlines()
    return float(json.loads(lines[-1])["images_per_s"])


def train_latent_run(name: str, args: argparse.Namespace, root: Path) -> dict[str, Any]:
    """Train ``name`` for ``--budget-min`` of wall clock (its steps from a short timed probe)."""
    from difflab.training.loop import train as train_diffusion

    out_dir = root / f"{name}-{args.image_size}px-{args.budget_min:g}min"
    timing = out_dir / "bench_train_seconds.json"
    if LATENT_RUNS[name] > 1:  # its autoencoder (part 1's run, trained here when missing)
        train_variant(f"f{LATENT_RUNS[name]}", args, root)
    if not (out_dir / "model.safetensors").exists():
        probe = root / f"probe-{name}-{args.image_size}px"
        shutil.rmtree(probe, ignore_errors=True)
        probe_steps = 2 if args.quick else 15
        config = load_config(DIFFUSION_CONFIG, diffusion_overrides(name, args, probe, probe_steps))
        train_diffusion(config, progress=False)
        rate = last_rate(probe)
        steps = max(int(args.budget_min * 60 * rate / args.diffusion_batch_size), 2)
        config = load_config(DIFFUSION_CONFIG, diffusion_overrides(name, args, out_dir, steps))
        start = time.perf_counter()
        train_diffusion(config, resume=(out_dir / "checkpoints").exists(), progress=not args.quick)
        seconds = time.perf_counter() - start
        timing.write_text(
            json.dumps({"seconds": seconds, "steps": steps, "images_per_s": last_rate(out_dir)})
        )
    return {**json.loads(timing.read_text()), "path": str(out_dir / "model.safetensors")}


def evaluate_latent_run(
    name: str, trained: dict[str, Any], args: argparse.Namespace, reference: FeatureStats, vgg: Any
) -> dict[str, Any]:
    """FD-VGG16 of ``--n`` DDIM samples against the held-out emoji; seconds per sample."""
    pipeline = load_pipeline(trained["path"])
    result = evaluate_pipeline(
        pipeline, args.n, steps=args.sample_steps, seed=0, features=vgg, reference=reference
    )
    row = {
        "run": name,
        "f": LATENT_RUNS[name],
        "network": backbone_preset(name),
        "gflops": forward_gflops(pipeline.description.arch, pipeline.description.config),
        "train_seconds": trained["seconds"],
        "train_steps": trained["steps"],
        "train_images_per_s": trained["images_per_s"],
        "fd_vgg16": result["fd"],
        "n": args.n,
        "sample_steps": args.sample_steps,
        "sample_seconds_per_image": result["sample_seconds"] / args.n,
    }
    print(f"{name}: FD-VGG16 {row['fd_vgg16']:.1f}, {row['sample_seconds_per_image']:.3f} s/image")
    return row


# ----------------------------------------------------------------------------- shipped models

SHIPPED_AUTOENCODER, SHIPPED_LATENT_MODEL = "ae_emoji_f4", "ldm_emoji"
SHIPPED_GUIDANCE = (1.0, 3.0)  # conditional, and guided


def evaluate_shipped(
    args: argparse.Namespace,
    test_set: ImageDataset,
    reference: FeatureStats,
    lpips: LPIPS,
    vgg: Any,
) -> dict[str, Any]:
    """The shipped autoencoder's reconstruction row; FD-VGG16 of the shipped latent model's samples
    for the first ``--n`` held-out emoji (their names as captions, their groups as labels)."""
    autoencoder_path = resolve_checkpoint(SHIPPED_AUTOENCODER)
    autoencoder = load_autoencoder(autoencoder_path)
    repeats = 1 if args.quick else 5
    shipped: dict[str, Any] = {
        "autoencoder": {
            "name": SHIPPED_AUTOENCODER,
            **reconstruction_row(autoencoder, test_set.images, reference, lpips, vgg, repeats),
            "training": load_checkpoint_meta(autoencoder_path).get("training"),
        }
    }
    pipeline = load_pipeline(SHIPPED_LATENT_MODEL)
    n = min(args.n, len(test_set.images))
    cond = pipeline.caption_conditioning(list(test_set.captions[:n]), test_set.labels[:n])
    rows = []
    for scale in SHIPPED_GUIDANCE:
        start = time.perf_counter()
        images = pipeline.generate(
            n, cond, seed=0, steps=args.sample_steps, guidance=Guidance(guidance_scale=scale)
        )  # (n, 3, H, W)
        seconds = time.perf_counter() - start
        with torch.inference_mode():
            features = extract_features(vgg, images, batch_size=64)
        stats = FeatureStats.from_features(features, vgg.space.id, keep_features=0)
        rows.append(
            {
                "guidance_scale": scale,
                "n": n,
                "sample_steps": args.sample_steps,
                "fd_vgg16": reference.frechet_distance(stats),
                "sample_seconds_per_image": seconds / n,
            }
        )
        print(f"{SHIPPED_LATENT_MODEL} w={scale:g}: FD-VGG16 {rows[-1]['fd_vgg16']:.1f}")
    shipped["latent_model"] = {
        "name": SHIPPED_LATENT_MODEL,
        "samples": rows,
        "training": load_checkpoint_meta(resolve_checkpoint(SHIPPED_LATENT_MODEL)).get("training"),
    }
    return shipped


def minutes_of(training: dict[str, Any] | None) -> str:
    return bench.fmt(None if not training else training["seconds"] / 60, 0, "not recorded")


def shipped_markdown(shipped: dict[str, Any]) -> str:
    """The shipped autoencoder's row and the shipped latent model's sample quality."""
    ae, ldm = shipped["autoencoder"], shipped["latent_model"]
    return bench.sections(
        "## Shipped models (weights/ae_emoji_f4, weights/ldm_emoji)",
        bench.markdown_table(
            ["model", "latent", "PSNR (dB)", "SSIM", "LPIPS-Alex", "rFD-VGG16", "train min"],
            [
                [
                    ae["name"],
                    "x".join(str(v) for v in ae["latent_shape"]),
                    f"{ae['psnr']:.2f}",
                    f"{ae['ssim']:.3f}",
                    f"{ae['lpips_alex']:.4f}",
                    f"{ae['rfd_vgg16']:.1f}",
                    minutes_of(ae["training"]),
                ]
            ],
        ),
        bench.markdown_table(
            ["model", "w", "n", "DDIM steps", "FD-VGG16", "s / sample", "train min"],
            [
                [
                    ldm["name"],
                    f"{r['guidance_scale']:g}",
                    r["n"],
                    r["sample_steps"],
                    f"{r['fd_vgg16']:.1f}",
                    f"{r['sample_seconds_per_image']:.3f}",
                    minutes_of(ldm["training"]),
                ]
                for r in ldm["samples"]
            ],
        ),
        "Samples are drawn for the held-out emoji's own names (captions the model never saw; some "
        "hold words outside its vocabulary) and groups, and scored against those emoji.",
    )


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


def latent_goals_of(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """f = 4 against pixels: a lower FD at the same training time, and >= 4x faster sampling."""
    by = {r["f"]: r for r in rows if r.get("network", "unet-mnist") == "unet-mnist"}
    if 1 not in by or 4 not in by:
        return {}
    pixel, f4 = by[1], by[4]
    speedup = pixel["sample_seconds_per_image"] / f4["sample_seconds_per_image"]
    return {
        "f4_lower_fd": {
            "met": f4["fd_vgg16"] < pixel["fd_vgg16"],
            "fd": [pixel["fd_vgg16"], f4["fd_vgg16"]],
        },
        "f4_sampling_4x": {"met": speedup >= 4, "speedup": speedup},
    }


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """Train (or reuse) every run of the parts asked for, then measure each on the held-out
    emoji; a part not asked for is carried over from the JSON already in ``--out-dir``."""
    parts = bench.comma_list(args.parts)
    previous = args.out_dir / f"{bench.stem_of(NAME, args.quick)}.json"
    report: dict[str, Any] = bench.read_json(previous) if previous.is_file() else {}
    report.update(machine=bench.machine_info(), quick=args.quick)
    settings = {k: getattr(args, k) for k in ("steps", "batch_size", "image_size", "base_channels")}
    report["settings"] = {**settings, "num_res_blocks": 1, "num_codes": NUM_CODES}
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch) if args.quick else RUN_ROOT
        start = time.perf_counter()
        test_set = load_dataset(
            "emoji", split="test", image_size=args.image_size, limit=8 if args.quick else None
        )
        test = test_set.images  # (N, 3, H, W)
        vgg = build_feature_extractor("vgg16").eval()
        with torch.inference_mode():
            reference = FeatureStats.from_features(
                extract_features(vgg, test, batch_size=64), vgg.space.id, keep_features=0
            )
        report["held_out"] = {"dataset": "emoji", "split": "test", "n": len(test)}
        if "autoencoders" in parts:
            names = bench.comma_list(args.variants)
            training = {name: train_variant(name, args, root) for name in names}
            lpips, rows = LPIPS("alex").eval(), []
            for name in names:
                row = evaluate_variant(name, args, root, test, reference, lpips, vgg)
                row["train_seconds"] = training[name].get("seconds")
                row["train_threads"] = training[name].get("threads")
                rows.append(row)
            report["autoencoders"] = rows
            report["goals"] = goals_of(rows)
        if "shipped" in parts:
            report["shipped"] = evaluate_shipped(args, test_set, reference, LPIPS("alex"), vgg)
        if "latent" in parts:
            runs = bench.comma_list(args.latent_runs)
            trained = {name: train_latent_run(name, args, root) for name in runs}
            report["latent_settings"] = {
                k: getattr(args, k)
                for k in ("budget_min", "diffusion_batch_size", "n", "sample_steps")
            }
            report["pixel_vs_latent"] = [
                evaluate_latent_run(name, trained[name], args, reference, vgg) for name in runs
            ]
            report["latent_goals"] = latent_goals_of(report["pixel_vs_latent"])
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


def latent_markdown(report: dict[str, Any]) -> str:
    """Pixel vs latent diffusion at the same training wall clock, and the issue's goals."""
    s, rows = report["latent_settings"], report["pixel_vs_latent"]
    table = [
        [
            "pixels" if r["f"] == 1 else f"latent f = {r['f']}",
            r.get("network", "unet-mnist"),
            bench.fmt(r.get("gflops"), 3, "n/a"),
            r["f"],
            f"{r['train_seconds'] / 60:.1f}",
            r["train_steps"],
            f"{r['train_images_per_s']:.1f}",
            f"{r['fd_vgg16']:.1f}",
            f"{r['sample_seconds_per_image']:.3f}",
        ]
        for r in rows
    ]
    goals = report.get("latent_goals") or {}
    lines = []
    if goals:
        g = goals["f4_lower_fd"]
        lines.append(
            f"- f = 4 reaches a lower FD-VGG16 than pixels at the same training time: "
            f"**{verdict(g)}** ({g['fd'][0]:.1f} pixels, {g['fd'][1]:.1f} f = 4)."
        )
        g = goals["f4_sampling_4x"]
        lines.append(
            f"- f = 4 samples >= 4x faster than pixels, decoder included: **{verdict(g)}** "
            f"({g['speedup']:.1f}x)."
        )
    return bench.sections(
        "## Pixel vs latent diffusion (same recipe, same training wall clock)",
        "unet-mnist sizes (base_channels 32, channel_mult 1, 2, 2, one residual block per level; its "
        "attention sits at 7x7, so none runs at these sizes); dit-mnist-s-2 is DiT-S/2 at hidden "
        "128, depth 6 (the DiT paper's setting: a transformer on the latents); GFLOPs: one forward "
        "pass on one sample (a multiply-add = 2), "
        f"T = 1000 linear, batch {s['diffusion_batch_size']}, lr 5e-4, {s['budget_min']:g} min of "
        "training each (steps = budget x the images/s of a 15-step probe), one thread; latents are "
        f"those of the KL autoencoders above. FD-VGG16 of n = {s['n']} DDIM-{s['sample_steps']} "
        "samples against the held-out emoji; seconds per sample include the decoder. Train min is "
        "the run's own wall clock: where the load changed between probe and run (another job "
        "started or ended on the other core) a run got more or less than the budget.",
        bench.markdown_table(
            [
                "space",
                "network",
                "GFLOPs",
                "f",
                "train min",
                "steps",
                "train img/s",
                "FD-VGG16",
                "s / sample",
            ],
            table,
        ),
        "\n".join(lines),
    )


def autoencoders_markdown(rows: list[dict[str, Any]], vq_line: str) -> str:
    """The reconstruction table and the autoencoder goals."""
    return bench.sections(
        "## Reconstruction (held-out emoji)",
        bench.markdown_table(HEADER, autoencoder_rows(rows)),
        "PSNR on [0, 1] pixels per image, then averaged; SSIM per image (scikit-image, RGB); "
        "rFD-VGG16: FD-VGG16 of the reconstructions against the originals; encode/decode: one "
        f"batch of {rows[0]['speed_batch']}, 1 thread. {vq_line}".strip(),
        "## Goals (issue 14)",
        goals_markdown(goals_of(rows)),
    )


def render_markdown(report: dict[str, Any]) -> str:
    """The autoencoder table, the goals and the settings, from the JSON."""
    s, held = report["settings"], report["held_out"]
    rows = report.get("autoencoders") or []
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
        autoencoders_markdown(rows, vq_line) if rows else "",
        latent_markdown(report) if report.get("pixel_vs_latent") else "",
        shipped_markdown(report["shipped"]) if report.get("shipped") else "",
        "" if report["quick"] else bench.machine_line(report["machine"]),
    )


def figures(report: dict[str, Any], out_dir: Path) -> list[Path]:
    """PSNR, LPIPS-Alex and rFD-VGG16 of every autoencoder; FD-VGG16 of pixel vs latent."""
    rows = report.get("autoencoders") or []
    latent = report.get("pixel_vs_latent") or []
    panels = [
        ("psnr", "PSNR (dB), higher is better"),
        ("lpips_alex", "LPIPS-Alex, lower is better"),
        ("rfd_vgg16", "rFD-VGG16, lower is better"),
    ]
    count = (len(panels) if rows else 0) + (1 if latent else 0)
    if not count:
        return []
    figure, axes = bench.pyplot().subplots(1, count, figsize=(4 * count, 3.5), squeeze=False)
    axes = list(axes[0])
    names = [r["variant"] for r in rows]
    for axis, (key, label) in zip(axes, panels if rows else [], strict=False):
        axis.bar(range(len(rows)), [r[key] for r in rows], color="tab:blue")
        axis.set_xticks(range(len(rows)), names, rotation=20, fontsize=8)
        axis.set_title(label, fontsize=9)
    if latent:
        axis = axes[-1]
        axis.bar(range(len(latent)), [r["fd_vgg16"] for r in latent], color="tab:orange")
        axis.set_xticks(range(len(latent)), [r["run"] for r in latent], fontsize=8)
        axis.set_title("diffusion samples: FD-VGG16 (same training time)", fontsize=9)
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
    parser.add_argument(
        "--parts", default="autoencoders,latent,shipped", help="autoencoders, latent, shipped"
    )
    parser.add_argument(
        "--latent-runs", default=",".join(LATENT_RUNS), help=f"comma list of {tuple(LATENT_RUNS)}"
    )
    parser.add_argument(
        "--budget-min", type=float, default=3.0, help="training minutes per diffusion run"
    )
    parser.add_argument("--diffusion-batch-size", type=int, default=32)
    parser.add_argument("--n", type=int, default=200, help="samples per FD-VGG16")
    parser.add_argument("--sample-steps", type=int, default=25, help="DDIM steps")
    parser.add_argument("--train-only", help="comma list of variants: train them, report nothing")
    args = bench.parse(parser, argv)
    if args.quick:
        args.steps, args.batch_size, args.image_size, args.base_channels = 2, 4, 32, 8
        args.budget_min, args.diffusion_batch_size, args.n, args.sample_steps = 0.01, 4, 4, 2
    known = {*VARIANTS, *LATENT_RUNS}
    unknown = set(bench.comma_list(args.train_only or args.variants)) - known
    if unknown:
        parser.error(f"unknown runs {sorted(unknown)}; choose from {tuple(known)}")
    if args.train_only:
        for name in bench.comma_list(args.train_only):
            train_run = train_latent_run if name in LATENT_RUNS else train_variant
            print(name, train_run(name, args, RUN_ROOT), flush=True)
        return 0
    return bench.publish(args, NAME, lambda: measure(args), render_markdown, figures)


if __name__ == "__main__":
    raise SystemExit(main())
