"""difflab's U-Net vs diffusers' ``UNet2DModel`` (+ ``DDIMScheduler``) on the CPU, in one run.

Both networks are the same ADM-style U-Net for 28x28 MNIST (base 32 channels, mult (1, 2, 2), one
residual block per level, scale-shift norm, one-head attention at 7x7 and in the middle); their
parameter counts are asserted to lie within 5 % of each other. Measured:

* training images/s of one step (denoising loss, backward, ``AdamW.step``), batch 128, in fp32
  and under ``torch.autocast("cpu", dtype=torch.bfloat16)``;
* DDIM sampling (50 steps, eta = 0) of 64 images, fp32 and bf16 autocast;
* FLOPs per training step (``FlopCounterMode``) -> achieved GFLOP/s, against a large matmul's
  GFLOP/s in the same run (a practical peak);
* a ``torch.profiler`` breakdown of one training step (top ops by self CPU time).

Every ratio is difflab's speed divided by diffusers' (> 1: difflab is faster). The inputs are
synthetic (random images): the benchmark measures the networks, not data loading.

Run ``python benchmarks/unet_vs_diffusers.py`` (a few minutes on 2 cores) or ``--quick`` (a smoke
test: small batch, few steps; its numbers are not comparable). Writes
``benchmarks/results/unet_vs_diffusers.{json,md,png}``.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, DDPMScheduler, UNet2DModel
from torch import nn

from common import (
    RESULTS_DIR,
    Timing,
    count_flops,
    format_spread,
    interleaved_timings,
    machine_info,
    markdown_table,
    matmul_gflops,
    profile_ops,
    share_by_category,
    write_json,
    write_ratio_chart,
    write_text,
)
from difflab.diffusion import Denoiser, NoiseSchedule, denoising_loss, timestep_sequence
from difflab.models import build_model, model_config
from difflab.samplers import ddim_sample

NAME = "unet_vs_diffusers"
GOAL = 1.5  # the target: difflab >= 1.5x diffusers
PARAMETER_TOLERANCE = 0.05
NUM_TIMESTEPS = 1000
PRECISIONS = ("fp32", "bf16")
PHASE_PREFIX = "phase: "
BUSY_LOAD = 1.0  # a 1-minute load average above this at start: something else was running
LIBRARIES = ("difflab", "diffusers")
DIFFLAB_PRESET = "unet-mnist"
# diffusers' twin of "unet-mnist": same widths, depth, scale-shift norm, attention at the 7x7
# level only, one head (attention_head_dim=None -> head dim = channels); default 32 norm groups.
DIFFUSERS_CONFIG: dict[str, Any] = {
    "sample_size": 28,
    "in_channels": 1,
    "out_channels": 1,
    "block_out_channels": (32, 64, 64),
    "layers_per_block": 1,
    "down_block_types": ("DownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
    "up_block_types": ("AttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
    "attention_head_dim": None,
    "norm_num_groups": 32,
    "resnet_time_scale_shift": "scale_shift",
}
# profiler op-name substrings -> category, first match wins (AdamW's per-parameter ops land in
# "element-wise"; the phase table gives the optimizer's share)
PROFILE_CATEGORIES: dict[str, tuple[str, ...]] = {
    "convolution (fwd + bwd)": ("convolution",),
    "group norm (fwd + bwd)": ("group_norm",),
    "attention (SDPA, bmm, softmax)": ("scaled_dot_product", "bmm", "softmax"),
    "linear (addmm, mm)": ("addmm", "aten::mm"),
    "dtype casts and copies": ("aten::to", "_to_copy", "copy_", "clone", "contiguous"),
    "element-wise (silu, add, mul, ...)": (
        "silu",
        "add",
        "mul",
        "sub",
        "div",
        "sqrt",
        "mse",
        "pow",
        "neg",
        "sum",
        "fill_",
        "zero_",
        "where",
    ),
    "resampling and concat": ("upsample", "cat", "interpolate"),
}


@dataclass(frozen=True)
class Settings:
    """How much work one run does."""

    quick: bool = False
    batch_size: int = 128
    sample_count: int = 64
    sampling_steps: int = 50
    train_steps_per_repeat: int = 4
    warmup: int = 2
    repeats: int = 7
    sampling_repeats: int = 5
    matmul_size: int = 2048
    profile: bool = True
    profile_steps: int = 3
    seed: int = 0

    @classmethod
    def quick_run(cls) -> Settings:
        """A smoke test: everything runs, at a small fraction of the cost."""
        return cls(
            quick=True,
            batch_size=16,
            sample_count=16,
            sampling_steps=10,
            train_steps_per_repeat=2,
            warmup=1,
            repeats=3,
            sampling_repeats=2,
            matmul_size=1024,
            profile_steps=1,
        )


@dataclass
class Models:
    """One pair of freshly initialised networks (same seed) and their schedules/schedulers."""

    difflab: nn.Module
    diffusers: UNet2DModel
    schedule: NoiseSchedule
    ddpm: DDPMScheduler
    ddim: DDIMScheduler


# ----------------------------------------------------------------------------- models


def build_models(seed: int) -> Models:
    """Both networks, initialised from ``seed``, with their schedules (linear betas, T = 1000)."""
    torch.manual_seed(seed)
    difflab_net = build_model(*model_config(DIFFLAB_PRESET))
    diffusers_net = UNet2DModel(**DIFFUSERS_CONFIG)
    schedulers = {"num_train_timesteps": NUM_TIMESTEPS, "beta_schedule": "linear"}
    return Models(
        difflab=difflab_net,
        diffusers=diffusers_net,
        schedule=NoiseSchedule.from_name("linear", NUM_TIMESTEPS),
        ddpm=DDPMScheduler(**schedulers),
        # no clipping of x0: difflab's plain Denoiser does not clip either
        ddim=DDIMScheduler(**schedulers, clip_sample=False),
    )


def parameter_count(module: nn.Module) -> int:
    """Number of parameters of ``module``."""
    return sum(p.numel() for p in module.parameters())


def check_matched(models: Models, sampling_steps: int) -> dict[str, Any]:
    """Check the parameter counts lie within 5 % and both DDIMs visit the same timesteps.

    Raises:
        AssertionError: when the two set-ups are not comparable (also under ``python -O``).
    """
    n_ours, n_theirs = parameter_count(models.difflab), parameter_count(models.diffusers)
    relative = abs(n_ours - n_theirs) / n_ours
    if relative > PARAMETER_TOLERANCE:
        raise AssertionError(f"parameter counts differ by {relative:.1%} (> 5 %)")
    models.ddim.set_timesteps(sampling_steps)
    ours = timestep_sequence(NUM_TIMESTEPS, sampling_steps)
    if not torch.equal(models.ddim.timesteps.long(), ours):
        raise AssertionError("difflab's and diffusers' DDIM timestep sequences differ")
    heads = sorted({m.heads for m in models.diffusers.modules() if hasattr(m, "heads")})
    _, difflab_config = model_config(DIFFLAB_PRESET)
    return {
        "difflab": {
            "preset": DIFFLAB_PRESET,
            "config": asdict(difflab_config),
            "parameters": n_ours,
        },
        "diffusers": {
            "class": "UNet2DModel",
            "config": DIFFUSERS_CONFIG,
            "attention_heads": heads,
            "parameters": n_theirs,
        },
        "parameter_difference": relative,
    }


def autocast(precision: str) -> contextlib.AbstractContextManager[Any]:
    """bf16 CPU autocast for ``"bf16"``, nothing for ``"fp32"``."""
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16")


def synthetic_images(count: int, seed: int) -> torch.Tensor:
    """(count, 1, 28, 28) uniform values in [-1, 1], standing in for MNIST."""
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(count, 1, 28, 28, generator=generator) * 2 - 1


# ----------------------------------------------------------------------------- training steps


def phase(name: str) -> torch.profiler.record_function:
    """A profiler label for one phase of a training step (costs microseconds when not profiling)."""
    return torch.profiler.record_function(PHASE_PREFIX + name)


def difflab_train_step(
    net: nn.Module, schedule: NoiseSchedule, x0: torch.Tensor, precision: str, seed: int
) -> Callable[[], float]:
    """One difflab step per call: ``denoising_loss`` (eps MSE), backward, ``AdamW.step``."""
    net.train()
    optimizer = torch.optim.AdamW(net.parameters(), lr=2e-4)
    generator = torch.Generator().manual_seed(seed)

    def step() -> float:
        optimizer.zero_grad(set_to_none=True)
        with phase("forward + loss"), autocast(precision):
            loss = denoising_loss(net, schedule, x0, generator=generator)
        with phase("backward"):
            loss.backward()
        with phase("optimizer"):
            optimizer.step()
        return float(loss.detach())

    return step


def diffusers_train_step(
    net: UNet2DModel, scheduler: DDPMScheduler, x0: torch.Tensor, precision: str, seed: int
) -> Callable[[], float]:
    """The same step for diffusers: ``add_noise`` at a random t, eps MSE, backward, AdamW."""
    net.train()
    optimizer = torch.optim.AdamW(net.parameters(), lr=2e-4)
    generator = torch.Generator().manual_seed(seed)

    def step() -> float:
        optimizer.zero_grad(set_to_none=True)
        with phase("forward + loss"):
            t = torch.randint(0, NUM_TIMESTEPS, (x0.shape[0],), generator=generator)
            noise = torch.randn(x0.shape, generator=generator)
            x_t = scheduler.add_noise(x0, noise, t)
            with autocast(precision):
                output = net(x_t, t).sample
                loss = F.mse_loss(output.float(), noise)
        with phase("backward"):
            loss.backward()
        with phase("optimizer"):
            optimizer.step()
        return float(loss.detach())

    return step


def train_steps(models: Models, x0: torch.Tensor, precision: str, seed: int) -> dict[str, Any]:
    """``{library: one-training-step callable}`` for both libraries."""
    return {
        "difflab": difflab_train_step(models.difflab, models.schedule, x0, precision, seed),
        "diffusers": diffusers_train_step(models.diffusers, models.ddpm, x0, precision, seed),
    }


def repeated(fn: Callable[[], Any], times: int) -> Callable[[], None]:
    """A callable that calls ``fn`` ``times`` times."""

    def run() -> None:
        for _ in range(times):
            fn()

    return run


# ----------------------------------------------------------------------------- sampling


def difflab_sampler(
    net: nn.Module, schedule: NoiseSchedule, x_T: torch.Tensor, steps: int, precision: str
) -> Callable[[], torch.Tensor]:
    """difflab DDIM (eta = 0, uniform spacing) from ``x_T`` per call."""
    net.eval()
    denoiser = Denoiser(net, schedule)
    timesteps = timestep_sequence(NUM_TIMESTEPS, steps)

    def sample() -> torch.Tensor:
        with torch.no_grad(), autocast(precision):
            return ddim_sample(denoiser, x_T, timesteps, eta=0.0)

    return sample


def diffusers_sampler(
    net: UNet2DModel, scheduler: DDIMScheduler, x_T: torch.Tensor, steps: int, precision: str
) -> Callable[[], torch.Tensor]:
    """diffusers DDIM: ``set_timesteps`` then ``model(x, t).sample`` + ``scheduler.step``."""
    net.eval()

    def sample() -> torch.Tensor:
        with torch.no_grad(), autocast(precision):
            scheduler.set_timesteps(steps)
            x = x_T
            for t in scheduler.timesteps:
                eps = net(x, t).sample
                x = scheduler.step(eps, t, x, eta=0.0).prev_sample
            return x

    return sample


def samplers(models: Models, x_T: torch.Tensor, steps: int, precision: str) -> dict[str, Any]:
    """``{library: one-sampling-run callable}`` for both libraries."""
    return {
        "difflab": difflab_sampler(models.difflab, models.schedule, x_T, steps, precision),
        "diffusers": diffusers_sampler(models.diffusers, models.ddim, x_T, steps, precision),
    }


# ----------------------------------------------------------------------------- measuring


def rate_stats(timing: Timing, items: float) -> dict[str, float]:
    """items/s per repeat summarised (median, mean, std, min, max)."""
    rates = [items / s for s in timing.samples]
    return {
        "median": items / timing.median,
        "mean": statistics.fmean(rates),
        "std": statistics.stdev(rates) if len(rates) > 1 else 0.0,
        "min": min(rates),
        "max": max(rates),
    }


def seconds_stats(timing: Timing) -> dict[str, float]:
    """Seconds per call summarised (median, mean, std, min, max)."""
    return {k: getattr(timing, k) for k in ("median", "mean", "std", "min", "max")}


def measure_training(settings: Settings, precision: str) -> dict[str, Any]:
    """Training images/s of both libraries in ``precision``, timed interleaved."""
    models = build_models(settings.seed)
    x0 = synthetic_images(settings.batch_size, settings.seed)
    steps = train_steps(models, x0, precision, settings.seed)
    per_repeat = settings.train_steps_per_repeat
    timings = interleaved_timings(
        {lib: repeated(fn, per_repeat) for lib, fn in steps.items()},
        warmup=settings.warmup,
        repeats=settings.repeats,
    )
    images = settings.batch_size * per_repeat
    stats = {lib: rate_stats(timing, images) for lib, timing in timings.items()}
    return metric(f"training {precision}", "images/s", True, stats, timings)


def measure_sampling(settings: Settings, precision: str) -> dict[str, Any]:
    """Seconds for one DDIM run of ``sample_count`` images by both libraries in ``precision``."""
    models = build_models(settings.seed)
    x_T = torch.randn(
        settings.sample_count, 1, 28, 28, generator=torch.Generator().manual_seed(settings.seed)
    )
    runs = samplers(models, x_T, settings.sampling_steps, precision)
    timings = interleaved_timings(runs, warmup=1, repeats=settings.sampling_repeats)
    stats = {lib: seconds_stats(timing) for lib, timing in timings.items()}
    name = f"DDIM-{settings.sampling_steps} sampling, {settings.sample_count} images, {precision}"
    return metric(name, "s", False, stats, timings)


def metric(
    name: str,
    unit: str,
    higher_is_better: bool,
    stats: dict[str, dict[str, float]],
    timings: dict[str, Timing],
) -> dict[str, Any]:
    """One result row; ``ratio`` is difflab's speed over diffusers' (> 1: difflab faster)."""
    ours, theirs = stats["difflab"]["median"], stats["diffusers"]["median"]
    ratio = ours / theirs if higher_is_better else theirs / ours
    return {
        "metric": name,
        "unit": unit,
        "higher_is_better": higher_is_better,
        **stats,
        "ratio": ratio,
        "goal_met": ratio >= GOAL,
        "raw_seconds_per_call": {lib: t.as_dict() for lib, t in timings.items()},
    }


def measure_flops(settings: Settings, training: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """FLOPs per training step and per sampling forward, and achieved training GFLOP/s."""
    models = build_models(settings.seed)
    x0 = synthetic_images(settings.batch_size, settings.seed)
    steps = train_steps(models, x0, "fp32", settings.seed)
    x = torch.randn(settings.sample_count, 1, 28, 28)
    t = torch.full((settings.sample_count,), 500)
    forwards = {
        "difflab": lambda: models.difflab(x, t),
        "diffusers": lambda: models.diffusers(x, t).sample,
    }
    out: dict[str, Any] = {}
    for lib in LIBRARIES:
        train_flops = count_flops(steps[lib])
        with torch.no_grad():
            forward_flops = count_flops(forwards[lib])
        achieved = {
            p: train_flops * training[p][lib]["median"] / settings.batch_size / 1e9
            for p in PRECISIONS
        }
        out[lib] = {
            "train_step_flops": train_flops,
            "flops_per_training_image": train_flops / settings.batch_size,
            "sampling_forward_flops_per_image": forward_flops / settings.sample_count,
            "train_gflops_achieved": achieved,
        }
    return out


def measure_peak(settings: Settings) -> dict[str, Any]:
    """A large matmul's GFLOP/s in fp32 and bf16 (this machine's practical peak)."""
    return {
        "fp32": matmul_gflops(torch.float32, settings.matmul_size),
        "bf16": matmul_gflops(torch.bfloat16, settings.matmul_size),
    }


def measure_profiles(settings: Settings) -> dict[str, Any]:
    """``torch.profiler`` summaries of warm training steps per library and precision."""
    out: dict[str, Any] = {}
    for precision in PRECISIONS:
        models = build_models(settings.seed)
        x0 = synthetic_images(settings.batch_size, settings.seed)
        for lib, step in train_steps(models, x0, precision, settings.seed).items():
            step()  # warm: oneDNN primitives, optimizer state
            out[f"{lib} {precision}"] = summarise_profile(profile_ops(step, settings.profile_steps))
    return out


def summarise_profile(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-step totals, phase times, categories, the SDPA kernels used and the top 15 ops."""
    phases = {r["op"].removeprefix(PHASE_PREFIX): r["cpu_total_ms"] for r in rows if is_phase(r)}
    ops = [r for r in rows if not is_phase(r)]
    return {
        "total_self_cpu_ms": sum(r["self_cpu_ms"] for r in rows),
        "phases_ms": phases,
        "sdpa_kernels": sorted(
            {r["op"] for r in ops if r["op"].startswith("aten::_scaled_dot_product")}
        ),
        "categories": share_by_category(ops, PROFILE_CATEGORIES),
        "top_ops": ops[:15],
    }


