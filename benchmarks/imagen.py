"""Imagen on captioned colour digits: guidance x thresholding sweep, compositional generalisation,
the super-resolution stage's augmentation level, and cost.

* **Guidance sweep** (the shape of Saharia et al. 2022, Fig. A.9/A.10): the base stage (16x16)
  sampled for test-split captions at every w x {none, static, dynamic}; FD-VGG16 against the
  test images of the same size, and text alignment measured without any text model: the digit by
  the project's MNIST CNN (``weights/mnist_cnn``) on the image's blend-weight map between its
  detected background and foreground colours (luminance alone cannot separate equal-luminance
  pairs), and the foreground / background colour from the pixels (nearest palette colour of the
  border = background; of the pixels farthest from it = foreground); plus the share of saturated
  pixel values (|x| > 0.98; the data are saturated by construction, so the real data's share is
  the reference).
* **Compositional generalisation**: one canonical caption per held-out (digit, fg, bg) triple at
  the sweep's best w (dynamic thresholding), against as many seen triples.
* **Noise-conditioning augmentation**: the cascade's FD at 32 px against the sampling-time level a.
* **Cost**: images/s of each stage and seconds per image of the whole cascade.
* **Peer check**: our dynamic thresholding against diffusers' ``DDPMScheduler._threshold_sample``
  on the same x0 (max difference).

``--quick`` trains two tiny stages for a few steps and runs every part on a handful of images.
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
import torch.nn.functional as F

import common as bench
from difflab.data.colour_digits import (
    COLOUR_NAMES,
    COLOUR_RGB,
    HELD_OUT,
    load_colour_digits,
    split_triples,
)
from difflab.data.transforms import resize_images
from difflab.io.checkpoint import load_checkpoint_meta
from difflab.io.weights import resolve_checkpoint, weights_dir
from difflab.metrics.features import build_feature_extractor, extract_features, load_feature_cnn
from difflab.metrics.frechet import FeatureStats
from difflab.pipelines import CascadePipeline, StageSettings, load_pipeline
from difflab.samplers import Guidance
from difflab.samplers.thresholding import DynamicThreshold
from difflab.training.imagen_loop import imagen_stage_config, train_imagen_stage

THRESHOLDS: dict[str, str | None] = {"none": None, "static": "static", "dynamic": "dynamic"}
Setting = tuple[float, str]
"""(guidance weight w, a name of THRESHOLDS)."""
PALETTE = torch.tensor([COLOUR_RGB[n] for n in COLOUR_NAMES])  # (K, 3) in [0, 1]
SATURATED = 0.98
GOALS = {"joint_held_out": 0.80, "digit_seen": 0.95, "colour_seen": 0.90}


# ----------------------------------------------------------------------------- alignment


def nearest_colour(rgb: torch.Tensor, exclude: torch.Tensor | None = None) -> torch.Tensor:
    """rgb (B, 3) in [0, 1] -> (B,) index of the nearest palette colour (not ``exclude`` (B,))."""
    distance = torch.cdist(rgb, PALETTE)  # (B, K)
    if exclude is not None:
        distance[torch.arange(len(rgb)), exclude] = float("inf")
    return distance.argmin(1)


def read_image(images: torch.Tensor, cnn: Any) -> dict[str, torch.Tensor]:
    """Digit, fg and bg (B,) read from images (B, 3, S, S) in [-1, 1], no text model involved."""
    x = ((images.clamp(-1, 1) + 1) / 2).float()  # (B, 3, S, S)
    border = torch.cat([x[..., 0, :], x[..., -1, :], x[..., :, 0], x[..., :, -1]], dim=-1)
    bg = nearest_colour(border.median(dim=-1).values)  # (B,)
    bg_rgb = PALETTE[bg][..., None, None]  # (B, 3, 1, 1)
    distance = (x - bg_rgb).norm(dim=1).flatten(1)  # (B, S*S)
    far = distance >= 0.5 * distance.max(1, keepdim=True).values
    far_mean = (x.flatten(2) * far[:, None]).sum(-1) / far.sum(-1, keepdim=True).clamp(min=1)
    fg = nearest_colour(far_mean, exclude=bg)  # (B,)
    axis = PALETTE[fg][..., None, None] - bg_rgb  # (B, 3, 1, 1)
    weight = ((x - bg_rgb) * axis).sum(1, keepdim=True) / axis.square().sum(1, keepdim=True)
    strokes = F.interpolate(weight.clamp(0, 1), size=(28, 28), mode="bilinear", align_corners=False)
    with torch.no_grad():
        digit = cnn(strokes * 2 - 1).argmax(1)  # (B,)
    return {"digit": digit, "fg": fg, "bg": bg}


def alignment(images: torch.Tensor, triples: torch.Tensor, cnn: Any) -> dict[str, float]:
    """Accuracies of digit, fg, bg, colour (both) and joint against triples (B, 3)."""
    read = read_image(images, cnn)
    digit = read["digit"] == triples[:, 0]
    fg, bg = read["fg"] == triples[:, 1], read["bg"] == triples[:, 2]
    return {
        "digit": digit.float().mean().item(),
        "fg": fg.float().mean().item(),
        "bg": bg.float().mean().item(),
        "colour": (fg & bg).float().mean().item(),
        "joint": (digit & fg & bg).float().mean().item(),
    }


def saturation(images: torch.Tensor) -> float:
    return (images.abs() > SATURATED).float().mean().item()


def canonical_caption(digit: int, fg: int, bg: int) -> str:
    return f"a {COLOUR_NAMES[fg]} {digit} on a {COLOUR_NAMES[bg]} background"


# ----------------------------------------------------------------------------- parts


def tiny_stages(folder: Path) -> list[Path]:
    """--quick: a base (16 px) and an SR stage (16 -> 32) trained for 3 steps each."""
    model = dict(preset="unet-imagen-base", base_channels=8, channel_mult=[1, 2],
                 attention_resolutions=[8], head_channels=8)  # fmt: skip
    common = dict(text_encoder={"max_length": 24}, model=model,
                  diffusion={"schedule": "cosine", "num_timesteps": 100})  # fmt: skip
    train = dict(steps=3, batch_size=4, log_every=100)
    specs = [
        dict(stage="base", data=dict(size=16, count=64)),
        dict(stage="super_resolution", low_res_size=16, data=dict(size=32, count=64)),
    ]
    return [
        train_imagen_stage(
            imagen_stage_config(
                dict(common, **spec, train=dict(train, out=str(folder / f"s{i}.safetensors"))),
                f"quick stage {i}",
            ),
            progress=False,
        )
        for i, spec in enumerate(specs)
    ]


def tiny_learned_base(folder: Path) -> Path:
    """--quick: a base stage with a learned bag-of-words caption encoder, 3 steps."""
    model = dict(preset="unet-imagen-base", base_channels=8, channel_mult=[1, 2],
                 attention_resolutions=[8], head_channels=8)  # fmt: skip
    values = dict(
        stage="base", data=dict(size=16, count=64), model=model,
        learned_text_encoder={"depth": 0}, diffusion={"schedule": "cosine", "num_timesteps": 100},
        train=dict(steps=3, batch_size=4, log_every=100, out=str(folder / "bow.safetensors")),
    )  # fmt: skip
    return train_imagen_stage(imagen_stage_config(values, "quick bag of words"), progress=False)


def fd_to(reference: FeatureStats, images: torch.Tensor, vgg: Any) -> float:
    features = extract_features(vgg, images.clamp(-1, 1), batch_size=64)
    return reference.frechet_distance(
        FeatureStats.from_features(features, vgg.space.id, keep_features=0)
    )


def split_captions(n: int, size: int) -> tuple[list[str], torch.Tensor, torch.Tensor]:
    """(captions, triples (n, 3), real images (n, 3, size, size)) of the test split."""
    data = load_colour_digits("test", size, n, seed=1)
    return list(data.captions), torch.stack([data.digits, data.fg, data.bg], 1), data.images


def guidance_sweep(
    cascade: CascadePipeline, args: argparse.Namespace, vgg: Any, cnn: Any
) -> dict[str, Any]:
    base = cascade.stages[0]
    size = base.image_size
    captions, triples, _ = split_captions(args.n, size)
    real_data = load_colour_digits("test", size, args.n_ref, seed=2)
    real, real_triples = (
        real_data.images,
        torch.stack([real_data.digits, real_data.fg, real_data.bg], 1),
    )
    reference = FeatureStats.from_features(
        extract_features(vgg, real, 64), vgg.space.id, keep_features=0
    )
    cond = cascade.text_conditioning(captions)
    rows = []
    for w in args.scales:
        for name, threshold in THRESHOLDS.items():
            start = time.perf_counter()
            images = base.pipeline.generate(
                args.n,
                cond,
                seed=0,
                steps=args.steps,
                guidance=Guidance(guidance_scale=w, threshold=threshold),
            )
            seconds = time.perf_counter() - start
            row = {"w": w, "threshold": name, "fd_vgg16": fd_to(reference, images, vgg),
                   "saturated": saturation(images), "seconds": seconds,
                   **alignment(images, triples, cnn)}  # fmt: skip
            print(
                f"w={w:g} {name}: FD {row['fd_vgg16']:.1f} joint {row['joint']:.2f} digit {row['digit']:.2f} colour {row['colour']:.2f}"
            )
            rows.append(row)
    real_rows = {"saturated": saturation(real), **alignment(real, real_triples, cnn)}
    return {
        "rows": rows,
        "real": real_rows,
        "n": args.n,
        "n_ref": args.n_ref,
        "steps": args.steps,
        "size": size,
    }


def compositional(
    cascade: CascadePipeline, args: argparse.Namespace, best: Setting, cnn: Any
) -> dict[str, Any]:
    base = cascade.stages[0]
    held = torch.tensor(sorted(HELD_OUT))[: args.n_held]  # (k, 3)
    seen_all = split_triples("test")
    pick = torch.randperm(len(seen_all), generator=torch.Generator().manual_seed(0))[: len(held)]
    seen = torch.tensor(seen_all)[pick]
    result = {"w": best[0], "threshold": best[1], "count": len(held)}
    for name, triples in (("held_out", held), ("seen", seen)):
        captions = [canonical_caption(*map(int, t)) for t in triples]
        result[name] = caption_alignment(
            base.pipeline, cascade.text_conditioning(captions), triples, best, args, cnn
        )
        print(f"{name}: {result[name]}")
    return result


def caption_alignment(
    pipeline: Any,
    cond: Any,
    triples: torch.Tensor,
    best: Setting,
    args: argparse.Namespace,
    cnn: Any,
) -> dict[str, float]:
    """Alignment of a base stage's images for one caption per triple, at the sweep's best
    (w, thresholding) and the pipeline's own spacing (``"auto"``)."""
    images = pipeline.generate(
        len(triples), cond, seed=5, steps=args.steps,
        guidance=Guidance(guidance_scale=best[0], threshold=THRESHOLDS[best[1]]),
    )  # fmt: skip
    return alignment(images, triples, cnn)


