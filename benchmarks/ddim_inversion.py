"""DDIM inversion on MNIST: eps at the source or at the destination timestep of each inverse move.

:func:`difflab.samplers.ddim_invert` runs the η = 0 DDIM step backwards, x0 → x_T. Moving from
level t_prev up to t (eq. 13 read backwards, ``x_bar = x / sqrt(alpha_bar)``,
``sigma = sqrt((1 - alpha_bar) / alpha_bar)``)

    x_bar_t = x_bar_prev + (sigma_t - sigma_prev) * eps,

it needs an eps it cannot evaluate exactly (the sampler will use eps(x_t, t), and x_t is what is
being computed). ``eps_at="source"`` uses eps(x_prev, t_prev), a forward-Euler step;
``eps_at="destination"`` uses eps(x_prev, t), the timestep the sampler will evaluate at that level
(diffusers' ``DDIMInverseScheduler``, null-text inversion). This script measures which
reconstructs better on the shipped model ``weights/mnist_ddim.safetensors``: the first ``--n``
MNIST test digits (prepared as in training) are inverted with S steps by each convention and
regenerated with deterministic DDIM (η = 0, the same S); the error is the per-dimension MSE on
the [0, 1] pixel scale (our [-1, 1] MSE / 4), the DDIM paper's Table 2 metric. The default n and
the digits are those of ``benchmarks/ddim_tables.py``'s Table 2 (``--n-inversion 50``), so the
column of the convention that is ``ddim_invert``'s default is that table's measurement.

Per S the report gives both MSEs (mean over digits ± its standard error), the ratio
source / destination (> 1: the destination convention is better) and on how many digits the
destination convention wins. Both conventions cost the same (S network evaluations to invert,
S to regenerate); the wall time of each is recorded.

Writes ``benchmarks/results/ddim_inversion.{json,md,png}``; the markdown and the plot are rendered
from the JSON (``--render-only`` redoes them from an existing JSON without measuring). ``--quick``
(4 digits, S ∈ {2, 4}, outputs named ``ddim_inversion_quick.*``) finishes in seconds. One torch
thread unless ``--threads`` says otherwise.

    python benchmarks/ddim_inversion.py                       # ≈ 10 min on one core (60 img-evals/s)
    python benchmarks/ddim_inversion.py --steps 10 20 50 100 200
    python benchmarks/ddim_inversion.py --quick --out-dir /tmp/x
"""

from __future__ import annotations

import argparse
import inspect
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

import common as bench
from difflab.data import load_dataset
from difflab.diffusion import Conditioning
from difflab.errors import DifflabError
from difflab.pipelines import DiffusionPipeline, load_pipeline
from difflab.samplers import ddim_invert, ddim_sample
from difflab.samplers.ddim import EPS_AT

NAME = "ddim_inversion"
DEFAULT_CHECKPOINT = Path("weights/mnist_ddim.safetensors")
STEPS = (10, 20, 50, 100)
N = 50  # = ddim_tables.py's --n-inversion of its recorded run
QUICK_STEPS, QUICK_N = (2, 4), 4
BATCH_SIZE = 50
THREADS = 1


def inversion_images(model: DiffusionPipeline, n: int) -> torch.Tensor:
    """The first ``n`` test images of the model's dataset, prepared as in training: (n, C, H, W)."""
    data = model.description.data_config
    dataset = load_dataset(
        model.description.dataset,
        split="test",
        limit=n,
        image_size=data.get("image_size"),
        channels=data.get("channels"),
        pad_to_32=bool(data.get("pad_to_32", False)),
        data_dir=data.get("data_dir"),
    )
    return dataset.images


@torch.no_grad()
def round_trip_mse(
    model: DiffusionPipeline, images: torch.Tensor, steps: int, eps_at: str, batch_size: int
) -> torch.Tensor:
    """Per-image MSE on the [0, 1] scale of invert (``eps_at``) → regenerate (η = 0): (n,)."""
    denoiser, timesteps, cond = model.denoiser(), model.timesteps(steps), Conditioning()
    errors = []
    for first in range(0, len(images), batch_size):
        x0 = images[first : first + batch_size]  # (B, C, H, W) in [-1, 1]
        x_T = ddim_invert(denoiser, x0, timesteps, cond, eps_at=eps_at)
        x0_hat = ddim_sample(denoiser, x_T, timesteps, cond, eta=0.0)
        errors.append(((x0_hat.float() - x0) ** 2).flatten(1).mean(1) / 4)  # [0, 1] scale
    return torch.cat(errors)


def convention_summary(errors: torch.Tensor, seconds: float) -> dict[str, Any]:
    """Mean per-dimension MSE, its standard error over digits, the median, each digit's, the time."""
    n = len(errors)
    return {
        "mse_unit": float(errors.mean()),
        "mse_unit_se": float(errors.std()) / math.sqrt(n) if n > 1 else None,
        "mse_unit_median": float(errors.median()),
        "mse_unit_per_digit": errors.tolist(),
        "wall_seconds": seconds,
    }