def is_phase(row: dict[str, Any]) -> bool:
    """Whether a profiler row is one of our phase labels."""
    return row["op"].startswith(PHASE_PREFIX)


# ----------------------------------------------------------------------------- reporting


def results_rows(results: list[dict[str, Any]]) -> list[list[Any]]:
    """metric | difflab | diffusers | ratio rows, values as median (mean ± std)."""
    rows = []
    for r in results:
        digits = 1 if r["unit"] == "images/s" else 2
        cells = [
            f"**{r[lib]['median']:.{digits}f}** ({format_spread(r[lib]['mean'], r[lib]['std'], digits)})"
            for lib in LIBRARIES
        ]
        ratio = f"{r['ratio']:.2f}×" + (" ✅" if r["goal_met"] else "")
        rows.append([f"{r['metric']} ({r['unit']})", *cells, ratio])
    return rows


def efficiency_rows(flops: dict[str, Any], peak: dict[str, Any]) -> list[list[Any]]:
    """Per library and precision: GFLOP per image, achieved GFLOP/s, share of the matmul peak."""
    rows = []
    for lib in LIBRARIES:
        for p in PRECISIONS:
            achieved = flops[lib]["train_gflops_achieved"][p]
            rows.append(
                [
                    f"{lib} training {p}",
                    f"{flops[lib]['flops_per_training_image'] / 1e9:.3f}",
                    f"{achieved:.1f}",
                    f"{peak[p]['gflops']:.1f}",
                    f"{achieved / peak[p]['gflops']:.1%}",
                ]
            )
    return rows


