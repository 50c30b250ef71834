"""Time to quality: FD-MNIST (n = 1000) of the unconditional U-Net against training CPU-minutes.

Issue 17's measure of a training recipe: how long until the samples are good. Each recipe
(``--recipes``: ``new`` = ``configs/mnist_fast.yaml``, the recommended recipe; ``old`` =
``configs/mnist.yaml``, the one the shipped ``weights/mnist_ddim`` was trained with) trains the
same ``unet-mnist`` U-Net from seed 0 on **one torch thread**, and its EMA weights are saved when
the run's **process CPU time** (``time.process_time`` around the optimizer updates, not the
checkpointing) passes each mark of ``--cpu-minutes``. The machine is shared, so wall-clock time
would measure the neighbours' load; one thread of the two cores is the conservative reading of
"minutes of training on this machine". The new recipe's learning rate decays over ``--horizon``
updates (``train.steps``): the updates that fit the last mark, so the decay ends where the budget
does (a run that reaches its horizon first stops there and is saved there).

Every saved checkpoint is then scored: FD-MNIST, precision and recall of ``--n`` samples with the
shipped default sampler, DPM-Solver++(2M), 20 karras steps (20 network evaluations), seed 0. The
shipped ``weights/mnist_ddim`` (old recipe, 3000 updates of 128; its training time was never
recorded) is scored the same way as a reference, and the goals are read from the scores: FD ≤ 0.2
within 60 CPU-minutes, and the first mark at which each recipe reaches FD 1.0 and 0.5.

The phases can run apart (``--phase train`` then ``--phase score``, e.g. scoring on the other
core while a run trains); both resume: a run's checkpoints, its log and the scores stay under
``OUT_DIR/time_to_quality_runs/``.

    python benchmarks/time_to_quality.py --threads 1                       # make bench-time-to-quality
    python benchmarks/time_to_quality.py --quick --out-dir /tmp/ttq          # tiny U-Net, seconds
"""

from __future__ import annotations

import argparse
import hashlib
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import common as bench
from difflab.config import load_config
from difflab.io.atomic import process_alive
from difflab.io.checkpoint import save_checkpoint
from difflab.pipelines import load_pipeline
from difflab.samplers import Guidance
from difflab.training.loop import build_run, diffusion_loss, model_meta
from difflab.training.state import with_prefix
from difflab.training.update import optimizer_update

NAME = "time_to_quality"
SAMPLER, STEPS, SPACING = "dpm++2m", 20, "karras"  # the shipped default of `difflab sample`
RECIPES = {"new": "configs/mnist_fast.yaml", "old": "configs/mnist.yaml"}
SHIPPED = "weights/mnist_ddim.safetensors"
FD_GOAL, GOAL_MINUTES, THRESHOLDS = 0.2, 60.0, (1.0, 0.5)
VARIANTS: dict[str, dict[str, Any]] = {
    "10 NFE": {"steps": 10},
    "10 NFE, trailing spacing": {"steps": 10, "spacing": "trailing"},
    "20 NFE, trailing spacing": {"spacing": "trailing"},
    "static x0 clipping": {"threshold": "static"},
}
"""Other sampling settings scored on the new recipe's last checkpoint and on the shipped model, to
choose the defaults from measurement: half the steps (``make demo``'s time), karras or trailing
spacing at 10 and 20 steps (the spacing "auto" picks), and clipping x0."""
FLOOR_N1000 = 0.064  # benchmarks/results/fd_floor.json: real training digits vs test, n = 1000


@dataclass(frozen=True)
class Settings:
    """How much work one study does (see ``--help``)."""

    recipes: tuple[str, ...]
    marks: tuple[float, ...]  # CPU-minutes of training at which the EMA weights are saved
    horizon: int  # train.steps of the new recipe: its learning-rate decay ends there
    n: int
    batch_size: int  # sampling batch
    score_shipped: bool = True
    overrides: tuple[str, ...] = ()  # applied to every recipe (the quick mode's tiny setup)
    quick: bool = False


