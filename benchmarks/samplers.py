"""NFE vs FD-MNIST for the registered samplers (DPM-Solver's and EDM's figures in shape).

For each shipped model (the unconditional U-Nets ``mnist_ddim`` and ``mnist_fast``; the
class-conditional U-Nets ``mnist_cond`` and ``mnist_cond_fast`` and the DiT ``dit_mnist_s4`` with
classifier-free guidance) and each sampler, FD-MNIST, precision and recall of ``--n`` samples at
each budget of network evaluations (NFE) in ``--nfe``. A sampler runs with the spacing a user gets
by default (``spacing="auto"``, resolved by ``DiffusionPipeline.auto_spacing``): on the linear
schedule the one its paper uses, DDIM ``uniform`` (Song et al. 2021), the EDM samplers and
DPM-Solver++(2M) ``karras`` (Karras et al. 2022, rho = 7); on the cosine schedule of the
v-prediction models ``trailing``. Each cell records its spacing. Heun spends two
evaluations per step (``2 S - 1`` in all), so it runs the largest S whose NFE fits the budget; the
table gives the NFE actually spent. Every cell uses seed 0, so the cells of one model start from
the same x_T (common random numbers): differences between cells are less noisy than the FDs.

Goals (issue 17), per model, over the cells measured at the same n: DPM-Solver++(2M) at 10 NFE
within 1.2x of the best FD of any sampler at any NFE, and at most half of DDIM's FD at 10 NFE.

The peer, in the same run: each sampler with a diffusers counterpart (DPMSolverMultistepScheduler,
also with ``algorithm_type="sde-dpmsolver++"``, EulerDiscreteScheduler,
EulerAncestralDiscreteScheduler, HeunDiscreteScheduler, UniPCMultistepScheduler) drives the
same network from the same x_T on the same timesteps (diffusers' ``leading`` spacing) with the
same noise: the largest difference of the final samples and the wall-time ratio.

Before measuring, the script times the networks and prints the plan; ``--plan-only`` stops there.
Writes ``samplers.{json,md}`` and ``samplers.png`` (``--name`` another stem); ``--quick`` (one model, a few samplers, NFE
3, 8 samples, the peer at NFE 7) adds ``_quick``.

    python benchmarks/samplers.py --threads 1                      # make bench-samplers
    python benchmarks/samplers.py --models mnist_fast --name samplers_fast --threads 1
    python benchmarks/samplers.py --quick --out-dir /tmp/samplers
"""

from __future__ import annotations

import argparse
import functools
import inspect
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

import common as bench
from difflab.diffusion import Conditioning
from difflab.pipelines import DiffusionPipeline, load_pipeline
from difflab.samplers import SAMPLERS, Guidance, SamplerOptions

NAME = "samplers"
NFE = (5, 8, 10, 15, 20, 50)
SAMPLER_CHOICE = ("ddim", "dpm++2m", "unipc", "heun", "euler", "euler-a")
MODELS: dict[str, float | None] = {
    "mnist_ddim": None,
    "mnist_cond": 3.0,
    "dit_mnist_s4": 2.0,
    "mnist_fast": None,
    "mnist_cond_fast": 3.0,
}
"""Shipped model -> its classifier-free guidance weight (None: unguided). w = 3 is mnist_cond's
best FD in ``guidance.md`` (3.60 at 50 DDIM steps) and, for mnist_cond_fast, the smallest of the
measured w (0, 1, 3, 5) with label accuracy 1.00 in ``guidance_fast.md`` (FD 0.40 vs 0.35 at
w = 1); w = 2 is the DiT study's."""
GOAL_NFE, GOAL_BEST_RATIO, GOAL_DDIM_RATIO = 10, 1.2, 0.5
DEFAULT_PAIR = (("dpm++2m", 20), ("ddim", 50))  # the default-sampler question of issue 17
CELL_OVERHEAD_S = 0.7  # per FD cell: feature CNN + reference statistics
PEER_NFE, PEER_SAMPLES = 10, 16
PEER_PREDICTION = {"eps": "epsilon", "v": "v_prediction", "x0": "sample"}
"""difflab's ``net.prediction`` -> diffusers' ``prediction_type``."""
PEER_SCHEDULERS = {
    "dpm++2m": ("DPMSolverMultistepScheduler", {}),
    "dpm++2m-sde": ("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++"}),
    "euler": ("EulerDiscreteScheduler", {}),
    "euler-a": ("EulerAncestralDiscreteScheduler", {}),
    "heun": ("HeunDiscreteScheduler", {}),
    "unipc": ("UniPCMultistepScheduler", {}),
}