def phase_rows(profiles: dict[str, Any]) -> list[list[Any]]:
    """Phase | CPU ms per step per profiled (library, precision), and the total."""
    keys = list(profiles)
    rows = [
        [name, *(f"{profiles[k]['phases_ms'].get(name, 0.0):.1f}" for k in keys)]
        for name in ("forward + loss", "backward", "optimizer")
    ]
    rows.append(["total (self CPU)", *(f"{profiles[k]['total_self_cpu_ms']:.1f}" for k in keys)])
    return rows


def sdpa_line(profiles: dict[str, Any]) -> str:
    """Which attention kernels each profiled run used."""
    parts = [
        f"{key}: " + (", ".join(f"`{op}`" for op in p["sdpa_kernels"]) or "none")
        for key, p in profiles.items()
    ]
    return "Attention kernels (`scaled_dot_product_attention` backend): " + "; ".join(parts) + "."


def category_rows(profiles: dict[str, Any]) -> list[list[Any]]:
    """Category | share of self CPU time per profiled (library, precision)."""
    keys = list(profiles)
    categories = [*PROFILE_CATEGORIES, "other"]
    return [
        [c, *(f"{profiles[k]['categories'].get(c, 0.0):.1%}" for k in keys)] for c in categories
    ]


def top_ops_table(profile: dict[str, Any]) -> str:
    """Markdown table of one profile's top ops by self CPU time."""
    rows = [
        [
            f"`{r['op']}`",
            f"{r['self_cpu_ms']:.1f}",
            f"{r['self_cpu_share']:.1%}",
            f"{r['cpu_total_ms']:.1f}",
            r["calls"],
        ]
        for r in profile["top_ops"]
    ]
    return markdown_table(["op", "self CPU ms", "share", "CPU total ms", "calls"], rows)