QUICK = Settings(
    recipes=("new", "old"),
    marks=(0.01, 0.02),
    horizon=6,
    n=16,
    batch_size=16,
    score_shipped=False,
    overrides=("model.preset=unet-tiny", "data.limit=256", "train.batch_size=16"),
    quick=True,
)


def runs_dir(out_dir: Path, quick: bool) -> Path:
    return out_dir / f"{bench.stem_of(NAME, quick)}_runs"


def scores_path(out_dir: Path, quick: bool) -> Path:
    """The working file of scores, beside the checkpoints (the report holds them all at the end)."""
    return runs_dir(out_dir, quick) / "scores.json"


def recipe_overrides(recipe: str, settings: Settings, folder: Path) -> list[str]:
    horizon = [f"train.steps={settings.horizon}"] if recipe == "new" else []
    return [*settings.overrides, *horizon, f"train.out_dir={folder}"]


def train_recipe(
    recipe: str, settings: Settings, folder: Path, args: argparse.Namespace
) -> dict[str, Any]:
    """Train ``recipe`` to the last mark (or its horizon), saving the EMA weights at each mark.

    Returns its log: the overrides and, per saved checkpoint, CPU seconds, updates, images, the
    mean loss of the last 20 updates, the learning rate and the file. A log that already holds
    every mark is returned as it is (the run is not repeated)."""
    log_path = folder / "log.json"
    if log_path.is_file():
        log = bench.read_json(log_path)
        if len(log["checkpoints"]) == len(settings.marks) or log.get("finished"):
            return log
    overrides = recipe_overrides(recipe, settings, folder)
    config = load_config(RECIPES[recipe], overrides)
    run = build_run(config)
    run.net.train()
    log = {
        "recipe": recipe,
        "config": RECIPES[recipe],
        "overrides": overrides,
        "command": command_line(args, settings),
        "checkpoints": [],
    }
    train_cpu, losses, wall = 0.0, [], time.perf_counter()
    for mark in settings.marks:
        while train_cpu < mark * 60 and run.step < config.train.steps:
            tick = time.process_time()
            logged = optimizer_update(run, lambda index: diffusion_loss(run, index))
            train_cpu += time.process_time() - tick
            if logged is not None:
                losses.append(logged["loss"])
        path = folder / f"ema_{mark:g}min.safetensors"
        meta = {**model_meta(run), "train_cpu_seconds": train_cpu}
        save_checkpoint(path, with_prefix(run.ema.state_dict(), "model"), meta)
        recent = losses[-20:]
        log["checkpoints"].append(
            {
                "mark_minutes": mark,
                "cpu_seconds": train_cpu,
                "step": run.step,
                "images": run.step * config.train.batch_size,
                "epochs": run.step * config.train.batch_size / len(run.dataset.images),
                "loss": sum(recent) / max(len(recent), 1),
                "lr": run.optimizer.param_groups[0]["lr"],
                "path": str(path),
                "wall_seconds": time.perf_counter() - wall,
            }
        )
        log["finished"] = run.step >= config.train.steps
        bench.write_json(log_path, log)
        print(
            f"{recipe}: {train_cpu / 60:.2f} CPU-min, update {run.step}, loss {log['checkpoints'][-1]['loss']:.4f}",
            flush=True,
        )
        if log["finished"]:
            break
    return log


def score_checkpoint(
    path: str,
    settings: Settings,
    steps: int = STEPS,
    spacing: str = SPACING,
    threshold: str | None = None,
) -> dict[str, Any]:
    """FD-MNIST, precision and recall of a checkpoint with the default sampler (or ``steps``,
    ``spacing`` and x0 ``threshold``); CPU seconds."""
    tick = time.process_time()
    options = dict(n=settings.n, sampler=SAMPLER, steps=steps, spacing=spacing, seed=0)
    guidance = Guidance(threshold=threshold) if threshold else None
    pipeline = load_pipeline(path)
    scores = bench.score(pipeline, **options, guidance=guidance, batch_size=settings.batch_size)
    return {**scores, "score_cpu_seconds": time.process_time() - tick}