def measure(
    model: DiffusionPipeline, images: torch.Tensor, steps: Sequence[int], batch_size: int
) -> list[dict[str, Any]]:
    """One row per S: both conventions' MSE, their ratio, per-digit wins."""
    rows = []
    for s in steps:
        errors, row = {}, {"steps": s, "n": len(images)}
        for eps_at in EPS_AT:
            start = time.perf_counter()
            errors[eps_at] = round_trip_mse(model, images, s, eps_at, batch_size)
            row[eps_at] = convention_summary(errors[eps_at], time.perf_counter() - start)
            print(
                f"S={s:<4} eps at {eps_at:<11} MSE[0,1] {row[eps_at]['mse_unit']:.3e} "
                f"({row[eps_at]['wall_seconds']:.0f} s)",
                flush=True,
            )
        row["ratio_source_over_destination"] = (
            row["source"]["mse_unit"] / row["destination"]["mse_unit"]
        )
        row["destination_better_digits"] = int((errors["destination"] < errors["source"]).sum())
        row["median_ratio_source_over_destination"] = float(
            (errors["source"] / errors["destination"]).median()
        )
        rows.append(row)
    return rows


def better_at(row: dict[str, Any]) -> str:
    """The convention that wins at one S on both counts (mean MSE, most digits), else "split"."""
    mean_says = "destination" if row["ratio_source_over_destination"] > 1 else "source"
    digits_say = "destination" if 2 * row["destination_better_digits"] > row["n"] else "source"
    return mean_says if mean_says == digits_say else "split"


def verdict(rows: Sequence[dict[str, Any]]) -> str:
    """The convention that wins at every S (see :func:`better_at`), else "mixed"."""
    winners = {better_at(row) for row in rows}
    return winners.pop() if len(winners) == 1 and "split" not in winners else "mixed"


# ----------------------------------------------------------------------------- rendering


def sci(value: float | None, se: float | None = None) -> str:
    """``1.23e-03 ± 4e-05`` (or "—" for None)."""
    if value is None:
        return "—"
    return f"{value:.2e}" if se is None else f"{value:.2e} ± {se:.0e}"


def render_markdown(report: dict[str, Any]) -> str:
    """The markdown report, from the JSON report only."""
    rows = report["rows"]
    machine = report["machine"]
    table = bench.markdown_table(
        [
            "S",
            "MSE [0,1], eps at source",
            "MSE [0,1], eps at destination",
            "median, source",
            "median, destination",
            "source / destination (means)",
            "destination better on",
            "better",
        ],
        [
            [
                row["steps"],
                sci(row["source"]["mse_unit"], row["source"]["mse_unit_se"]),
                sci(row["destination"]["mse_unit"], row["destination"]["mse_unit_se"]),
                sci(row["source"]["mse_unit_median"]),
                sci(row["destination"]["mse_unit_median"]),
                f"{row['ratio_source_over_destination']:.2f}×",
                f"{row['destination_better_digits']}/{row['n']} digits",
                better_at(row),
            ]
            for row in rows
        ],
    )
    bf16 = "with" if "avx512_bf16" in machine["cpu_flags"] else "no"
    return bench.sections(
        f"# DDIM inversion: eps at the source or the destination timestep ({report['name']})",
        f"`{report['command']}`",
        f"Checkpoint `{report['checkpoint']}` (T = {report['num_timesteps']}); the first "
        f"{report['n']} {report['dataset']} test digits, inverted with S steps and regenerated "
        "with DDIM η = 0 at the same S, fp32. Per-dimension MSE on the [0, 1] scale, mean over "
        "digits ± standard error, and the median digit's; ratio > 1: eps at the destination "
        "reconstructs better on average. *better*: the convention that wins on both the mean "
        "and most digits at that S (else split); the verdict: the one that is better at every S "
        "(else mixed).",
        table,
        f"Verdict: **{report['verdict']}** (`ddim_invert`'s default when measured: "
        f"`eps_at={report['default_eps_at']!r}`).",
        f"Machine: {bench.machine_line(machine)} CPU flags: {', '.join(machine['cpu_flags'])} "
        f"({bf16} avx512_bf16). {report['total_seconds']:.0f} s in all.",
    )