def render_markdown(report: dict[str, Any]) -> str:
    """The human-readable report."""
    s, m, models = report["settings"], report["machine"], report["models"]
    lines = [
        "# difflab U-Net vs diffusers UNet2DModel (CPU)",
        "",
    ]
    if m["load_average"] and m["load_average"][0] > BUSY_LOAD:
        lines += [
            f"> **Busy machine**: load average {m['load_average'][0]:.1f} on "
            f"{m['logical_cpus']} CPUs when the run started; other processes competed for the "
            "cores, so these timings are noisy.",
            "",
        ]
    if s["quick"]:
        lines += [
            "> **Quick run** (`--quick`): small batch, few steps. A smoke test; "
            "these numbers are not the benchmark.",
            "",
        ]
    lines += [
        f"{m['cpu_model']}, {m['torch_threads']} torch threads ({m['logical_cpus']} logical CPUs, "
        f"load average {m['load_average'][0]:.2f} at start); torch {m['torch']}, diffusers "
        f"{m['diffusers']}; {m['date']}.",
        "",
        f"Training: batch {s['batch_size']}, denoising loss (eps MSE) + backward + AdamW; "
        f"sampling: DDIM-{s['sampling_steps']} (eta 0) of {s['sample_count']} images, 28×28×1. "
        f"Warm-up then {s['repeats']} (training, {s['train_steps_per_repeat']} steps each) / "
        f"{s['sampling_repeats']} (sampling) interleaved repeats; cells are **median** "
        "(mean ± std). Ratio = difflab speed ÷ diffusers speed; "
        f"goal ≥ {GOAL}× (✅ marks a row that meets it).",
        "",
        markdown_table(
            ["metric", "difflab", "diffusers", "ratio"], results_rows(report["results"])
        ),
        "",
        "## Matched configurations",
        "",
        markdown_table(
            ["model", "configuration", "parameters"],
            [
                [
                    f"difflab `{DIFFLAB_PRESET}`",
                    "base 32, mult (1, 2, 2), 1 res block/level, scale-shift norm, "
                    "attention (1 head) at 7×7 + middle",
                    f"{models['difflab']['parameters']:,}",
                ],
                [
                    "diffusers `UNet2DModel`",
                    "block_out_channels (32, 64, 64), layers_per_block 1, "
                    "Down/Down/AttnDown + AttnUp/Up/Up, resnet_time_scale_shift scale_shift, "
                    "attention_head_dim None (1 head)",
                    f"{models['diffusers']['parameters']:,}",
                ],
            ],
        ),
        "",
        f"Parameter counts differ by {models['parameter_difference']:.2%}.",
        "",
        "## Compute efficiency",
        "",
        "FLOPs of one training step (forward + backward) from `FlopCounterMode`: convolutions "
        "and matmuls. The CPU flash-attention kernel has no FLOP formula, so attention (< 1 % of "
        "the work at 7×7) counts only where it runs on the math path (`bmm`). "
        f"Peak = a {report['peak']['fp32']['size']}² matmul in the same run.",
        "",
        markdown_table(
            ["run", "GFLOP / image", "GFLOP/s", "matmul peak GFLOP/s", "share of peak"],
            efficiency_rows(report["flops"], report["peak"]),
        ),
    ]
    lines += render_profiles(report.get("profiles"))
    return "\n".join(lines)