def text_encoder_ablation(args: argparse.Namespace, best: Setting, cnn: Any) -> dict[str, Any]:
    """The frozen MiniLM against a caption encoder learned from scratch (bag of words), two base
    stages trained with the same settings and CPU budget: alignment on the held-out triples."""
    frozen_path, learned_path = args.text_ablation
    held = torch.tensor(sorted(HELD_OUT))[: args.n_held]  # (k, 3)
    captions = [canonical_caption(*map(int, t)) for t in held]
    frozen = CascadePipeline.load([frozen_path])
    base, learned = frozen.stages[0], load_pipeline(learned_path)
    rows = {
        "frozen_minilm": caption_alignment(
            base.pipeline, frozen.text_conditioning(captions), held, best, args, cnn
        ),
        "learned_bag_of_words": caption_alignment(
            learned, learned.caption_conditioning(captions), held, best, args, cnn
        ),
    }
    for name, row in rows.items():
        print(f"text encoder {name}: {row}")
    stages = {"frozen_minilm": frozen_path, "learned_bag_of_words": learned_path}
    return {
        "w": best[0],
        "threshold": best[1],
        "count": len(held),
        "rows": rows,
        "training": {k: load_checkpoint_meta(resolve_checkpoint(p)).get("training", {})
                     for k, p in stages.items()},
    }  # fmt: skip