def variant_targets(settings: Settings, logs: dict[str, Any]) -> list[str]:
    """The checkpoints :data:`VARIANTS` are scored on: the new recipe's last (once its run reached
    its horizon or the goal's minutes), and the shipped model."""
    new = logs.get("new", {}).get("checkpoints", [])
    ended = new and (logs["new"]["finished"] or new[-1]["mark_minutes"] >= GOAL_MINUTES)
    last = [new[-1]["path"]] if ended else []
    return last + ([SHIPPED] if settings.score_shipped else [])


def score_all(settings: Settings, out_dir: Path, logs: dict[str, Any]) -> dict[str, Any]:
    """Score every saved checkpoint (and the shipped model) not yet in the scores file.

    The file is read again before each job and merged on each write, and a job is claimed (a
    file with the process id) while it runs, so several scoring processes can share the work
    (one per core)."""
    path = scores_path(out_dir, settings.quick)

    def stored() -> dict[str, Any]:
        return bench.read_json(path) if path.is_file() else {}

    scores = stored()
    files = [c["path"] for log in logs.values() for c in log["checkpoints"]]
    files += [SHIPPED] if settings.score_shipped else []
    jobs = [(file, file, {}) for file in files]
    jobs += [
        (f"{file} | {name}", file, options)
        for file in variant_targets(settings, logs)
        for name, options in VARIANTS.items()
    ]
    for key, file, options in jobs:
        if key in stored():
            continue
        claim = path.with_name(f".{path.stem}_{hashlib.sha1(key.encode()).hexdigest()[:12]}.claim")
        if not claim_job(claim):
            continue  # another process is scoring it
        try:
            result = score_checkpoint(file, settings, **options)
            scores = {**stored(), key: result}
            print(f"scored {key}: FD {result['fd']:.3f}", flush=True)
            bench.write_json(path, scores)
        finally:
            claim.unlink(missing_ok=True)
    return stored()


def claim_job(claim: Path) -> bool:
    """Take the job of ``claim`` (a file holding the scoring process's id): False while a live
    process holds it; a claim left by an ended process is taken over."""
    for _ in range(2):
        try:
            with open(claim, "x") as handle:
                handle.write(str(os.getpid()))
            return True
        except FileExistsError:
            holder = claim.read_text().strip()
            if holder.isdigit() and process_alive(int(holder)):
                return False
            claim.unlink(missing_ok=True)
    return False


def first_mark_below(row: dict[str, Any], threshold: float) -> float | None:
    """CPU-minutes of the first checkpoint whose FD is at most ``threshold`` (None: none is)."""
    return next((c["cpu_seconds"] / 60 for c in row["checkpoints"] if c["fd"] <= threshold), None)


def train_logs(settings: Settings, args: argparse.Namespace) -> dict[str, Any]:
    """Each recipe's training log: trained now (phases train and all) or read back (score)."""
    folder = runs_dir(args.out_dir, settings.quick)
    logs = {}
    for recipe in settings.recipes:
        if args.phase in ("train", "all"):
            logs[recipe] = train_recipe(recipe, settings, folder / recipe, args)
        elif (folder / recipe / "log.json").is_file():
            logs[recipe] = bench.read_json(folder / recipe / "log.json")
    return logs


def measure(settings: Settings, args: argparse.Namespace) -> dict[str, Any]:
    start = time.perf_counter()
    logs = train_logs(settings, args)
    scores = score_all(settings, args.out_dir, logs)
    rows = [
        {**log, "checkpoints": [{**c, **scores[c["path"]]} for c in log["checkpoints"]]}
        for log in logs.values()
    ]
    return {
        "settings": asdict(settings),
        "machine": bench.machine_info(),
        "sampler": {"sampler": SAMPLER, "steps": STEPS, "spacing": SPACING, "seed": 0},
        "rows": rows,
        "shipped": scores.get(SHIPPED),
        "variants": [
            {"checkpoint": file, "variant": name, **scores[f"{file} | {name}"]}
            for file in variant_targets(settings, logs)
            for name in VARIANTS
            if f"{file} | {name}" in scores
        ],
        "command": command_line(args, settings),
        "total_wall_seconds": time.perf_counter() - start,
    }