def render_profiles(profiles: dict[str, Any] | None) -> list[str]:
    """The "Where the time goes" section (empty without profiles)."""
    if not profiles:
        return []
    lines = [
        "",
        "## Where the time goes",
        "",
        "`torch.profiler` over warm training steps (same batch as above); CPU ms per step by "
        "phase, then the share of self CPU time by op category.",
        "",
        markdown_table(["phase (ms / step)", *profiles], phase_rows(profiles)),
        "",
        markdown_table(["category", *profiles], category_rows(profiles)),
        "",
        sdpa_line(profiles),
    ]
    for key in ("difflab fp32", "difflab bf16"):
        total = profiles[key]["total_self_cpu_ms"]
        lines += [
            "",
            f"### Top 15 ops, {key} (total self CPU {total:.0f} ms)",
            "",
            top_ops_table(profiles[key]),
        ]
    return lines


def write_outputs(report: dict[str, Any], out_dir: Path) -> list[Path]:
    """JSON, markdown and the ratio chart."""
    labels = [r["metric"] for r in report["results"]]
    ratios = [r["ratio"] for r in report["results"]]
    title = "difflab vs diffusers U-Net (CPU)" + (" — quick run" if report["quick"] else "")
    return [
        write_json(out_dir / f"{NAME}.json", report),
        write_text(out_dir / f"{NAME}.md", render_markdown(report)),
        write_ratio_chart(out_dir / f"{NAME}.png", labels, ratios, title=title, goal=GOAL),
    ]