def augmentation_ablation(
    args: argparse.Namespace,
    stages: CascadePipeline,
    pair: tuple[str, str],
    best: Setting,
    vgg: Any,
    cnn: Any,
) -> dict[str, Any]:
    """The same super-resolution stage trained with and without noise-conditioning augmentation
    (same settings and CPU budget) in place of the stage of its size in ``stages`` (the
    benchmark's cascade; 16 -> 32 after the base, 32 -> 64 after base and 16 -> 32): FD at that
    size against the ablated stage's sampling-time level a (Imagen sec. 2.5)."""
    runs = {}
    for label, sr_path in zip(("with_augmentation", "without_augmentation"), pair, strict=True):
        meta = load_checkpoint_meta(resolve_checkpoint(sr_path))
        before = stages_before(args.stages_list, stages, meta["imagen"]["low_res_size"])
        cascade = CascadePipeline.load([*before, sr_path])
        runs[label] = {
            "stage": sr_path,
            "noise_aug_max": meta["imagen"]["noise_aug_max"],
            "training": cascade.stages[-1].training,
            **noise_level_sweep(cascade, args, best, vgg, cnn),
        }
        print(f"augmentation ablation {label}: {[r['fd_vgg16'] for r in runs[label]['rows']]}")
    return {"stages_before": before, "size": cascade.stages[-1].image_size, "w": best[0],
            "threshold": best[1], "runs": runs}  # fmt: skip