@dataclass(frozen=True)
class Settings:
    """How much work one run does (see ``--help``)."""

    models: tuple[str, ...]
    samplers: tuple[str, ...]
    nfe: tuple[int, ...]
    n: int
    batch_size: int
    peer_samples: int
    peer_nfe: int
    quick: bool = False
    skip: tuple[str, ...] = ()  # "sampler@nfe" cells left out of the grid


def steps_for(sampler: str, nfe: int) -> int:
    """The largest S whose NFE fits ``nfe`` (at least one step)."""
    spec = SAMPLERS[sampler]
    return max([s for s in range(1, nfe + 1) if spec.nfe(s) <= nfe] or [1])


def spacing_of(pipeline: DiffusionPipeline, model: str, sampler: str) -> str:
    """The spacing ``generate(spacing="auto")`` takes for this model, sampler and guidance."""
    return pipeline.auto_spacing(sampler, guidance_of(model))


# ----------------------------------------------------------------------------- the plan


def tasks(
    pipelines: dict[str, DiffusionPipeline], settings: Settings, rates: dict[str, float]
) -> list[bench.Task]:
    """One FD cell per (model, sampler, NFE), then the peer comparison on the first model."""
    out = []
    for model, pipeline in pipelines.items():
        for sampler in settings.samplers:
            for nfe in settings.nfe:
                if f"{sampler}@{nfe}" in settings.skip:
                    continue
                steps = steps_for(sampler, nfe)
                cost = settings.n * SAMPLERS[sampler].nfe(steps)
                seconds = cost / rates[model] + CELL_OVERHEAD_S
                run = functools.partial(run_cell, pipeline, model, sampler, steps, settings)
                label = f"{model} {sampler} NFE={nfe} n={settings.n}"
                out.append(bench.Task(model, label, cost, seconds, run, cell_message))
    first = next(iter(pipelines))
    for sampler in PEER_SCHEDULERS:
        steps = steps_for(sampler, settings.peer_nfe)
        cost = 2 * settings.peer_samples * SAMPLERS[sampler].nfe(steps)
        run = functools.partial(peer_row, pipelines[first], sampler, steps, settings.peer_samples)
        label = f"peer {sampler} S={steps}"
        out.append(bench.Task("peer", label, cost, cost / rates[first], run, peer_message))
    return out


def guidance_of(model: str) -> Guidance | None:
    w = MODELS[model]
    return None if w is None else Guidance(guidance_scale=w)


def evaluations_per_image(model: str) -> int:
    """Network calls per image and NFE: 2 under classifier-free guidance (one batched call)."""
    return 1 if MODELS[model] is None else 2


def measure_rates(pipelines: dict[str, DiffusionPipeline], batch: int) -> dict[str, float]:
    """Images per second per NFE of each model (under its guidance), at the run's batch size."""
    rates = {}
    for model, pipeline in pipelines.items():
        k = pipeline.num_classes
        cond = Conditioning(labels=torch.arange(batch) % k) if k else Conditioning()
        rates[model] = bench.denoiser_rate(pipeline, batch, cond) / evaluations_per_image(model)
    return rates


# ----------------------------------------------------------------------------- the work