# ----------------------------------------------------------------------------- main


def run(settings: Settings) -> dict[str, Any]:
    """Every measurement, in one report dictionary."""
    report: dict[str, Any] = {
        "benchmark": NAME,
        "quick": settings.quick,
        "goal_ratio": GOAL,
        "settings": asdict(settings),
        "machine": machine_info(["diffusers", "numpy"]),
    }
    report["models"] = check_matched(build_models(settings.seed), settings.sampling_steps)
    print_models(report["models"])
    training = {}
    results = []
    for precision in PRECISIONS:
        training[precision] = progress(measure_training(settings, precision))
        results.append(training[precision])
    for precision in PRECISIONS:
        results.append(progress(measure_sampling(settings, precision)))
    report["results"] = results
    report["peak"] = measure_peak(settings)
    report["flops"] = measure_flops(settings, training)
    if settings.profile:
        report["profiles"] = measure_profiles(settings)
    report["machine"]["load_average_end"] = machine_info()["load_average"]
    return report


def print_models(models: dict[str, Any]) -> None:
    """Parameter counts to stdout."""
    print(
        f"parameters: difflab {models['difflab']['parameters']:,}, "
        f"diffusers {models['diffusers']['parameters']:,} "
        f"({models['parameter_difference']:.2%} apart)",
        flush=True,
    )