def stages_before(paths: list[str], stages: CascadePipeline, low_res_size: int) -> list[str]:
    """``paths`` (the loaded ``stages``') up to the stage that outputs ``low_res_size`` pixels."""
    sizes = [stage.image_size for stage in stages.stages]
    if low_res_size not in sizes:
        raise SystemExit(
            f"--aug-ablation: no stage of --stages ({', '.join(paths)}) outputs the "
            f"{low_res_size} px input the ablated stage reads; add it to --stages."
        )
    return paths[: sizes.index(low_res_size) + 1]


def noise_level_sweep(
    cascade: CascadePipeline, args: argparse.Namespace, best: Setting, vgg: Any, cnn: Any
) -> dict[str, Any]:
    """FD and alignment of the cascade's output against the last stage's sampling-time
    augmentation level a (``--noise-levels``); earlier super-resolution stages sample at a = 0."""
    if len(cascade.stages) < 2:
        return {}
    size = cascade.stages[-1].image_size
    captions, triples, _ = split_captions(args.n, size)
    real = load_colour_digits("test", size, args.n_ref, seed=2).images
    reference = FeatureStats.from_features(
        extract_features(vgg, real, 64), vgg.space.id, keep_features=0
    )
    base = StageSettings(steps=args.steps, guidance_scale=best[0], threshold=THRESHOLDS[best[1]])
    rows = []
    for level in args.noise_levels:
        sr = dataclasses.replace(base, steps=args.sr_steps)
        between = [sr] * (len(cascade.stages) - 2)
        last = dataclasses.replace(sr, noise_level=level)
        images = cascade.generate(captions, [base, *between, last], seed=0)
        rows.append({"noise_level": level, "fd_vgg16": fd_to(reference, images, vgg),
                     **alignment(images, triples, cnn)})  # fmt: skip
        print(f"a={level:g}: FD@{size} {rows[-1]['fd_vgg16']:.1f}")
    upsampled = resize_images(resize_images(real, cascade.stages[0].image_size), size)
    return {
        "size": size,
        "w": best[0],
        "threshold": best[1],
        "rows": rows,
        "bilinear_upsampled_real_fd": fd_to(reference, upsampled, vgg),
    }


