"""Imagen's Efficient U-Net layout against the standard one, on the base stage (16 px colour digits).

Saharia et al. 2022 (appendix B.1) reverse the order of resampling and convolutions (downsample
before a block's convolutions, upsample after) for a faster forward pass, reporting no loss of
quality, and move parameters to low resolution with more residual blocks there; they describe the
Efficient U-Net as simpler, faster to converge and more memory efficient. Here the two stage configs, ``configs/imagen_base16.yaml`` (standard: blocks at 16, 8
and 4 pixels, one per level) and ``configs/imagen_base16_efficient.yaml`` (``resample_first``,
blocks at 8, 4 and 2 pixels, 1, 1, 2 per level), and the ablation "resample first only" (the
efficient order with one block per level: the order's effect alone), are compared on:

* parameters, and forward FLOPs of one image with an 8-token caption (``common.count_flops``:
  matmuls, convolutions and attention);
* training images per CPU-second: one step (batch 16, fp32, v-loss, backward, AdamW), the two
  layouts interleaved, each step timed in process CPU time (one thread, so load on the machine
  does not count);
* sampling images per CPU-second: DDIM, ``--sample-steps`` steps, classifier-free guidance
  w = 5 with dynamic thresholding, a batch of ``--sample-batch`` captions;
* the held-out denoising loss (the v-loss the stages train with) after the same process
  CPU-seconds of training (``train.cpu_budget_s``, seed 0, same data and recipe; the stage
  trainer of ``difflab train-imagen``, weights kept in fp32): ``--eval-n`` test-split colour
  digits, one fixed (t, eps) per image with t spread evenly over 0..T-1, reported overall and in
  ten bands of t.

Trained stages are kept in ``--runs-dir`` and reused when their recorded config is the one asked
for. Writes ``efficient_unet.{json,md,png}`` (``--quick``: tiny data, 3 training steps, a few
images, no ablation: it checks the code paths, its numbers mean nothing).

    python benchmarks/efficient_unet.py --threads 1   # make bench-efficient-unet, ~15 CPU-minutes
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

import common as bench
from difflab.config import config_to_dict
from difflab.data.colour_digits import load_colour_digits
from difflab.diffusion import Conditioning, denoising_loss
from difflab.io.checkpoint import load_checkpoint_meta
from difflab.models import build_model
from difflab.models.frozen_text import FrozenTextEncoder, load_frozen_text_encoder
from difflab.models.text_cache import encode_prompts
from difflab.models.unet import blocks_per_level
from difflab.pipelines import DiffusionPipeline, load_pipeline
from difflab.samplers import Guidance
from difflab.training.imagen_loop import (
    ImagenStageConfig,
    load_imagen_stage_config,
    stage_network,
    train_imagen_stage,
)

NAME = "efficient_unet"
CONFIGS = bench.REPO / "configs"
LAYOUTS: dict[str, tuple[Path, dict[str, Any]]] = {  # stage config, model overrides
    "standard": (CONFIGS / "imagen_base16.yaml", {}),
    "efficient": (CONFIGS / "imagen_base16_efficient.yaml", {}),
    # the ablation: the order alone, one block per level (fewer parameters than either)
    "resample first only": (CONFIGS / "imagen_base16_efficient.yaml", {"num_res_blocks": 1}),
}
RATIOS = ("parameters", "forward_flops", "train_speed", "sample_speed", "held_out_loss")
CAPTION = "a red 7 on a yellow background"
BANDS = 10  # bands of t for the held-out loss


# ----------------------------------------------------------------------------- the stages


def stage_config(layout: str, args: argparse.Namespace, runs: Path) -> ImagenStageConfig:
    """The layout's stage config with the benchmark's budget, fp32 weights and output path."""
    path, overrides = LAYOUTS[layout]
    config = load_imagen_stage_config(path)
    config = dataclasses.replace(config, model={**config.model, **overrides})
    train = dataclasses.replace(
        config.train,
        cpu_budget_s=0.0 if args.quick else args.cpu_seconds,
        steps=3 if args.quick else config.train.steps,
        batch_size=4 if args.quick else config.train.batch_size,
        weights_dtype="fp32",
        out=str(runs / f"{layout.replace(' ', '_')}.safetensors"),
    )
    data = dataclasses.replace(config.data, count=64) if args.quick else config.data
    return dataclasses.replace(config, train=train, data=data)


def trained_stage(config: ImagenStageConfig) -> Path:
    """The stage trained as ``config`` says: a kept run with this very config, or a new one."""
    path = Path(config.train.out)
    if path.is_file():
        if load_checkpoint_meta(path)["imagen"]["config"] == config_to_dict(config):
            print(f"[{NAME}] reusing {path}")
            return path
        path.unlink()  # another budget or recipe: train again
    print(f"[{NAME}] training {path} for {config.train.cpu_budget_s:g} CPU-seconds", flush=True)
    return train_imagen_stage(config, progress=False)


def caption_conditioning(encoder: FrozenTextEncoder, captions: Sequence[str]) -> Conditioning:
    tokens, mask = encode_prompts(encoder, list(captions))  # (B, L, D), (B, L)
    return Conditioning(tokens=tokens.float(), token_mask=mask)


# ----------------------------------------------------------------------------- measurements


def cpu_interleaved(fns: dict[str, Callable[[], Any]], repeats: int) -> dict[str, list[float]]:
    """Process CPU seconds of each call, the callables alternating (one warm-up call each)."""
    for fn in fns.values():
        fn()
    seconds: dict[str, list[float]] = {name: [] for name in fns}
    names = list(fns)
    for round_index in range(repeats):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            start = time.process_time()
            fns[name]()
            seconds[name].append(time.process_time() - start)
    return seconds


def train_step(net: torch.nn.Module, batch: int, cond: Conditioning, schedule: Any) -> Callable:
    """One fp32 training step of ``net`` on random images of its size: v-loss, backward, AdamW."""
    net.train()
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-4)
    generator = torch.Generator().manual_seed(0)
    c = net.config
    x0 = torch.rand(batch, c.in_channels, c.image_size, c.image_size, generator=generator) * 2 - 1

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        denoising_loss(net, schedule, x0, cond, generator=generator).backward()
        optimizer.step()

    return step


def held_out_loss(
    pipeline: DiffusionPipeline, images: torch.Tensor, cond: Conditioning
) -> dict[str, Any]:
    """The denoising loss of ``images`` (N, C, H, W), N a multiple of :data:`BANDS`, at one
    fixed (t, eps) each, t spread evenly over 0..T-1: the mean in each of :data:`BANDS` equal
    bands of t (one batch each), and their mean."""
    T, n = pipeline.schedule.num_timesteps, len(images)
    t = torch.div(torch.arange(n) * T, n, rounding_mode="floor")  # (N,) evenly spread, sorted
    eps = torch.randn(images.shape, generator=torch.Generator().manual_seed(0))
    bands = []
    with torch.no_grad():
        for band in torch.arange(n).chunk(BANDS):  # equal bands of t
            noise = (t[band], eps[band])
            loss = denoising_loss(
                pipeline.net, pipeline.schedule, images[band], cond[band], noise=noise
            )
            bands.append(float(loss))
    return {"mean": sum(bands) / BANDS, "bands": bands}


def measure(args: argparse.Namespace) -> dict[str, Any]:
    if not args.quick:
        args.runs_dir.mkdir(parents=True, exist_ok=True)
        return measure_in(args, args.runs_dir)
    with tempfile.TemporaryDirectory() as folder:
        return measure_in(args, Path(folder))


def ratios_to(layout: dict[str, Any], standard: dict[str, Any]) -> dict[str, float]:
    """``layout`` / ``standard`` for each of :data:`RATIOS` (and the training run's steps)."""

    def ratio(key: str) -> float:
        return layout[key] / standard[key]

    return {
        "parameters": ratio("parameters"),
        "forward_flops": ratio("forward_flops"),
        "train_speed": ratio("train_images_per_cpu_second"),
        "sample_speed": ratio("sample_images_per_cpu_second"),
        "steps_in_budget": layout["training_run"]["steps"] / standard["training_run"]["steps"],
        "held_out_loss": layout["held_out_loss"]["mean"] / standard["held_out_loss"]["mean"],
    }


def measure_in(args: argparse.Namespace, runs: Path) -> dict[str, Any]:
    names = list(LAYOUTS)[:2] if args.quick else list(LAYOUTS)  # quick: the ablation's paths
    configs = {layout: stage_config(layout, args, runs) for layout in names}  # are the same
    encoder = load_frozen_text_encoder(configs["standard"].text_encoder)
    paths = {layout: trained_stage(config) for layout, config in configs.items()}
    metas = {layout: load_checkpoint_meta(path) for layout, path in paths.items()}
    pipelines = {layout: load_pipeline(path) for layout, path in paths.items()}

    caption = caption_conditioning(encoder, [CAPTION] * 8)  # 8 tokens wide at most
    layouts: dict[str, dict[str, Any]] = {}
    for layout, config in configs.items():
        net = pipelines[layout].net.eval()
        x = torch.randn(1, 3, config.data.size, config.data.size)
        one = caption[0:1]
        with torch.no_grad():
            flops = bench.count_flops(lambda n=net, x=x, c=one: n(x, torch.tensor([500]), c))
        training = metas[layout]["training"]
        layouts[layout] = {
            "config": str(LAYOUTS[layout][0].relative_to(bench.REPO)),
            "model_overrides": LAYOUTS[layout][1],
            "num_res_blocks": list(blocks_per_level(net.config)),
            "resample_first": net.config.resample_first,
            "parameters": bench.parameter_count(net),
            "forward_flops": flops,
            "training_run": {
                "steps": training["steps"],
                "cpu_seconds": training["cpu_seconds"],
                "images_per_cpu_second": training["steps"]
                * config.train.batch_size
                / max(training["cpu_seconds"], 1e-9),
            },
        }

    # training speed: fresh networks of the two layouts, steps interleaved
    batch = configs["standard"].train.batch_size
    train_cond = caption_conditioning(encoder, [CAPTION] * batch)
    steps = {
        layout: train_step(
            build_model(*stage_network(config, encoder.dim)),
            batch,
            train_cond,
            pipelines[layout].schedule,
        )
        for layout, config in configs.items()
    }
    for layout, seconds in cpu_interleaved(steps, args.repeats).items():
        layouts[layout]["train_cpu_seconds_per_step"] = seconds
        layouts[layout]["train_images_per_cpu_second"] = batch / min(seconds)
        print(f"[{NAME}] {layout}: {batch / min(seconds):.1f} training images per CPU-second")

    # sampling speed: DDIM with classifier-free guidance and dynamic thresholding
    guidance = Guidance(guidance_scale=args.guidance_scale, threshold="dynamic")
    sample_cond = caption_conditioning(encoder, [CAPTION] * args.sample_batch)
    runs_of = {
        layout: (
            lambda p=pipeline: p.generate(
                args.sample_batch, sample_cond, steps=args.sample_steps, guidance=guidance
            )
        )
        for layout, pipeline in pipelines.items()
    }
    for layout, seconds in cpu_interleaved(runs_of, max(1, args.repeats // 2)).items():
        layouts[layout]["sample_cpu_seconds"] = seconds
        layouts[layout]["sample_images_per_cpu_second"] = args.sample_batch / min(seconds)

    # held-out denoising loss after equal CPU time
    test = load_colour_digits("test", configs["standard"].data.size, args.eval_n, seed=0)
    test_cond = caption_conditioning(encoder, test.captions)
    for layout, pipeline in pipelines.items():
        layouts[layout]["held_out_loss"] = held_out_loss(pipeline, test.images, test_cond)
        print(f"[{NAME}] {layout}: held-out loss {layouts[layout]['held_out_loss']['mean']:.4f}")

    return {
        "name": NAME,
        "machine": bench.machine_info(),
        "quick": args.quick,
        "settings": {
            "cpu_seconds": 0 if args.quick else args.cpu_seconds,
            "train_batch": batch,
            "repeats": args.repeats,
            "sample_steps": args.sample_steps,
            "sample_batch": args.sample_batch,
            "guidance_scale": args.guidance_scale,
            "eval_n": args.eval_n,
            "image_size": configs["standard"].data.size,
            "num_timesteps": pipelines["standard"].schedule.num_timesteps,
        },
        "layouts": layouts,
        "ratios": {  # each layout / standard
            layout: ratios_to(values, layouts["standard"])
            for layout, values in layouts.items()
            if layout != "standard"
        },
    }


# ----------------------------------------------------------------------------- report


def goals(report: dict[str, Any]) -> dict[str, bool]:
    """The paper's claims, as this run tests them (efficient against standard)."""
    r = report["ratios"]["efficient"]
    return {
        "fewer FLOPs per forward pass": r["forward_flops"] < 1,
        "faster training steps": r["train_speed"] > 1,
        "faster sampling": r["sample_speed"] > 1,
        "lower held-out loss after equal CPU time": r["held_out_loss"] < 1,
    }


def render(report: dict[str, Any]) -> str:
    s, layouts, r = report["settings"], report["layouts"], report["ratios"]
    rows = [
        [
            layout,
            str(tuple(v["num_res_blocks"])),
            "yes" if v["resample_first"] else "no",
            v["parameters"] / 1e6,
            v["forward_flops"] / 1e6,
            v["train_images_per_cpu_second"],
            v["sample_images_per_cpu_second"],
            v["training_run"]["steps"],
            v["held_out_loss"]["mean"],
        ]
        for layout, v in layouts.items()
    ]
    rows += [
        [
            f"{layout} / standard",
            "",
            "",
            *(ratios[key] for key in RATIOS[:4]),
            ratios["steps_in_budget"],
            ratios["held_out_loss"],
        ]
        for layout, ratios in r.items()
    ]
    headers = [
        "layout",
        "blocks per level",
        "resample first",
        "params (M)",
        "MFLOPs / image",
        "train img / CPU-s",
        "sample img / CPU-s",
        f"steps in {s['cpu_seconds']:g} CPU-s",
        "held-out loss",
    ]
    T = s["num_timesteps"]
    band_rows = [
        [f"{b * T // BANDS}-{(b + 1) * T // BANDS - 1}"]
        + [layouts[layout]["held_out_loss"]["bands"][b] for layout in layouts]
        for b in range(BANDS)
    ]
    met = goals(report)
    standard_bands = layouts["standard"]["held_out_loss"]["bands"]
    better = [
        f"{layout} in t {band_rows[b][0]} ({v:.3f} vs {standard_bands[b]:.3f})"
        for layout, values in layouts.items()
        if layout != "standard"
        for b, v in enumerate(values["held_out_loss"]["bands"])
        if v < standard_bands[b]
    ]
    return bench.sections(
        "# Imagen's Efficient U-Net vs the standard layout (base stage, 16 px colour digits)",
        "Saharia et al. 2022, appendix B.1: downsampling before a block's convolutions and "
        "upsampling after them, more residual blocks at low resolution. "
        f"Training speed: batch {s['train_batch']}, fp32, one step timed in process CPU time "
        f"(best of {s['repeats']}, the layouts interleaved). Sampling: DDIM "
        f"{s['sample_steps']} steps, classifier-free guidance w = {s['guidance_scale']:g} with "
        f"dynamic thresholding, {s['sample_batch']} images. Held-out loss: the stages' v-loss "
        f"on {s['eval_n']} test-split images, t spread evenly over 0..T-1, after "
        f"{s['cpu_seconds']:g} process CPU-seconds of training each (seed 0, same data and "
        "recipe, EMA weights).",
        bench.markdown_table(headers, rows),
        "## Held-out loss by noise level",
        bench.markdown_table(["t", *layouts], band_rows),
        "Bands where a layout's loss is below the standard layout's: "
        + ("; ".join(better) if better else "none")
        + ".",
        "## The paper's claims here",
        [f"- {claim}: {'met' if ok else 'not reproduced'}" for claim, ok in met.items()],
        "One training run per layout (one seed): the loss ratio carries the run-to-run spread, "
        "which this budget does not measure."
        if not report["quick"]
        else "",
        f"Machine: {bench.machine_line(report['machine'])} {bf16_line(report['machine'])}",
    )


def bf16_line(machine: dict[str, Any]) -> str:
    """What the CPU offers bf16 (these measurements are fp32)."""
    bf16 = machine["bf16"]
    native = "AMX" if bf16["amx"] else "AVX-512 BF16" if bf16["avx512_bf16"] else "none (emulated)"
    return f"bf16 matmuls: {native}; torch CPU capability {bf16['torch_cpu_capability']}."


def figures(report: dict[str, Any], out_dir: Path) -> list[Path]:
    """Left: efficient / standard ratios; right: held-out loss by band of t."""
    plt = bench.pyplot()
    r, layouts = report["ratios"], report["layouts"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4))
    height = 0.8 / len(r)
    for i, (layout, ratios) in enumerate(r.items()):
        rows = [k + i * height for k in range(len(RATIOS))]
        bars = left.barh(rows, [ratios[n] for n in RATIOS], height, label=layout)
        left.bar_label(bars, labels=[f"{ratios[n]:.2f}×" for n in RATIOS], padding=2, fontsize=7)
    left.set_yticks([k + 0.4 - height / 2 for k in range(len(RATIOS))], RATIOS)
    left.axvline(1.0, color="black", linewidth=1)
    left.invert_yaxis()
    left.set_xlim(0, max(v[n] for v in r.values() for n in RATIOS) * 1.3)
    left.set_title("each layout / standard")
    left.legend(fontsize="small")
    centres = [(b + 0.5) / BANDS for b in range(BANDS)]
    for layout, values in layouts.items():
        right.plot(centres, values["held_out_loss"]["bands"], marker="o", label=layout)
    right.set_xlabel("t / T")
    right.set_ylabel("held-out v-loss")
    right.set_title(f"after {report['settings']['cpu_seconds']:g} CPU-seconds of training")
    right.legend()
    stem = bench.stem_of(NAME, report["quick"])
    return [bench.save_figure(fig, out_dir / f"{stem}.png")]


def main(argv: Sequence[str] | None = None) -> int:
    parser = bench.bench_parser(__doc__, "3 training steps on 64 images, a few images per part")
    parser.add_argument("--cpu-seconds", type=float, default=240.0, help="training per layout")
    parser.add_argument("--repeats", type=int, default=6, help="timed training steps per layout")
    parser.add_argument("--sample-steps", type=int, default=20)
    parser.add_argument("--sample-batch", type=int, default=16)
    parser.add_argument("--guidance-scale", type=float, default=5.0)
    parser.add_argument("--eval-n", type=int, default=500)
    parser.add_argument("--runs-dir", type=Path, default=bench.REPO / "runs" / NAME)
    args = bench.parse(parser, argv)
    if args.quick:
        args.repeats, args.sample_steps, args.sample_batch, args.eval_n = 1, 2, 2, 20
    if args.eval_n < BANDS or args.eval_n % BANDS:
        parser.error(f"--eval-n must be a positive multiple of {BANDS} (one band of t each).")
    return bench.publish(args, NAME, lambda: measure(args), render, figures)


if __name__ == "__main__":
    raise SystemExit(main())
