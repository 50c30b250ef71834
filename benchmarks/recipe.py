"""Training recipe study: FD-MNIST against training CPU time for the old recipe and each change.

The same U-Net (``configs/mnist.yaml``'s ``unet-mnist``, 1.19 M parameters) is trained from the
same seed with the old recipe (``configs/mnist.yaml``) and with one change at a time: Min-SNR-γ
loss weights (γ = 5), v-prediction, the cosine schedule, EMA without its warm-up (the old recipe
already warms its EMA up), a larger learning rate with a short warm-up and cosine decay, and a
smaller batch. Every run gets the same budget of **process CPU time on one torch thread**
(``time.process_time`` around the optimizer updates only): the machine is shared, so wall-clock
time measures the neighbours' load, not the recipe. At fixed CPU times along the way the run's EMA
weights are scored (FD-MNIST, precision, recall) with the shipped default sampler,
DPM-Solver++(2M) at 20 steps with karras spacing, ``--n`` samples, seed 0 (the same x_T for every
run and checkpoint). Scoring does not count against the training budget; its CPU time is recorded.

After the single changes, a ``combined`` run trains with every change whose FD at the full budget
beat the old recipe's (chosen from the measurement, not in advance); the recipe with the lowest
FD at the full budget is the study's winner.

Each finished run is also written to ``recipe_partial.json`` in ``--out-dir``, and ``--resume``
reuses the runs found there, so a study cut short continues where it stopped.

    python benchmarks/recipe.py --threads 1                     # make bench-recipe
    python benchmarks/recipe.py --quick --out-dir /tmp/recipe    # tiny U-Net, seconds
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

import common as bench
from difflab.config import load_config
from difflab.pipelines import DiffusionPipeline, ModelDescription
from difflab.training.ema import EMA
from difflab.training.loop import build_run, diffusion_loss, model_meta
from difflab.training.update import optimizer_update

NAME = "recipe"
CONFIG = "configs/mnist.yaml"
SAMPLER, STEPS, SPACING = "dpm++2m", 20, "karras"  # the shipped default of `difflab sample`
BASELINE = "old (configs/mnist.yaml)"
REFERENCE = "warm-up 20"
SHORT_WARMUP = ("train.warmup_steps=20",)
RECIPES: dict[str, tuple[str, ...]] = {
    BASELINE: (),
    REFERENCE: SHORT_WARMUP,
    "warm-up 20 + min-SNR-5": (*SHORT_WARMUP, "train.min_snr_gamma=5"),
    "warm-up 20 + v-prediction": (*SHORT_WARMUP, "model.prediction=v"),
    "warm-up 20 + cosine schedule": (*SHORT_WARMUP, "diffusion.schedule=cosine"),
    "warm-up 20 + lr 1e-3 + cosine decay": (
        *SHORT_WARMUP,
        "train.lr=0.001",
        "train.lr_decay=cosine",
        "train.lr_floor=0.1",
    ),
    "warm-up 20 + batch 64": (*SHORT_WARMUP, "train.batch_size=64"),
}
"""Each recipe: its overrides of ``configs/mnist.yaml``. The old recipe warms its learning rate
up over 200 updates, longer than a budget of a few CPU-minutes lasts (about 4 s per update of
128 images on one thread), so the changes are layered on ``warm-up 20`` (the old recipe with a
20-update warm-up), against which each is compared. The decaying recipe's horizon
(``train.steps``) is the number of updates the old recipe made in the budget."""
NO_EMA_WARMUP = "EMA without warm-up"
"""Not trained on its own: a second EMA (``train.ema_warmup=false``) of the old recipe's very
weights, updated after each of its updates and scored at the same checkpoints (it changes only
the averaged weights, so a run of its own would repeat the old recipe's training)."""
COMBINED = "combined"
MAX_STEPS = 10**7  # the other recipes stop on the CPU budget, never on train.steps


@dataclass(frozen=True)
class Settings:
    """How much work one study does (see ``--help``)."""

    recipes: tuple[str, ...]
    checkpoints: tuple[float, ...]  # CPU seconds of training at which to score
    n: int
    batch_size: int  # sampling batch
    combine: bool
    overrides: tuple[str, ...] = ()  # applied to every recipe (the quick mode's tiny setup)
    quick: bool = False


QUICK = Settings(
    recipes=(
        BASELINE,
        NO_EMA_WARMUP,
        REFERENCE,
        "warm-up 20 + min-SNR-5",
        "warm-up 20 + lr 1e-3 + cosine decay",
    ),
    checkpoints=(1.0, 2.0),
    n=16,
    batch_size=16,
    combine=True,
    overrides=("model.preset=unet-tiny", "data.limit=256", "train.batch_size=16"),
    quick=True,
)


def overrides_of(recipe: str, rows: dict[str, dict[str, Any]]) -> tuple[str, ...]:
    """The overrides of ``recipe``; ``combined`` joins ``warm-up 20`` and every change layered on
    it that beat it at the full budget (later overrides of the same key win)."""
    if recipe == NO_EMA_WARMUP:
        return ("train.ema_warmup=false",)
    if recipe != COMBINED:
        return RECIPES[recipe]
    changes = [x for name in winners_over_reference(rows) for x in RECIPES[name]]
    return tuple(dict.fromkeys([*SHORT_WARMUP, *changes]))


def final_fd(row: dict[str, Any]) -> float:
    return row["checkpoints"][-1]["fd"]


def winners_over_reference(rows: dict[str, dict[str, Any]]) -> list[str]:
    """The changes layered on ``warm-up 20`` whose FD at the full budget is below its FD."""
    if REFERENCE not in rows:
        return []
    reference = final_fd(rows[REFERENCE])
    layered = [name for name in RECIPES if name not in (BASELINE, REFERENCE)]
    return [name for name in layered if name in rows and final_fd(rows[name]) < reference]


def recipe_names() -> tuple[str, ...]:
    """Every recipe ``--recipes`` accepts, in the study's order."""
    return (BASELINE, NO_EMA_WARMUP, *list(RECIPES)[1:])


def horizon_steps(recipe_overrides: Sequence[str], rows: dict[str, dict[str, Any]]) -> int:
    """``train.steps`` of a run: for a decaying learning rate, the updates the old recipe made in
    the budget (scaled by its batch over this run's batch); else unbounded."""
    if "train.lr_decay=cosine" not in recipe_overrides:
        return MAX_STEPS
    base = rows[BASELINE]
    images = base["checkpoints"][-1]["step"] * base["batch_size"]
    batch = next(
        (
            int(x.split("=")[1])
            for x in reversed(recipe_overrides)
            if x.startswith("train.batch_size=")
        ),
        base["batch_size"],
    )
    return max(1, images // batch)


def score_ema(run: Any, ema: EMA, settings: Settings) -> dict[str, Any]:
    """FD-MNIST, precision, recall of EMA weights of ``run`` with the default sampler; CPU time."""
    tick, wall = time.process_time(), time.perf_counter()
    description = ModelDescription.from_meta(model_meta(run), "recipe", run.net.conditioning_fields)
    pipeline = DiffusionPipeline(ema.module, run.schedule, description)
    options = dict(n=settings.n, sampler=SAMPLER, steps=STEPS, spacing=SPACING, seed=0)
    scores = bench.score(pipeline, **options, batch_size=settings.batch_size)
    run.net.train()
    scores["score_cpu_seconds"] = time.process_time() - tick
    scores["score_wall_seconds"] = time.perf_counter() - wall
    return scores


def train_recipe(
    recipe: str, settings: Settings, rows: dict[str, dict[str, Any]], out_dir: Path
) -> list[dict[str, Any]]:
    """Train one recipe for the CPU budget, scoring at each checkpoint time: its row (and, for
    the old recipe, the row of its EMA without warm-up)."""
    extra = overrides_of(recipe, rows)
    steps = horizon_steps(extra, rows)
    config = load_config(
        CONFIG,
        [
            *settings.overrides,
            *extra,
            f"train.steps={steps}",
            f"train.out_dir={out_dir / 'recipe_runs'}",
        ],
    )
    run = build_run(config)
    emas = {recipe: run.ema}
    if recipe == BASELINE and NO_EMA_WARMUP in settings.recipes:
        emas[NO_EMA_WARMUP] = EMA(run.net, config.train.ema_decay, warmup=False)
    run.net.train()
    train_cpu = 0.0
    losses: list[float] = []
    checkpoints: dict[str, list[dict[str, Any]]] = {name: [] for name in emas}
    wall = time.perf_counter()
    for mark in settings.checkpoints:
        while train_cpu < mark and run.step < config.train.steps:
            tick = time.process_time()
            logged = optimizer_update(run, lambda index: diffusion_loss(run, index))
            train_cpu += time.process_time() - tick
            if logged is not None:
                losses.append(logged["loss"])
                for ema in list(emas.values())[1:]:  # not timed: not part of the recipe
                    ema.update(run.net)
        recent = losses[-20:]
        state = {
            "cpu_seconds": train_cpu,
            "step": run.step,
            "images": run.step * config.train.batch_size,
            "loss": sum(recent) / max(len(recent), 1),
            "lr": run.optimizer.param_groups[0]["lr"],
        }
        for name, ema in emas.items():
            point = {**state, **score_ema(run, ema, settings)}
            checkpoints[name].append(point)
            print(
                f"  {name}: {train_cpu / 60:.2f} CPU-min, step {run.step}, "
                f"loss {point['loss']:.4f}, FD {point['fd']:.3f}",
                flush=True,
            )
    wall_seconds = time.perf_counter() - wall
    return [
        {
            "recipe": name,
            "overrides": list(overrides_of(name, rows) if name == NO_EMA_WARMUP else extra),
            "batch_size": config.train.batch_size,
            "train_steps_setting": steps,
            "checkpoints": checkpoints[name],
            "wall_seconds": wall_seconds,
        }
        for name in emas
    ]


def partial_path(out_dir: Path, quick: bool) -> Path:
    return out_dir / f"{bench.stem_of(NAME, quick)}_partial.json"


def measure(settings: Settings, args: argparse.Namespace) -> dict[str, Any]:
    """Every recipe in turn (then ``combined``), each row written to the partial file."""
    start = time.perf_counter()
    partial = partial_path(args.out_dir, settings.quick)
    rows: dict[str, dict[str, Any]] = {}
    if args.resume and partial.is_file():
        rows = bench.read_json(partial)["rows"]
        print(f"resuming: {', '.join(rows)} done", flush=True)
    order = [*settings.recipes, *([COMBINED] if settings.combine else [])]
    for recipe in order:
        if recipe in rows or recipe == NO_EMA_WARMUP:  # the latter comes with the old recipe
            continue
        if recipe == COMBINED and len(winners_over_reference(rows)) < 2:
            print(f"combined: fewer than two changes beat {REFERENCE!r}; not run", flush=True)
            continue
        print(f"{recipe}: {' '.join(overrides_of(recipe, rows)) or '(no overrides)'}", flush=True)
        for row in train_recipe(recipe, settings, rows, args.out_dir):
            rows[row["recipe"]] = row
        bench.write_json(partial, {"settings": asdict(settings), "rows": rows})
    return {
        "settings": asdict(settings),
        "machine": bench.machine_info(),
        "sampler": {"sampler": SAMPLER, "steps": STEPS, "spacing": SPACING, "seed": 0},
        "rows": list(rows.values()),
        "winner": min(rows.values(), key=final_fd)["recipe"],
        "command": command_line(args, settings),
        "total_wall_seconds": time.perf_counter() - start,
    }


# ----------------------------------------------------------------------------- the report


def render_markdown(report: dict[str, Any]) -> str:
    settings, rows = report["settings"], report["rows"]
    marks = [f"{s / 60:.3g}" for s in settings["checkpoints"]]
    base = next((r for r in rows if r["recipe"] == BASELINE), None)
    ref = next((r for r in rows if r["recipe"] == REFERENCE), None)
    table = []
    for row in rows:
        fds = [point["fd"] for point in row["checkpoints"]]
        last = row["checkpoints"][-1]
        ratios = [
            "—" if other is None else f"{fds[-1] / final_fd(other):.2f}×" for other in (base, ref)
        ]
        table.append(
            [
                row["recipe"] + (" **(winner)**" if row["recipe"] == report["winner"] else ""),
                *[f"{fd:.2f}" for fd in fds],
                *ratios,
                f"{last['cpu_seconds'] / 60:.2f}",
                f"{last['precision']:.2f} / {last['recall']:.2f}",
                f"{last['step']} × {row['batch_size']}",
                f"{last['loss']:.4f}",
            ]
        )
    headers = [
        "recipe",
        *[f"FD @ {m} CPU-min" for m in marks],
        "vs old",
        f"vs {REFERENCE}",
        "CPU-min (last)",
        "P / R (last)",
        "updates × batch",
        "loss (last 20)",
    ]
    score_cpu = sum(p["score_cpu_seconds"] for r in rows for p in r["checkpoints"])
    train_cpu = sum(r["checkpoints"][-1]["cpu_seconds"] for r in rows)
    machine = report["machine"]
    head = [
        "# Training recipe: FD-MNIST against training CPU time",
        "",
        f"The `unet-mnist` U-Net of `{CONFIG}`, one change per row, trained for the same process "
        "CPU time on one torch thread (wall-clock time on this shared machine measures the load, "
        f"not the recipe). FD-MNIST of the EMA weights, n = {settings['n']}, "
        f"{report['sampler']['sampler']} {report['sampler']['steps']} steps "
        f"({report['sampler']['spacing']}), seed 0 everywhere. Lower is better; FD at this n is "
        "biased upwards, so compare rows, not absolute values.",
        "",
        f"Machine: {bench.machine_line(machine)} bf16 native: "
        f"{bool(machine['bf16']['avx512_bf16'] or machine['bf16']['amx'])} (fp32 training "
        f"where it is not); load average at the end {machine['load_average'][0]:.1f}. CPU time: "
        f"{train_cpu / 60:.1f} min training, {score_cpu / 60:.1f} min scoring.",
    ]
    notes = [
        f"Winner (lowest FD at the full budget): **{report['winner']}**.",
        "A recipe with a decaying learning rate stops at its horizon (`train.steps`: the "
        "images the old recipe saw in the budget), which can come before the last CPU mark "
        "(its CPU-min column): it is scored there, with less CPU time than the others.",
        f"Combined = {REFERENCE} with every change layered on it that beat it at the full budget: "
        + (", ".join(winners_over_reference({r["recipe"]: r for r in rows})) or "none")
        + ".",
    ]
    return bench.sections(
        head,
        bench.markdown_table(headers, table),
        notes,
        [f"Command: `{report['command']}`; {report['total_wall_seconds'] / 60:.1f} min wall."],
    )


def figure_path(out_dir: Path, quick: bool) -> Path:
    return out_dir / f"{bench.stem_of(NAME, quick)}.png"


def figures(report: dict[str, Any], out_dir: Path) -> list[Path]:
    """FD-MNIST against training CPU-minutes, one line per recipe."""
    fig, ax = bench.pyplot().subplots(figsize=(7, 4.5))
    for row in report["rows"]:
        points = [(p["cpu_seconds"] / 60, p["fd"]) for p in row["checkpoints"]]
        ax.plot(*zip(*points, strict=True), marker="o", label=row["recipe"])
    ax.set_yscale("log")
    ax.set_xlabel("training CPU-minutes (one thread)")
    ax.set_ylabel(f"FD-MNIST (n = {report['settings']['n']})")
    ax.set_title("Training recipe: FD against CPU time")
    ax.legend(fontsize="small")
    return [bench.save_figure(fig, figure_path(out_dir, report["settings"]["quick"]))]


# ----------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = bench.bench_parser(__doc__, "a tiny U-Net on 256 digits, 2 CPU-s per recipe, n = 16")
    parser.add_argument("--recipes", default=",".join(recipe_names()), help="default: all")
    parser.add_argument(
        "--cpu-minutes",
        default="1.5,3",
        help="training CPU-minutes at which to score; the last is the budget (default %(default)s)",
    )
    parser.add_argument("--n", type=int, default=100, help="samples per score (default 100)")
    parser.add_argument("--batch-size", type=int, default=100, help="sampling batch")
    parser.add_argument("--no-combined", action="store_true", help="skip the combined run")
    parser.add_argument("--resume", action="store_true", help="reuse runs in recipe_partial.json")
    return bench.parse(parser, argv)


def settings_from(args: argparse.Namespace) -> Settings:
    if args.quick:
        return QUICK
    recipes = bench.comma_list(args.recipes)
    unknown = [r for r in recipes if r not in recipe_names()]
    if unknown or BASELINE not in recipes:
        raise SystemExit(f"error: --recipes must include {BASELINE!r}; unknown: {unknown}")
    marks = tuple(float(x) * 60 for x in bench.comma_list(args.cpu_minutes))
    return Settings(recipes, marks, args.n, args.batch_size, not args.no_combined)


def command_line(args: argparse.Namespace, settings: Settings) -> str:
    if settings.quick:
        return "python benchmarks/recipe.py --quick"
    minutes = ",".join(f"{m / 60:g}" for m in settings.checkpoints)
    return (
        f"python benchmarks/recipe.py --cpu-minutes {minutes} --n {settings.n}"
        + (f" --threads {args.threads}" if args.threads else "")
        + ("" if settings.combine else " --no-combined")
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.render_only:
        return bench.publish(args, NAME, dict, render_markdown, figures)
    settings = settings_from(args)
    torch.manual_seed(0)
    return bench.publish(args, NAME, lambda: measure(settings, args), render_markdown, figures)


if __name__ == "__main__":
    raise SystemExit(main())