def cost(cascade: CascadePipeline, args: argparse.Namespace) -> dict[str, Any]:
    captions = ["a red 7 on a yellow background"] * args.cost_batch
    settings = [StageSettings(steps=args.steps)] + [
        StageSettings(steps=args.sr_steps, noise_level=0.1)
    ] * (len(cascade.stages) - 1)
    start = time.perf_counter()
    outputs = cascade.generate(captions, settings, seed=0, return_stages=True)
    total = time.perf_counter() - start
    cond = cascade.text_conditioning(captions)
    stages = []
    for index, (stage, options) in enumerate(zip(cascade.stages, settings, strict=True)):
        stage_cond = (
            cond if index == 0 else cascade.low_res_conditioning(cond, outputs[index - 1], 0.1, 0)
        )
        start = time.perf_counter()
        stage.pipeline.generate(
            len(captions), stage_cond, steps=options.steps, guidance=options.guidance()
        )
        seconds = time.perf_counter() - start
        stages.append({"stage": stage.name, "size": stage.image_size, "steps": options.steps,
                       "images_per_s": len(captions) / seconds})  # fmt: skip
    return {
        "batch": len(captions),
        "cascade_seconds_per_image": total / len(captions),
        "stages": stages,
    }


def peer_threshold_check() -> dict[str, Any]:
    """Our DynamicThreshold against diffusers' DDPMScheduler thresholding on the same x0."""
    from diffusers import DDPMScheduler

    x0 = torch.randn(8, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 2.5
    scheduler = DDPMScheduler(
        thresholding=True, dynamic_thresholding_ratio=0.995, sample_max_value=1e9
    )
    ours = DynamicThreshold(SimpleNamespace(schedule=None), 0.995)
    mine, theirs = ours.threshold(x0), scheduler._threshold_sample(x0.clone())
    batch = torch.randn(64, 3, 32, 32, generator=torch.Generator().manual_seed(1)) * 2.5
    seconds = {
        "difflab": bench.best_seconds(lambda: ours.threshold(batch), repeats=5),
        "diffusers": bench.best_seconds(lambda: scheduler._threshold_sample(batch.clone()), 5),
    }
    return {
        "max_abs_difference": (mine - theirs).abs().max().item(),
        "diffusers": bench.package_version("diffusers"),
        "seconds_64x3x32x32": seconds,
        "speed_ratio": seconds["diffusers"] / seconds["difflab"],
    }


# ----------------------------------------------------------------------------- run and report


PARTS: tuple[str, ...] = ("base", "cascade", "ablations")
"""``base``: guidance sweep, held-out triples and the thresholding check (base stage only);
``cascade``: the SR noise-level sweep and the cost (every stage); ``ablations``: train-time
noise augmentation (``--aug-ablation WITH,WITHOUT``) and the text encoder (``--text-ablation
FROZEN,LEARNED``), each run only when its stages are given. A part not run is carried over from
the JSON already in --out-dir, so the base part can run while the SR stage still trains."""


def best_setting(sweep: dict[str, Any]) -> Setting:
    """(w, thresholding) of the sweep's best row, highest joint alignment then lowest FD: the
    setting the compositional, cascade and ablation parts sample at."""
    row = max(sweep["rows"], key=lambda r: (r["joint"], -r["fd_vgg16"]))
    return row["w"], row["threshold"]


def measure(args: argparse.Namespace) -> dict[str, Any]:
    earlier = args.out_dir / f"{bench.stem_of('imagen', args.quick)}.json"
    report = bench.read_json(earlier) if set(args.parts) != set(PARTS) and earlier.is_file() else {}
    with tempfile.TemporaryDirectory() as tmp:
        stages = tiny_stages(Path(tmp)) if args.quick else list(bench.comma_list(args.stages))
        if args.quick:  # the ablations' code paths on the tiny stages
            args.aug_ablation = [(str(stages[1]),) * 2]
            args.text_ablation = [str(stages[0]), str(tiny_learned_base(Path(tmp)))]
        args.stages_list = [str(stage) for stage in stages]
        if "cascade" not in args.parts and "ablations" not in args.parts:
            stages = stages[:1]
        cascade = CascadePipeline.load(stages)
        vgg = build_feature_extractor("vgg16", image_size=args.vgg_size).eval()
        cnn, _ = load_feature_cnn(weights_dir() / "mnist_cnn.safetensors")
        report["machine"] = bench.machine_info(["diffusers"])
        report["settings"] = {
            k: v for k, v in vars(args).items() if k not in ("out_dir", "stages_list")
        }
        stage_rows = [
            {"name": s.name, "size": s.image_size, "kind": s.kind, "training": s.training}
            for s in cascade.stages
        ]
        report["stages"] = stage_rows + report.get("stages", [])[len(stage_rows) :]
        if "base" in args.parts:
            report["sweep"] = guidance_sweep(cascade, args, vgg, cnn)
        best = best_setting(report["sweep"])
        if "base" in args.parts:
            report["compositional"] = compositional(cascade, args, best, cnn)
            report["peer_threshold"] = peer_threshold_check()
        if "cascade" in args.parts:
            report["noise_level"] = noise_level_sweep(cascade, args, best, vgg, cnn)
            report["cost"] = cost(cascade, args)
        if "ablations" in args.parts and args.aug_ablation:
            report["aug_ablations"] = [
                augmentation_ablation(args, cascade, pair, best, vgg, cnn)
                for pair in args.aug_ablation
            ]
        if "ablations" in args.parts and args.text_ablation:
            report["text_ablation"] = text_encoder_ablation(args, best, cnn)
    report.setdefault("noise_level", {})
    report.setdefault("cost", {"batch": 0, "cascade_seconds_per_image": 0.0, "stages": []})
    report["goals"] = goals(report)
    return report


def goals(report: dict[str, Any]) -> dict[str, Any]:
    rows = report["sweep"]["rows"]
    by = {(r["w"], r["threshold"]): r for r in rows}
    high = [w for w in sorted({r["w"] for r in rows}) if w >= 5]
    dyn_beats_static = (
        all(by[(w, "dynamic")]["fd_vgg16"] < by[(w, "static")]["fd_vgg16"] for w in high)
        if high
        else None
    )
    scales = sorted({r["w"] for r in rows})
    rises = {  # joint alignment at the largest w against the smallest, per thresholding
        f"alignment_rises_with_w_{name}": by[(scales[-1], name)]["joint"]
        > by[(scales[0], name)]["joint"]
        for name in THRESHOLDS
        if len(scales) > 1
    }
    comp = report["compositional"]
    extra = {}
    for aug in report.get("aug_ablations", []):
        best = {k: min(r["fd_vgg16"] for r in run["rows"]) for k, run in aug["runs"].items()}
        extra[f"augmentation_lowers_best_fd_at_{aug['size']}px"] = (
            best["with_augmentation"] < best["without_augmentation"]
        )
    if report.get("text_ablation"):
        rows = report["text_ablation"]["rows"]
        extra["frozen_encoder_beats_bag_of_words_held_out"] = (
            rows["frozen_minilm"]["joint"] > rows["learned_bag_of_words"]["joint"]
        )
    return extra | {
        "dynamic_fd_below_static_at_w_ge_5": dyn_beats_static,
        **rises,
        "joint_held_out_ge_80": comp["held_out"]["joint"] >= GOALS["joint_held_out"],
        "digit_seen_ge_95": comp["seen"]["digit"] >= GOALS["digit_seen"],
        "colour_seen_ge_90": comp["seen"]["colour"] >= GOALS["colour_seen"],
    }


def render(report: dict[str, Any]) -> str:
    sweep = report["sweep"]
    sweep_rows = [
        [f"{r['w']:g}", r["threshold"], f"{r['fd_vgg16']:.1f}", f"{r['digit']:.2f}", f"{r['fg']:.2f}",
         f"{r['bg']:.2f}", f"{r['joint']:.2f}", f"{r['saturated']:.3f}"]
        for r in sweep["rows"]
    ]  # fmt: skip
    real = sweep["real"]
    sweep_rows.append(["real", "—", "—", f"{real['digit']:.2f}", f"{real['fg']:.2f}",
                       f"{real['bg']:.2f}", f"{real['joint']:.2f}", f"{real['saturated']:.3f}"])  # fmt: skip
    comp = report["compositional"]
    comp_rows = [
        [
            name,
            f"{comp[name]['digit']:.2f}",
            f"{comp[name]['colour']:.2f}",
            f"{comp[name]['joint']:.2f}",
        ]
        for name in ("seen", "held_out")
    ]
    noise = report["noise_level"]
    noise_rows = [
        [f"{r['noise_level']:g}", f"{r['fd_vgg16']:.1f}",
         *(f"{r[k]:.2f}" if k in r else "—" for k in ("digit", "colour", "joint"))]
        for r in noise.get("rows", [])
    ]  # fmt: skip
    cost_rows = [
        [s["stage"], s["size"], s["steps"], f"{s['images_per_s']:.2f}"]
        for s in report["cost"]["stages"]
    ]
    goal_rows = [[name, bench.passfail(value)] for name, value in report["goals"].items()]
    ablations = ablation_sections(report)
    stage_rows = [
        [
            s["name"],
            s["kind"],
            s["size"],
            s["training"].get("steps", "—"),
            s["training"].get("cpu_seconds", "—"),
        ]
        for s in report["stages"]
    ]
    return bench.sections(
        "# Imagen on captioned colour digits",
        f"Machine: {bench.machine_line(report['machine'])}",
        bench.markdown_table(
            ["stage", "kind", "px", "training steps", "training CPU s"], stage_rows
        ),
        f"## Guidance sweep (base stage, {sweep['size']} px, {sweep['n']} images per cell, "
        f"{sweep['steps']} DDIM steps; FD-VGG16 against {sweep['n_ref']} test images)",
        bench.markdown_table(
            ["w", "threshold", "FD-VGG16", "digit", "fg", "bg", "joint", "saturated"], sweep_rows
        ),
        f"## Compositional generalisation (w = {comp['w']:g}, thresholding "
        f"{comp['threshold']}, the sweep's best row; {comp['count']} triples each)",
        bench.markdown_table(["triples", "digit", "colour (fg and bg)", "joint"], comp_rows),
        f"## Super-resolution augmentation level at sampling (FD-VGG16 and alignment of the final images at {noise.get('size', '—')} px)"
        if noise
        else "",
        bench.markdown_table(["a", "FD-VGG16", "digit", "colour (fg and bg)", "joint"], noise_rows)
        if noise_rows
        else "",
        f"Real {report['stages'][0]['size']} px images upsampled bilinearly: FD-VGG16 "
        f"{noise['bilinear_upsampled_real_fd']:.1f}."
        if noise
        else "",
        f"## Cost (batch {report['cost']['batch']}; cascade {report['cost']['cascade_seconds_per_image']:.2f} s per image)",
        bench.markdown_table(["stage", "px", "steps", "images/s"], cost_rows),
        f"Dynamic thresholding against diffusers {report['peer_threshold']['diffusers']} "
        f"(DDPMScheduler thresholding): max |difference| {report['peer_threshold']['max_abs_difference']:.2e}; "
        f"speed on 64x3x32x32, diffusers time / difflab time: {report['peer_threshold']['speed_ratio']:.2f}x.",
        *ablations,
        "## Goals",
        bench.markdown_table(["goal", "result"], goal_rows),
    )


def ablation_sections(report: dict[str, Any]) -> list[str]:
    """Markdown of the augmentation and text-encoder ablations (empty when not run)."""
    parts: list[str] = []
    for aug in report.get("aug_ablations", []):
        runs = aug["runs"]
        levels = [r["noise_level"] for r in next(iter(runs.values()))["rows"]]
        rows = [
            [label.replace("_", " "), f"{run['noise_aug_max']:g}",
             run["training"].get("steps", "—"), run["training"].get("cpu_seconds", "—"),
             *(f"{r['fd_vgg16']:.1f}" for r in run["rows"])]
            for label, run in runs.items()
        ]  # fmt: skip
        parts += [
            f"## Noise-conditioning augmentation at training ({aug['size']} px stage after "
            f"{', '.join(aug['stages_before'])}, w = {aug['w']:g}, thresholding {aug['threshold']}; "
            f"FD-VGG16 at {aug['size']} px; "
            "earlier SR stages at a = 0)",
            bench.markdown_table(
                ["SR stage", "a_max (train)", "steps", "CPU s", *(f"a = {a:g}" for a in levels)],
                rows,
            ),
        ]
    text = report.get("text_ablation")
    if text:
        rows = [
            [name.replace("_", " "), text["training"][name].get("steps", "—"),
             text["training"][name].get("cpu_seconds", "—"), f"{row['digit']:.2f}",
             f"{row['fg']:.2f}", f"{row['bg']:.2f}", f"{row['joint']:.2f}"]
            for name, row in text["rows"].items()
        ]  # fmt: skip
        parts += [
            f"## Text encoder (held-out triples, {text['count']} captions, w = {text['w']:g}, "
            f"thresholding {text['threshold']})",
            bench.markdown_table(["encoder", "steps", "CPU s", "digit", "fg", "bg", "joint"], rows),
        ]
    return parts


def figures(report: dict[str, Any], out_dir: Path) -> list[Path]:
    plt = bench.pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for name in THRESHOLDS:
        rows = [r for r in report["sweep"]["rows"] if r["threshold"] == name]
        ax.plot([r["joint"] for r in rows], [r["fd_vgg16"] for r in rows], marker="o", label=name)
        for r in rows:
            ax.annotate(f"w={r['w']:g}", (r["joint"], r["fd_vgg16"]), fontsize=7)
    ax.set_xlabel("joint alignment (digit, fg, bg all right)")
    ax.set_ylabel("FD-VGG16 (lower is better)")
    ax.legend(title="thresholding")
    stem = bench.stem_of("imagen", report["settings"]["quick"])
    return [bench.save_figure(fig, out_dir / f"{stem}.png")]


def main(argv: list[str] | None = None) -> int:
    parser = bench.bench_parser(
        __doc__, quick="tiny stages trained for 3 steps; a few images per part"
    )
    parser.add_argument("--stages", default="imagen_digits_base16,imagen_digits_sr32")
    parser.add_argument("--n", type=int, default=64, help="images per sweep cell")
    parser.add_argument("--n-ref", type=int, default=256, help="real test images for FD")
    parser.add_argument("--n-held", type=int, default=56, help="held-out triples evaluated")
    parser.add_argument("--steps", type=int, default=20, help="DDIM steps of the base stage")
    parser.add_argument("--sr-steps", type=int, default=10, help="DDIM steps of the SR stage")
    parser.add_argument("--scales", default="1,3,5,7", help="guidance weights w")
    parser.add_argument("--noise-levels", default="0,0.1,0.3,0.5")
    parser.add_argument("--vgg-size", type=int, default=64, help="VGG16 input side for FD")
    parser.add_argument("--cost-batch", type=int, default=8)
    parser.add_argument("--parts", default=",".join(PARTS), help="base, cascade, ablations")
    parser.add_argument("--aug-ablation", action="append", default=[], metavar="WITH,WITHOUT",
                        help="two SR stages trained with and without noise augmentation; "
                             "repeat for stages of other sizes")  # fmt: skip
    parser.add_argument("--text-ablation", default="", metavar="FROZEN,LEARNED",
                        help="two base stages: frozen MiniLM, learned bag-of-words encoder")  # fmt: skip
    args = bench.parse(parser, argv)
    if args.quick:
        args.n, args.n_ref, args.n_held, args.steps, args.sr_steps = 4, 8, 4, 2, 2
        args.scales, args.noise_levels, args.vgg_size, args.cost_batch = "1,5", "0,0.3", 32, 2
    args.scales = [float(w) for w in bench.comma_list(args.scales)]
    args.noise_levels = [float(a) for a in bench.comma_list(args.noise_levels)]
    args.parts = bench.comma_list(args.parts)
    args.aug_ablation = [tuple(bench.comma_list(pair)) for pair in args.aug_ablation]
    args.text_ablation = list(bench.comma_list(args.text_ablation))
    for name, pairs in (
        ("aug-ablation", args.aug_ablation),
        ("text-ablation", [args.text_ablation]),
    ):
        if any(len(pair) not in (0, 2) for pair in pairs):
            parser.error(f"--{name} takes two checkpoints, comma-separated")
    if not args.parts or not set(args.parts) <= set(PARTS):
        parser.error(f"--parts takes {', '.join(PARTS)}")
    return bench.publish(args, "imagen", lambda: measure(args), render, figures)


if __name__ == "__main__":
    raise SystemExit(main())