def run_cell(
    pipeline: DiffusionPipeline, model: str, sampler: str, steps: int, settings: Settings
) -> dict[str, Any]:
    """FD-MNIST, precision and recall of one (model, sampler, S) cell, and the NFE it spent
    (network calls per batch, counted: Heun skips the correction of very long moves)."""
    spacing = spacing_of(pipeline, model, sampler)
    row = {"model": model, "sampler": sampler, "steps": steps, "spacing": spacing}
    options = dict(n=settings.n, sampler=sampler, steps=steps, spacing=spacing, seed=0)
    calls = []
    hook = pipeline.net.register_forward_hook(lambda *_: calls.append(1))
    try:
        score = bench.score(
            pipeline, **options, batch_size=settings.batch_size, guidance=guidance_of(model)
        )
    finally:
        hook.remove()
    batches = -(-settings.n // settings.batch_size)
    row |= {"nfe": len(calls) // batches, "guidance_scale": MODELS[model]}
    return row | score


def cell_message(row: dict[str, Any]) -> str:
    return f"FD {row['fd']:.3f}, P {bench.fmt(row['precision'])}, R {bench.fmt(row['recall'])}"


def diffusers_scheduler(sampler: str, pipeline: DiffusionPipeline, steps: int) -> Any:
    """The diffusers scheduler of ``sampler`` on the model's betas and prediction type,
    ``leading`` integer steps."""
    import diffusers

    name, extra = PEER_SCHEDULERS[sampler]
    betas = pipeline.schedule.betas.tolist()
    scheduler = getattr(diffusers, name)(
        num_train_timesteps=len(betas),
        trained_betas=betas,
        timestep_spacing="leading",
        prediction_type=PEER_PREDICTION[pipeline.net.prediction],
        **extra,
    )
    scheduler.set_timesteps(steps)
    return scheduler


@torch.no_grad()
def peer_row(pipeline: DiffusionPipeline, sampler: str, steps: int, samples: int) -> dict[str, Any]:
    """difflab's sampler and diffusers' scheduler from the same x_T on the same timesteps with the
    same noise: the largest difference of the samples and the seconds of each."""
    scheduler = diffusers_scheduler(sampler, pipeline, steps)
    timesteps = torch.unique_consecutive(scheduler.timesteps.round().long())  # Heun repeats them
    x_T, cond = pipeline.noise(samples, seed=0), Conditioning()
    denoiser = pipeline.denoiser()
    run = SAMPLERS[sampler].run
    tick = time.perf_counter()
    ours = run(
        denoiser, x_T, timesteps, cond, SamplerOptions(), torch.Generator().manual_seed(7), None
    )
    ours_s, tick = time.perf_counter() - tick, time.perf_counter()
    generator, x = torch.Generator().manual_seed(7), x_T * scheduler.init_noise_sigma
    noise = (
        {"generator": generator}
        if "generator" in inspect.signature(scheduler.step).parameters
        else {}
    )
    for t in scheduler.timesteps:
        output = pipeline.net(  # eps, v or x0: the scheduler knows which
            scheduler.scale_model_input(x, t), t.round().long().expand(samples), cond
        )
        x = scheduler.step(output, t, x, **noise).prev_sample
    theirs_s = time.perf_counter() - tick
    row = {"sampler": sampler, "scheduler": PEER_SCHEDULERS[sampler][0], "steps": steps}
    row |= {"timesteps": timesteps.tolist(), "samples": samples}
    return row | {
        "max_abs_diff": float((ours - x).abs().max()),
        "difflab_seconds": ours_s,
        "diffusers_seconds": theirs_s,
        "speed_ratio": theirs_s / ours_s,  # > 1: difflab faster
    }


def peer_message(row: dict[str, Any]) -> str:
    return f"max |Δ| {row['max_abs_diff']:.1e}, speed ratio {row['speed_ratio']:.2f}"


# ----------------------------------------------------------------------------- the report


def cells_of(report: dict[str, Any], model: str) -> list[dict[str, Any]]:
    return [row for row in report["rows"].get(model, [])]


def fd_at(cells: Sequence[dict[str, Any]], sampler: str, nfe: int) -> float | None:
    """FD of ``sampler`` in the cell whose NFE budget was ``nfe`` (None when not measured)."""
    for row in cells:
        if row["sampler"] == sampler and steps_for(sampler, nfe) == row["steps"]:
            return row["fd"]
    return None


def goals(report: dict[str, Any], model: str) -> list[str]:
    """The two goal lines of one model (or why they cannot be judged)."""
    cells = cells_of(report, model)
    if not cells:
        return []
    best = min(cells, key=lambda row: row["fd"])
    where = f"{best['sampler']} at {best['nfe']} NFE"
    dpm, ddim = fd_at(cells, "dpm++2m", GOAL_NFE), fd_at(cells, "ddim", GOAL_NFE)
    if dpm is None or ddim is None:
        return [f"- {model}: the goals need DPM-Solver++(2M) and DDIM at {GOAL_NFE} NFE."]
    first, second = dpm <= GOAL_BEST_RATIO * best["fd"], dpm <= GOAL_DDIM_RATIO * ddim
    return [
        f"- {bench.passfail(first)} ({model}): DPM-Solver++(2M) at {GOAL_NFE} NFE within "
        f"{GOAL_BEST_RATIO}× of the best FD — FD {dpm:.3f} vs best {best['fd']:.3f} ({where}): "
        f"ratio {dpm / best['fd']:.2f}",
        f"- {bench.passfail(second)} ({model}): at most {GOAL_DDIM_RATIO}× DDIM's FD at "
        f"{GOAL_NFE} NFE — FD {dpm:.3f} vs DDIM {ddim:.3f}: ratio {dpm / ddim:.2f}",
    ]


def default_line(report: dict[str, Any], model: str) -> str:
    """DPM-Solver++(2M) at 20 NFE against DDIM at 50: the default-sampler question."""
    (fast, fast_nfe), (slow, slow_nfe) = DEFAULT_PAIR
    cells = cells_of(report, model)
    a, b = fd_at(cells, fast, fast_nfe), fd_at(cells, slow, slow_nfe)
    if a is None or b is None:
        return ""
    return (
        f"- {model}: {fast} at {fast_nfe} NFE FD {a:.3f} vs {slow} at {slow_nfe} NFE FD {b:.3f} "
        f"(ratio {a / b:.2f}; {slow_nfe / fast_nfe:.1f}× fewer network evaluations)"
    )


def model_table(report: dict[str, Any], model: str) -> list[str]:
    cells = cells_of(report, model)
    nfe = report["settings"]["nfe"]
    samplers = list(dict.fromkeys(row["sampler"] for row in cells))
    spacings = {row["sampler"]: row["spacing"] for row in cells}
    rows, seconds_rows = [], []
    for sampler in samplers:
        line = [f"{sampler} ({spacings[sampler]})"]
        seconds_rows.append([sampler])
        for budget in nfe:
            row = next(
                (
                    r
                    for r in cells
                    if r["sampler"] == sampler and r["steps"] == steps_for(sampler, budget)
                ),
                None,
            )
            text = "—" if row is None else f"{row['fd']:.3f}"
            seconds_rows[-1].append("—" if row is None else f"{row['sample_seconds']:.0f}")
            if row is not None and row["nfe"] != budget:
                text += f" ({row['nfe']})"
            line.append(text)
        rows.append(line)
    w = MODELS.get(model)
    guided = "" if w is None else f", classifier-free guidance w = {w:g}"
    seconds = sum(r["wall_seconds"] for r in cells)
    return [
        f"### {model}{guided}",
        "",
        bench.markdown_table(["FD-MNIST", *(f"NFE {b}" for b in nfe)], rows),
        "",
        f"Precision / recall (k = 3) are in `{report_name(report)}.json`; {len(cells)} cells, "
        f"{seconds / 60:.1f} min. An NFE in parentheses is the one spent, counted (Heun: "
        "2 S - 1, one less for each move it takes as an Euler step). "
        "Sampling seconds follow the machine's load as much as the NFE; NFE is the cost measure.",
        "",
        bench.markdown_table(["sampling seconds", *(f"NFE {b}" for b in nfe)], seconds_rows),
    ]


def peer_table(report: dict[str, Any]) -> list[str]:
    rows = [
        [
            r["sampler"],
            r["scheduler"],
            r["steps"],
            f"{r['max_abs_diff']:.1e}",
            f"{r['speed_ratio']:.2f}",
        ]
        for r in report["rows"].get("peer", [])
    ]
    if not rows:
        return []
    first = report["settings"]["models"][0]
    return [
        "## Against diffusers (same network, x_T, timesteps and noise)",
        "",
        f"`{first}`, {report['settings']['peer_samples']} samples, diffusers' `leading` timesteps, "
        "fp32. Speed ratio: diffusers' seconds over difflab's (> 1: difflab faster); one run "
        "each, so on a loaded machine the ratio is mostly noise.",
        "",
        bench.markdown_table(["sampler", "diffusers", "S", "max abs diff", "speed ratio"], rows),
    ]


def render_markdown(report: dict[str, Any]) -> str:
    settings = report["settings"]
    models = settings["models"]
    rates = ", ".join(f"{m} {report['rates'][m]:.0f}" for m in models)
    head = [
        "# Samplers: NFE vs FD-MNIST",
        "",
        f"n = {settings['n']} samples per cell, seed 0 in every cell (the same x_T per model), "
        f"batch {settings['batch_size']}, fp32. Spacing: each table names it per sampler ('auto': "
        "on the linear schedule DDIM uniform, the others karras, rho = 7; on the cosine schedule "
        "of the v-prediction models trailing). "
        f"Machine: {bench.machine_line(report['machine'])} {bf16_words(report['machine']['bf16'])}"
        f"; load average at the end {report['machine']['load_average'][0]:.1f}. "
        f"Network rates (images/s per NFE): {rates}.",
        "",
        f"FD floor (MNIST train vs test) at this n: {report.get('fd_floor') or 'not measured'}; "
        "FD is biased upwards at small n, so compare cells, not absolute values.",
    ]
    goal_lines = [line for model in models for line in goals(report, model)]
    defaults = [line for model in models if (line := default_line(report, model))]
    tables = [line for model in models for line in [*model_table(report, model), ""]]
    return bench.sections(
        head,
        ["## Goals", "", *goal_lines],
        ["## The default sampler", "", *defaults],
        ["## FD-MNIST by NFE", "", *tables],
        peer_table(report),
        [f"Command: `{report['command']}`; {report['total_seconds'] / 60:.1f} min in all."],
        (["Cells re-measured since:", "", *update_lines(report)] if report.get("updates") else []),
    )


def bf16_words(bf16: dict[str, Any]) -> str:
    """``"bf16: emulated (AVX2 only)"`` or ``"bf16: native (AMX)"``, from ``machine_info``."""
    if bf16.get("amx") or bf16.get("avx512_bf16"):
        return f"bf16: native ({'AMX' if bf16.get('amx') else 'AVX-512 BF16'})"
    return "bf16: emulated (no AVX-512 BF16 or AMX)"


def report_name(report: dict[str, Any]) -> str:
    """The stem the report was written under (``--name``; reports before it: ``samplers``)."""
    return report.get("name", NAME)


def figure_path(out_dir: Path, name: str, quick: bool) -> Path:
    return out_dir / f"{bench.stem_of(name, quick)}.png"


def figures(report: dict[str, Any], out_dir: Path) -> list[Path]:
    """FD-MNIST against NFE, one panel per model, one line per sampler."""
    models = report["settings"]["models"]
    plt = bench.pyplot()
    fig, axes = plt.subplots(1, len(models), figsize=(5 * len(models), 4), squeeze=False)
    for ax, model in zip(axes[0], models, strict=True):
        cells = cells_of(report, model)
        for sampler in dict.fromkeys(row["sampler"] for row in cells):
            mine = sorted((r["nfe"], r["fd"]) for r in cells if r["sampler"] == sampler)
            ax.plot(*zip(*mine, strict=True), marker="o", label=sampler)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ticks = sorted({r["nfe"] for r in cells})
        ax.set_xticks(ticks, [str(t) for t in ticks])
        ax.xaxis.set_minor_locator(plt.NullLocator())
        ax.set_xlabel("network evaluations (NFE)")
        ax.set_ylabel(f"FD-MNIST (n = {report['settings']['n']})")
        ax.set_title(model)
        ax.legend(fontsize="small")
    return [
        bench.save_figure(
            fig, figure_path(out_dir, report_name(report), report["settings"]["quick"])
        )
    ]


# ----------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = bench.bench_parser(__doc__, "the DiT, three samplers at NFE 3, 8 samples")
    parser.add_argument("--models", default=",".join(MODELS), help="default: %(default)s")
    parser.add_argument("--samplers", default=",".join(SAMPLER_CHOICE), help="default: %(default)s")
    parser.add_argument("--nfe", default=",".join(map(str, NFE)), help="default: %(default)s")
    parser.add_argument(
        "--skip", default="", help="cells to leave out, e.g. heun@50,dpm++2m@50 (CPU budget)"
    )
    parser.add_argument("--n", type=int, default=1000, help="samples per cell (default 1000)")
    parser.add_argument("--batch-size", type=int, default=250)
    parser.add_argument("--peer-samples", type=int, default=PEER_SAMPLES)
    parser.add_argument("--plan-only", action="store_true", help="print the plan and stop")
    parser.add_argument(
        "--update",
        action="store_true",
        help="measure only this run's cells and put them into the existing NAME.json in place of "
        "the same (model, sampler, S) cells, keeping the others (e.g. after a sampler fix)",
    )
    bench.add_name_argument(parser, NAME)
    return bench.parse(parser, argv)


def settings_from(args: argparse.Namespace) -> Settings:
    if args.quick:
        # peer at NFE 7 (Heun S = 4): at S <= 3 Heun's last corrected move on the linear schedule
        # falls more than MAX_CORRECTED_SIGMA_RATIO and is an Euler step, unlike diffusers'
        return Settings(("dit_mnist_s4",), ("ddim", "dpm++2m", "heun"), (3,), 8, 8, 2, 7, True)
    models, samplers = bench.comma_list(args.models), bench.comma_list(args.samplers)
    for name, known in ((models, MODELS), (samplers, SAMPLERS)):
        unknown = [x for x in name if x not in known]
        if unknown:
            raise SystemExit(f"error: unknown {', '.join(unknown)}; choose from {', '.join(known)}")
    nfe = tuple(int(x) for x in bench.comma_list(args.nfe))
    skip = bench.comma_list(args.skip)
    return Settings(
        models, samplers, nfe, args.n, args.batch_size, args.peer_samples, PEER_NFE, skip=skip
    )


def floor_at(n: int) -> str | None:
    """The FD floor at ``n`` from ``fd_floor.json`` when it holds that n."""
    path = bench.RESULTS_DIR / "fd_floor.json"
    if not path.is_file():
        return None
    for row in bench.read_json(path).get("rows", []):
        if row.get("n") == n:
            fd = row["fd_vs_test_full"]
            return f"{fd['mean']:.3f} ± {fd['std']:.3f} (fd_floor.json)"
    return None


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.render_only:
        return bench.publish(args, args.name, dict, render_markdown, figures)
    start = time.perf_counter()
    settings = settings_from(args)
    pipelines = {model: load_pipeline(model) for model in settings.models}
    rates = measure_rates(pipelines, min(settings.batch_size, 64))
    planned = tasks(pipelines, settings, rates)
    bench.print_plan(planned)
    if args.plan_only:
        return 0

    def report() -> dict[str, Any]:
        rows = bench.run_tasks(planned)
        if args.update:
            return updated(args, settings, rows)
        return {
            "name": args.name,
            "settings": settings.__dict__,
            "machine": bench.machine_info(("diffusers",)),
            "rates": rates,
            "fd_floor": floor_at(settings.n),
            "rows": rows,
            "command": command_line(args, settings),
            "total_seconds": time.perf_counter() - start,
        }

    return bench.publish(args, args.name, report, render_markdown, figures)


def updated(
    args: argparse.Namespace, settings: Settings, rows: dict[str, list[dict[str, Any]]]
) -> dict[str, Any]:
    """The report at ``--out-dir/NAME.json`` with this run's cells in place of the same (model,
    sampler, S) cells and its peer rows in place of the old ones; the change is listed."""
    path = args.out_dir / f"{bench.stem_of(args.name, args.quick)}.json"
    if not path.is_file():
        raise SystemExit(f"error: --update needs {path}; run the benchmark without it first.")
    old = bench.read_json(path)
    merged, replaced = dict(old["rows"]), []
    for part, new in rows.items():
        old_rows = [] if part == "peer" else merged.get(part, [])
        fresh = {(r["sampler"], r["steps"]) for r in new}  # one model per part
        replaced += [r for r in old_rows if (r["sampler"], r["steps"]) in fresh]
        merged[part] = [r for r in old_rows if (r["sampler"], r["steps"]) not in fresh] + new
    old_settings = old["settings"]
    for key in ("models", "samplers", "nfe"):
        joined = [*old_settings[key], *getattr(settings, key)]
        old_settings[key] = list(dict.fromkeys(joined))
    cells = [
        f"{r['model']} {r['sampler']} S={r['steps']}"
        for p, new in rows.items()
        if p != "peer"
        for r in new
    ]
    change = {
        "command": command_line(args, settings),
        "cells": cells,
        "replaced": replaced,  # the old cells, kept for the record
        "machine": bench.machine_info(("diffusers",)),
    }
    return old | {
        "rows": merged,
        "settings": old_settings,
        "updates": [*old.get("updates", []), change],
    }


def update_lines(report: dict[str, Any]) -> list[str]:
    """One line per ``--update`` run: which cells it re-measured, when and how."""
    return [
        f"- {', '.join(change['cells'])}: re-measured by `{change['command']}` "
        f"({bench.machine_line(change['machine']).rstrip('.')}; load average at the end "
        f"{change['machine']['load_average'][0]:.1f})."
        for change in report.get("updates", [])
    ]


def command_line(args: argparse.Namespace, settings: Settings) -> str:
    if settings.quick:
        return "python benchmarks/samplers.py --quick"
    return (
        f"python benchmarks/samplers.py --models {','.join(settings.models)} --samplers "
        f"{','.join(settings.samplers)} --nfe {','.join(map(str, settings.nfe))} --n {settings.n}"
        + (f" --skip {','.join(settings.skip)}" if settings.skip else "")
        + (f" --threads {args.threads}" if args.threads else "")
        + (f" --name {args.name}" if args.name != NAME else "")
        + (" --update" if args.update else "")
    )


if __name__ == "__main__":
    raise SystemExit(main())
