"""difflab's U-Net vs diffusers' ``UNet2DModel`` (+ ``DDIMScheduler``) on the CPU, in one run.

Both networks are the same ADM-style U-Net for 28x28 MNIST (base 32 channels, mult (1, 2, 2), one
residual block per level, scale-shift norm, one-head attention at 7x7 and in the middle); their
parameter counts are asserted to lie within 5 % of each other. Measured:

* training images/s of one step (denoising loss, backward, ``AdamW.step``), batch 128, in fp32
  and under ``torch.autocast("cpu", dtype=torch.bfloat16)``;
* DDIM sampling (50 steps, eta = 0) of 64 images, fp32 and bf16 (difflab through
  ``DiffusionPipeline.generate``);
* FLOPs per training step (``FlopCounterMode``) -> achieved GFLOP/s, against a large matmul's
  GFLOP/s in the same run (a practical peak);
* a ``torch.profiler`` breakdown of one training step (top ops by self CPU time).

Every ratio is difflab's speed divided by diffusers' (> 1: difflab is faster). The inputs are
synthetic (random images): the benchmark measures the networks, not data loading.

Run ``python benchmarks/unet_vs_diffusers.py`` (a few minutes on 2 cores; ``make bench-unet``) or
``--quick`` (a smoke test: small batch, few steps). Writes ``unet_vs_diffusers.{json,md,png}``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

import common as bench
from difflab.diffusion import timestep_sequence
from difflab.models import build_model, model_config

NAME = "unet_vs_diffusers"
GOAL = 1.5  # the target: difflab >= 1.5x diffusers
PARAMETER_TOLERANCE = 0.05
PRECISIONS = ("fp32", "bf16")
BUSY_LOAD = 1.0  # a 1-minute load average above this at start: something else was running
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
ELEMENTWISE = ("silu", "add", "mul", "sub", "div", "sqrt", "mse", "pow", "neg", "sum", "fill_")
PROFILE_CATEGORIES: dict[str, tuple[str, ...]] = {
    "convolution (fwd + bwd)": ("convolution",),
    "group norm (fwd + bwd)": ("group_norm",),
    "attention (SDPA, bmm, softmax)": ("scaled_dot_product", "bmm", "softmax"),
    "linear (addmm, mm)": ("addmm", "aten::mm"),
    "dtype casts and copies": ("aten::to", "_to_copy", "copy_", "clone", "contiguous"),
    "element-wise (silu, add, mul, ...)": (*ELEMENTWISE, "zero_", "where"),
    "resampling and concat": ("upsample", "cat", "interpolate"),
}
PHASES = ("forward + loss", "backward", "optimizer")


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
    profile_precisions: tuple[str, ...] = PRECISIONS
    seed: int = 0


QUICK = Settings(  # one untimed-warm-up-free repeat of everything, fp32 profile only
    quick=True,
    batch_size=4,
    sample_count=4,
    sampling_steps=2,
    train_steps_per_repeat=1,
    warmup=0,
    repeats=1,
    sampling_repeats=1,
    matmul_size=256,
    profile_steps=1,
    profile_precisions=("fp32",),
)


# ----------------------------------------------------------------------------- measuring


def build_pair(seed: int) -> tuple[nn.Module, nn.Module]:
    """difflab's ``unet-mnist`` and diffusers' twin, initialised from ``seed``."""
    from diffusers import UNet2DModel

    torch.manual_seed(seed)
    return build_model(*model_config(DIFFLAB_PRESET)), UNet2DModel(**DIFFUSERS_CONFIG)


def check_matched(sampling_steps: int, seed: int) -> dict[str, Any]:
    """Check the parameter counts lie within 5 % and both DDIMs visit the same timesteps.

    Raises:
        AssertionError: when the two set-ups are not comparable (also under ``python -O``).
    """
    from diffusers import DDIMScheduler

    ours, theirs = build_pair(seed)
    n_ours, n_theirs = bench.parameter_count(ours), bench.parameter_count(theirs)
    relative = abs(n_ours - n_theirs) / n_ours
    if relative > PARAMETER_TOLERANCE:
        raise AssertionError(f"parameter counts differ by {relative:.1%} (> 5 %)")
    scheduler = DDIMScheduler(num_train_timesteps=bench.NUM_TIMESTEPS, beta_schedule="linear")
    scheduler.set_timesteps(sampling_steps)
    if not torch.equal(
        scheduler.timesteps.long(), timestep_sequence(bench.NUM_TIMESTEPS, sampling_steps)
    ):
        raise AssertionError("difflab's and diffusers' DDIM timestep sequences differ")
    heads = sorted({m.heads for m in theirs.modules() if hasattr(m, "heads")})
    return {
        "difflab": {"preset": DIFFLAB_PRESET, "config": asdict(ours.config), "parameters": n_ours},
        "diffusers": {
            "class": "UNet2DModel",
            "config": DIFFUSERS_CONFIG,
            "attention_heads": heads,
            "parameters": n_theirs,
        },
        "parameter_difference": relative,
    }


def synthetic_images(count: int, seed: int) -> torch.Tensor:
    """(count, 1, 28, 28) uniform values in [-1, 1], standing in for MNIST."""
    return torch.rand(count, 1, 28, 28, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def train_steps(settings: Settings, precision: str) -> dict[str, Callable[[], float]]:
    """``{library: one training step}`` of a fresh pair on a fixed synthetic batch."""
    ours, theirs = build_pair(settings.seed)
    x0 = synthetic_images(settings.batch_size, settings.seed)
    return bench.race_train_steps(ours, theirs, x0, None, precision, settings.seed)


def result_row(
    name: str, unit: str, stats: dict[str, dict[str, float]], timings: dict[str, bench.Timing]
) -> dict[str, Any]:
    """One result row; ``ratio`` is difflab's speed over diffusers' (> 1: difflab faster)."""
    higher_is_better = unit == "images/s"
    ours, theirs = stats["difflab"]["median"], stats["diffusers"]["median"]
    ratio = ours / theirs if higher_is_better else theirs / ours
    print(f"{name}: difflab {ours:.3g} {unit}, diffusers {theirs:.3g} {unit}, ratio {ratio:.2f}x")
    return {
        "metric": name,
        "unit": unit,
        "higher_is_better": higher_is_better,
        **stats,
        "ratio": ratio,
        "goal_met": ratio >= GOAL,
        "raw_seconds_per_call": {lib: t.as_dict() for lib, t in timings.items()},
    }


def measure_training(settings: Settings, precision: str) -> dict[str, Any]:
    """Training images/s of both libraries in ``precision``, timed interleaved."""
    per_repeat = settings.train_steps_per_repeat
    steps = {
        lib: bench.repeated(fn, per_repeat) for lib, fn in train_steps(settings, precision).items()
    }
    timings = bench.interleaved_timings(steps, warmup=settings.warmup, repeats=settings.repeats)
    images = settings.batch_size * per_repeat
    stats = {lib: timing.rates(images) for lib, timing in timings.items()}
    return result_row(f"training {precision}", "images/s", stats, timings)


def measure_sampling(settings: Settings, precision: str) -> dict[str, Any]:
    """Seconds for one DDIM run of ``sample_count`` images by both libraries in ``precision``."""
    ours, theirs = build_pair(settings.seed)
    count, steps = settings.sample_count, settings.sampling_steps
    runs = bench.race_samplers(ours, theirs, count, steps, None, precision, settings.seed)
    warmup = min(settings.warmup, 1)
    timings = bench.interleaved_timings(runs, warmup=warmup, repeats=settings.sampling_repeats)
    stats = {lib: timing.stats() for lib, timing in timings.items()}
    name = f"DDIM-{steps} sampling, {count} images, {precision}"
    return result_row(name, "s", stats, timings)


def measure_flops(settings: Settings, training: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """FLOPs per training step and per sampling forward, and achieved training GFLOP/s."""
    ours, theirs = build_pair(settings.seed)
    steps = train_steps(settings, "fp32")
    x = torch.randn(settings.sample_count, 1, 28, 28)
    t = torch.full((settings.sample_count,), 500)
    forwards = {"difflab": lambda: ours(x, t), "diffusers": lambda: theirs(x, t).sample}
    out: dict[str, Any] = {}
    for lib in bench.LIBRARIES:
        train_flops = bench.count_flops(steps[lib])
        with torch.no_grad():
            forward_flops = bench.count_flops(forwards[lib])
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


def measure_profiles(settings: Settings) -> dict[str, Any]:
    """Per library and precision: phase times, op categories, SDPA kernels, top 15 ops."""
    out: dict[str, Any] = {}
    for precision in settings.profile_precisions:
        for lib, step in train_steps(settings, precision).items():
            step()  # warm: oneDNN primitives, optimizer state
            rows = bench.profile_ops(step, settings.profile_steps)
            phases = [r for r in rows if r["op"].startswith("phase: ")]
            ops = [r for r in rows if r not in phases]
            out[f"{lib} {precision}"] = {
                "total_self_cpu_ms": sum(r["self_cpu_ms"] for r in rows),
                "phases_ms": {r["op"].removeprefix("phase: "): r["cpu_total_ms"] for r in phases},
                "sdpa_kernels": sorted(
                    {r["op"] for r in ops if r["op"].startswith("aten::_scaled_dot_product")}
                ),
                "categories": bench.share_by_category(ops, PROFILE_CATEGORIES),
                "top_ops": ops[:15],
            }
    return out


def measure(settings: Settings) -> dict[str, Any]:
    """Every measurement, in one report."""
    machine = bench.machine_info(["diffusers", "numpy"])
    models = check_matched(settings.sampling_steps, settings.seed)
    print(
        f"parameters: difflab {models['difflab']['parameters']:,}, diffusers "
        f"{models['diffusers']['parameters']:,} ({models['parameter_difference']:.2%} apart)"
    )
    training = {p: measure_training(settings, p) for p in PRECISIONS}
    sampling = [measure_sampling(settings, p) for p in PRECISIONS]
    size = settings.matmul_size
    report = {
        "benchmark": NAME,
        "quick": settings.quick,
        "goal_ratio": GOAL,
        "settings": asdict(settings),
        "machine": machine,
        "models": models,
        "results": [*training.values(), *sampling],
        "peak": {
            "fp32": bench.matmul_gflops(torch.float32, size),
            "bf16": bench.matmul_gflops(torch.bfloat16, size),
        },
        "flops": measure_flops(settings, training),
    }
    if settings.profile:
        report["profiles"] = measure_profiles(settings)
    report["machine"]["load_average_end"] = bench.machine_info()["load_average"]
    return report


# ----------------------------------------------------------------------------- report


def results_rows(results: list[dict[str, Any]]) -> list[list[Any]]:
    """metric | difflab | diffusers | ratio rows, values as median (mean ± std)."""
    rows = []
    for r in results:
        digits = 1 if r["unit"] == "images/s" else 2
        cells = [
            f"**{r[lib]['median']:.{digits}f}** "
            f"({bench.format_spread(r[lib]['mean'], r[lib]['std'], digits)})"
            for lib in bench.LIBRARIES
        ]
        ratio = f"{r['ratio']:.2f}×" + (" ✅" if r["goal_met"] else "")
        rows.append([f"{r['metric']} ({r['unit']})", *cells, ratio])
    return rows


def efficiency_rows(flops: dict[str, Any], peak: dict[str, Any]) -> list[list[Any]]:
    """Per library and precision: GFLOP per image, achieved GFLOP/s, share of the matmul peak."""
    rows = []
    for lib in bench.LIBRARIES:
        for p in PRECISIONS:
            achieved, top = flops[lib]["train_gflops_achieved"][p], peak[p]["gflops"]
            per_image = flops[lib]["flops_per_training_image"] / 1e9
            rows.append(
                [
                    f"{lib} training {p}",
                    f"{per_image:.3f}",
                    f"{achieved:.1f}",
                    f"{top:.1f}",
                    f"{achieved / top:.1%}",
                ]
            )
    return rows


def profile_markdown(profiles: dict[str, Any] | None) -> list[str]:
    """The "Where the time goes" section (empty without profiles)."""
    if not profiles:
        return []
    keys = list(profiles)
    phases = [
        [name, *(f"{profiles[k]['phases_ms'].get(name, 0.0):.1f}" for k in keys)] for name in PHASES
    ]
    phases.append(["total (self CPU)", *(f"{profiles[k]['total_self_cpu_ms']:.1f}" for k in keys)])
    categories = [
        [c, *(f"{profiles[k]['categories'].get(c, 0.0):.1%}" for k in keys)]
        for c in [*PROFILE_CATEGORIES, "other"]
    ]
    kernels = "; ".join(
        f"{key}: " + (", ".join(f"`{op}`" for op in p["sdpa_kernels"]) or "none")
        for key, p in profiles.items()
    )
    lines = [
        "## Where the time goes",
        "`torch.profiler` over warm training steps (same batch as above); CPU ms per step by "
        "phase, then the share of self CPU time by op category.",
        bench.markdown_table(["phase (ms / step)", *keys], phases),
        bench.markdown_table(["category", *keys], categories),
        f"Attention kernels (`scaled_dot_product_attention` backend): {kernels}.",
    ]
    for key in (key for key in profiles if key.startswith("difflab ")):
        ops = [
            [
                f"`{r['op']}`",
                f"{r['self_cpu_ms']:.1f}",
                f"{r['self_cpu_share']:.1%}",
                f"{r['cpu_total_ms']:.1f}",
                r["calls"],
            ]
            for r in profiles[key]["top_ops"]
        ]
        lines += [
            f"### Top 15 ops, {key} (total self CPU {profiles[key]['total_self_cpu_ms']:.0f} ms)",
            bench.markdown_table(["op", "self CPU ms", "share", "CPU total ms", "calls"], ops),
        ]
    return lines


def render_markdown(report: dict[str, Any]) -> str:
    """The human-readable report, from the JSON alone."""
    s, m, models = report["settings"], report["machine"], report["models"]
    notes = []
    if m["load_average"] and m["load_average"][0] > BUSY_LOAD:
        notes.append(
            f"> **Busy machine**: load average {m['load_average'][0]:.1f} on "
            f"{m['logical_cpus']} CPUs when the run started; other processes competed for the "
            "cores, so these timings are noisy."
        )
    if s["quick"]:
        notes.append(
            "> **Quick run** (`--quick`): small batch, few steps. A smoke test; "
            "these numbers are not the benchmark."
        )
    configs = [
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
    ]
    return bench.sections(
        "# difflab U-Net vs diffusers UNet2DModel (CPU)",
        *notes,
        f"{bench.machine_line(m)} Load average {m['load_average'][0]:.2f} at start.",
        f"Training: batch {s['batch_size']}, denoising loss (eps MSE) + backward + AdamW; "
        f"sampling: DDIM-{s['sampling_steps']} (eta 0) of {s['sample_count']} images, 28×28×1. "
        f"Warm-up then {s['repeats']} (training, {s['train_steps_per_repeat']} steps each) / "
        f"{s['sampling_repeats']} (sampling) interleaved repeats; cells are **median** "
        "(mean ± std). Ratio = difflab speed ÷ diffusers speed; "
        f"goal ≥ {report['goal_ratio']}× (✅ marks a row that meets it).",
        bench.markdown_table(
            ["metric", "difflab", "diffusers", "ratio"], results_rows(report["results"])
        ),
        "## Matched configurations",
        bench.markdown_table(["model", "configuration", "parameters"], configs),
        f"Parameter counts differ by {models['parameter_difference']:.2%}.",
        "## Compute efficiency",
        "FLOPs of one training step (forward + backward) from `FlopCounterMode`: convolutions "
        "and matmuls. The CPU flash-attention kernel has no FLOP formula, so attention (< 1 % of "
        "the work at 7×7) counts only where it runs on the math path (`bmm`). "
        f"Peak = a {report['peak']['fp32']['size']}² matmul in the same run.",
        bench.markdown_table(
            ["run", "GFLOP / image", "GFLOP/s", "matmul peak GFLOP/s", "share of peak"],
            efficiency_rows(report["flops"], report["peak"]),
        ),
        *profile_markdown(report.get("profiles")),
    )


def figures(report: dict[str, Any], out_dir: Path) -> list[Path]:
    """The ratio chart."""
    title = "difflab vs diffusers U-Net (CPU)" + (" — quick run" if report["quick"] else "")
    path = out_dir / f"{bench.stem_of(NAME, report['quick'])}.png"
    labels = [r["metric"] for r in report["results"]]
    ratios = [r["ratio"] for r in report["results"]]
    return [bench.write_ratio_chart(path, labels, ratios, title=title, goal=report["goal_ratio"])]


def main(argv: Sequence[str] | None = None) -> int:
    parser = bench.bench_parser(__doc__, "a smoke test: batch 4, DDIM-2, one repeat")
    parser.add_argument("--batch-size", type=int, help="training batch (default 128)")
    parser.add_argument("--samples", type=int, help="images per sampling run (default 64)")
    parser.add_argument("--steps", type=int, help="DDIM steps (default 50)")
    parser.add_argument("--repeats", type=int, help="timed training repeats (default 7)")
    parser.add_argument("--no-profile", action="store_true", help="skip the profiler section")
    args = bench.parse(parser, argv)
    overrides = {
        "batch_size": args.batch_size,
        "sample_count": args.samples,
        "sampling_steps": args.steps,
        "repeats": args.repeats,
        "profile": False if args.no_profile else None,
    }
    settings = dataclasses.replace(
        QUICK if args.quick else Settings(), **{k: v for k, v in overrides.items() if v is not None}
    )
    return bench.publish(args, NAME, lambda: measure(settings), render_markdown, figures)


if __name__ == "__main__":
    raise SystemExit(main())