def goal_lines(report: dict[str, Any]) -> list[str]:
    lines = []
    for row in report["rows"]:
        # a mark's checkpoint follows the update that crossed it (a second or two past the mark)
        within = [c for c in row["checkpoints"] if c["mark_minutes"] <= GOAL_MINUTES]
        best = min((c["fd"] for c in within), default=None)
        measured = within[-1]["mark_minutes"] if within else 0
        lines.append(
            f"- {bench.passfail(best is not None and best <= FD_GOAL)}: {row['recipe']} recipe "
            f"reaches FD ≤ {FD_GOAL} (n = {report['settings']['n']}, {STEPS} NFE) within "
            f"{GOAL_MINUTES:g} CPU-minutes — best FD {bench.fmt(best)} (measured to {measured:g})"
        )
        for threshold in THRESHOLDS:
            minutes = first_mark_below(row, threshold)
            reached = (
                f"at {minutes:.1f} CPU-minutes (first checkpoint at or below it)"
                if minutes is not None
                else f"not within the {row['checkpoints'][-1]['cpu_seconds'] / 60:.1f} CPU-minutes measured"
            )
            lines.append(f"  - FD {threshold}: {reached}")
    return lines


def render_markdown(report: dict[str, Any]) -> str:
    settings, machine = report["settings"], report["machine"]
    table = [
        [
            row["recipe"],
            f"{c['cpu_seconds'] / 60:.1f}",
            c["step"],
            f"{c['epochs']:.2f}",
            f"{c['loss']:.4f}",
            f"{c['lr']:.2e}",
            bench.fmt(c["fd"]),
            f"{c['precision']:.3f} / {c['recall']:.3f}",
        ]
        for row in report["rows"]
        for c in row["checkpoints"]
    ]
    headers = ["recipe", "CPU-min", "updates", "epochs", "loss", "lr", "FD-MNIST", "P / R"]
    shipped = report.get("shipped")
    shipped_line = (
        f"The shipped `{SHIPPED}` (old recipe, 3000 updates of 128 ≈ 6.4 epochs; its training "
        f"time was never recorded, about 3.3 h of one thread at the old recipe's measured speed) "
        f"scores FD {bench.fmt(shipped['fd'])} (P / R {shipped['precision']:.3f} / "
        f"{shipped['recall']:.3f}) with the same sampler and n."
        if shipped
        else "The shipped model was not scored in this run."
    )
    scored = [c for r in report["rows"] for c in r["checkpoints"]] + report.get("variants", [])
    scored += [shipped] if shipped else []
    score_cpu = sum(c["score_cpu_seconds"] for c in scored)  # every score, variants included
    return bench.sections(
        "# Time to quality: FD-MNIST against training CPU-minutes",
        "The `unet-mnist` U-Net (1.19 M parameters), trained from seed 0 with each recipe on "
        "**one torch thread** (process CPU time of the updates; the machine's other core ran "
        "other work), its EMA weights saved at each mark. Recipes: "
        + ", ".join(f"`{r['recipe']}` = `{r['config']}`" for r in report["rows"])
        + f"; the new recipe's learning rate decays over {settings['horizon']} updates (its "
        f"`train.steps`). Scored with {SAMPLER}, {STEPS} {SPACING} steps ({STEPS} NFE), "
        f"n = {settings['n']}, seed 0. The real-data floor at n = 1000 is FD {FLOOR_N1000} "
        "(`fd_floor.md`).",
        f"Machine: {bench.machine_line(machine)} Scoring took {score_cpu / 60:.1f} CPU-minutes.",
        "## Goals",
        goal_lines(report),
        "## FD at each checkpoint",
        bench.markdown_table(headers, table),
        shipped_line,
        "## Sampling settings on the last new-recipe checkpoint and the shipped model",
        variant_table(report),
        "Commands (training runs, then scoring): "
        + ", ".join(f"`{row['command']}`" for row in report["rows"])
        + f", `{report['command']}`.",
    )