def figures(report: dict[str, Any], out_dir: Path) -> list[Path]:
    """MSE vs S for both conventions (log-log, ± SE) and the ratio vs S; from the JSON report."""
    rows = report["rows"]
    steps = [row["steps"] for row in rows]
    fig, (mse_ax, ratio_ax) = bench.pyplot().subplots(1, 2, figsize=(10, 4))
    for eps_at, marker in zip(EPS_AT, "os", strict=True):
        mse = [row[eps_at]["mse_unit"] for row in rows]
        se = [row[eps_at]["mse_unit_se"] or 0.0 for row in rows]
        line = mse_ax.errorbar(
            steps, mse, yerr=se, marker=marker, capsize=3, label=f"eps at {eps_at}, mean"
        )
        median = [row[eps_at]["mse_unit_median"] for row in rows]
        colour = line.lines[0].get_color()
        mse_ax.plot(
            steps,
            median,
            linestyle="--",
            marker=marker,
            color=colour,
            mfc="none",
            label=f"eps at {eps_at}, median",
        )
    mse_ax.set_xscale("log")
    mse_ax.set_yscale("log")
    mse_ax.set_xlabel("S (inversion and generation steps)")
    mse_ax.set_ylabel("per-dimension MSE, [0, 1] scale")
    mse_ax.set_title(f"invert → regenerate, {report['n']} {report['dataset']} test digits")
    mse_ax.legend()
    ratio_ax.plot(
        steps, [row["ratio_source_over_destination"] for row in rows], marker="o", label="means"
    )
    ratio_ax.plot(
        steps,
        [row["median_ratio_source_over_destination"] for row in rows],
        marker="s",
        linestyle="--",
        label="median digit's ratio",
    )
    ratio_ax.legend()
    ratio_ax.axhline(1.0, color="black", linewidth=1)
    ratio_ax.set_xscale("log")
    ratio_ax.set_xlabel("S")
    ratio_ax.set_ylabel("MSE(source) / MSE(destination)")
    ratio_ax.set_title("> 1: eps at the destination is better")
    for ax in (mse_ax, ratio_ax):
        ax.set_xticks(steps, [str(s) for s in steps])
        ax.minorticks_off()
        ax.grid(True, alpha=0.3)
    return [bench.save_figure(fig, out_dir / f"{report['name']}.png")]


# ----------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = bench.bench_parser(__doc__, quick=f"{QUICK_N} digits, S in {QUICK_STEPS}; seconds")
    parser.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT)
    parser.add_argument("--n", type=int, help=f"test digits ({N}; --quick: {QUICK_N})")
    parser.add_argument(
        "--steps", type=int, nargs="+", help=f"values of S ({STEPS}; --quick: {QUICK_STEPS})"
    )
    parser.add_argument("--batch-size", type=int, default=BATCH_SIZE)
    parser.set_defaults(threads=THREADS)
    args = bench.parse(parser, argv)
    args.n = args.n or (QUICK_N if args.quick else N)
    args.steps = sorted(set(args.steps or (QUICK_STEPS if args.quick else STEPS)))
    if args.n < 2 or args.batch_size < 1 or min(args.steps) < 1:
        parser.error("--n must be at least 2, --batch-size and every S at least 1")
    return args


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Measure both conventions at every S; the JSON report."""
    start = time.perf_counter()
    model = load_pipeline(args.checkpoint)
    if model.num_classes:
        raise DifflabError(
            f"{args.checkpoint} is class-conditional; this benchmark takes an unconditional "
            "model such as weights/mnist_ddim.safetensors."
        )
    too_long = [s for s in args.steps if s > model.schedule.num_timesteps]
    if too_long:
        raise DifflabError(
            f"S={too_long} exceed the checkpoint's T={model.schedule.num_timesteps}; "
            "give smaller --steps."
        )
    images = inversion_images(model, args.n)
    print(
        f"{args.checkpoint}: T={model.schedule.num_timesteps}; {len(images)} test digits, "
        f"S in {args.steps}, {torch.get_num_threads()} thread(s)",
        flush=True,
    )
    rows = measure(model, images, args.steps, args.batch_size)
    command = [f"--checkpoint {args.checkpoint}", f"--n {len(images)}"]
    command += ["--steps " + " ".join(map(str, args.steps)), f"--threads {args.threads}"]
    command += ["--quick"] if args.quick else []
    return {
        "name": bench.stem_of(NAME, args.quick),
        "command": "python benchmarks/ddim_inversion.py " + " ".join(command),
        "checkpoint": str(args.checkpoint),
        "num_timesteps": model.schedule.num_timesteps,
        "dataset": model.description.dataset,
        "n": len(images),
        "metric": "per-dimension MSE of invert → regenerate (η = 0), [0, 1] scale = [-1, 1] MSE / 4",
        "default_eps_at": inspect.signature(ddim_invert).parameters["eps_at"].default,
        "rows": rows,
        "verdict": verdict(rows),
        "machine": bench.machine_info(),
        "total_seconds": time.perf_counter() - start,
    }


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return bench.publish(args, NAME, lambda: run(args), render_markdown, figures)
    except DifflabError as error:
        print(f"error: {error}")
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