def progress(result: dict[str, Any]) -> dict[str, Any]:
    """Print one result row as it arrives; returns it."""
    ours, theirs = result["difflab"]["median"], result["diffusers"]["median"]
    print(
        f"{result['metric']}: difflab {ours:.3g} {result['unit']}, diffusers {theirs:.3g} "
        f"{result['unit']}, ratio {result['ratio']:.2f}x",
        flush=True,
    )
    return result


def parse_args(argv: list[str] | None = None) -> tuple[Settings, Path]:
    """Settings (``--quick`` or the full run, with optional overrides) and the output folder."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="a fast smoke test (small, noisy)")
    parser.add_argument("--batch-size", type=int, help="training batch (default 128)")
    parser.add_argument("--samples", type=int, help="images per sampling run (default 64)")
    parser.add_argument("--steps", type=int, help="DDIM steps (default 50)")
    parser.add_argument("--repeats", type=int, help="timed training repeats (default 7)")
    parser.add_argument("--no-profile", action="store_true", help="skip the profiler section")
    parser.add_argument("--out-dir", type=Path, default=RESULTS_DIR, help="where results go")
    args = parser.parse_args(argv)
    settings = Settings.quick_run() if args.quick else Settings()
    overrides = {
        "batch_size": args.batch_size,
        "sample_count": args.samples,
        "sampling_steps": args.steps,
        "repeats": args.repeats,
    }
    settings = replace(settings, **{k: v for k, v in overrides.items() if v is not None})
    if args.no_profile:
        settings = replace(settings, profile=False)
    return settings, args.out_dir


def main(argv: list[str] | None = None) -> None:
    settings, out_dir = parse_args(argv)
    report = run(settings)
    for path in write_outputs(report, out_dir):
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