def variant_table(report: dict[str, Any]) -> str:
    """FD of :data:`VARIANTS` beside the default setting, per checkpoint they were scored on."""
    by_checkpoint: dict[str, list[dict[str, Any]]] = {}
    for row in report.get("variants", []):
        by_checkpoint.setdefault(row["checkpoint"], []).append(row)
    defaults = {c["path"]: c for r in report["rows"] for c in r["checkpoints"]}
    if report.get("shipped"):
        defaults[SHIPPED] = report["shipped"]
    lines = []
    for checkpoint, rows in by_checkpoint.items():
        base = defaults[checkpoint]
        for row in [{**base, "variant": f"default ({STEPS} NFE, no clipping)"}, *rows]:
            lines.append(
                [
                    f"`{Path(checkpoint).name}`",
                    row["variant"],
                    bench.fmt(row["fd"]),
                    f"{row['precision']:.3f} / {row['recall']:.3f}",
                    f"{row['sample_seconds']:.0f}",
                ]
            )
    if not lines:
        return "Not scored in this run."
    headers = ["checkpoint", "setting", "FD-MNIST", "P / R", "sampling s"]
    return bench.markdown_table(headers, lines)


def figure_path(out_dir: Path, quick: bool) -> Path:
    return out_dir / f"{bench.stem_of(NAME, quick)}.png"


def figures(report: dict[str, Any], out_dir: Path) -> list[Path]:
    plt = bench.pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for row in report["rows"]:
        points = [(c["cpu_seconds"] / 60, c["fd"]) for c in row["checkpoints"]]
        ax.plot(*zip(*points, strict=True), marker="o", label=f"{row['recipe']} ({row['config']})")
    if report.get("shipped"):
        ax.axhline(report["shipped"]["fd"], color="grey", ls="--", label="shipped mnist_ddim")
    ax.axhline(FD_GOAL, color="green", ls=":", label=f"goal FD {FD_GOAL}")
    ax.axhline(FLOOR_N1000, color="black", ls=":", label="real-data floor (n = 1000)")
    ax.set_yscale("log")
    ax.set_xlabel("training CPU-minutes (one thread)")
    ax.set_ylabel(f"FD-MNIST (n = {report['settings']['n']}, {STEPS} NFE)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return [bench.save_figure(fig, figure_path(out_dir, report["settings"]["quick"]))]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = bench.bench_parser(__doc__, "tiny U-Net, 256 digits, two marks of a second or so")
    parser.add_argument("--recipes", default="new,old", help="of: new, old (default: %(default)s)")
    parser.add_argument(
        "--cpu-minutes", default="5,10,20,30,45,60", help="the marks (default: %(default)s)"
    )
    parser.add_argument("--horizon", type=int, default=1900, help="default: %(default)s")
    parser.add_argument("--n", type=int, default=1000, help="samples per score")
    parser.add_argument("--phase", choices=("train", "score", "all"), default="all")
    return bench.parse(parser, argv)


def settings_from(args: argparse.Namespace) -> Settings:
    if args.quick:
        return QUICK
    recipes = bench.comma_list(args.recipes)
    unknown = [r for r in recipes if r not in RECIPES]
    if unknown:
        raise SystemExit(f"error: unknown recipe(s) {unknown}; choose from {list(RECIPES)}.")
    marks = tuple(sorted(float(x) for x in bench.comma_list(args.cpu_minutes)))
    return Settings(recipes, marks, args.horizon, args.n, batch_size=250)


def command_line(args: argparse.Namespace, settings: Settings) -> str:
    if settings.quick:
        return "python benchmarks/time_to_quality.py --quick"
    return (
        f"python benchmarks/time_to_quality.py --recipes {','.join(settings.recipes)} "
        f"--cpu-minutes {','.join(f'{m:g}' for m in settings.marks)} --horizon {settings.horizon} "
        f"--n {settings.n}" + (f" --threads {args.threads}" if args.threads else "")
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    settings = settings_from(args)
    if args.phase == "train":  # nothing to publish until the checkpoints are scored
        train_logs(settings, args)
        return 0
    return bench.publish(
        args, NAME, lambda: measure(settings, args), render_markdown, figures=figures
    )


if __name__ == "__main__":
    raise SystemExit(main())
