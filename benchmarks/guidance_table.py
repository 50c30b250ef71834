"""Table 4 of "Diffusion Models Beat GANs" in shape on MNIST: classifier guidance and CFG sweeps.

Dhariwal & Nichol (2021), Table 4, measure how classifier guidance trades diversity for
fidelity on ImageNet 256×256. This script measures the same on MNIST (CPU):

* **(a)** the unconditional model + the noisy classifier, classifier scale
  s ∈ {0, 0.5, 1, 2, 5, 10};
* **(b)** the class-conditional model (trained with label dropout) + the same classifier, same s;
* **(c)** the conditional model with classifier-free guidance (Ho & Salimans 2022),
  w ∈ {0, 1, 2, 3, 5, 7} (difflab's w: 0 = unconditional, 1 = conditional; the paper's
  strength is w - 1).

Each cell is ``evaluate_pipeline`` of ``--n`` images whose target labels cycle 0, 1, ..., 9 (DDIM
with ``--steps`` steps and η = ``--eta``, Algorithm 2; ``--sampler ddpm`` uses Algorithm 1):
FD-MNIST, precision and recall (k = 3) against the MNIST test set, and the **label accuracy
judged by the evaluation suite's clean CNN** (``weights/mnist_cnn.safetensors``), never by the
guiding classifier. Batch ``i`` of every cell starts from the seed ``SeedSequence([seed, i])``,
so all cells share their x_T (common random numbers) and cell (b) at s = 0 equals
``difflab eval`` of the conditional model.

``--bf16`` samples under bf16 autocast (the pipeline's precision: the U-Net and the guiding
classifier; the feature CNN and the FD stay fp32).

Expected shape (the paper's): precision and label accuracy rise with s, recall falls, FD is
U-shaped. Goal: guided unconditional sampling (a) reaches ≥ 97 % label accuracy at some s with
FD ≤ 1.5× that of the unguided conditional model ((b) at s = 0).

Writes ``guidance.{json,md}``, ``guidance.png`` (metrics vs scale) and ``guidance_samples.png``
(one row per cell, one column per class); ``--quick`` writes ``guidance_quick*`` instead (n = 20,
S = 2: a smoke test whose numbers mean nothing). Before running it times one batch of each
network and prints the predicted minutes (``--plan-only`` stops there).

    python benchmarks/guidance_table.py          # make bench-guidance, with the weights/ defaults
    make bench-guidance-fast   # the recommended recipe's models, as guidance_fast.* (--name)
    python benchmarks/guidance_table.py --quick --out-dir /tmp/guidance
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

import common as bench
from difflab.diffusion import Conditioning
from difflab.errors import DifflabError
from difflab.io.checkpoint import load_checkpoint_meta
from difflab.metrics.frechet import FeatureStats
from difflab.models.classifier import NoisyClassifier
from difflab.pipelines import (
    DiffusionPipeline,
    load_noisy_classifier,
    load_pipeline,
    model_reference,
)
from difflab.samplers import Guidance, classifier_log_prob_grad

NAME = "guidance"  # benchmarks/results/guidance{,_quick}.*
DEFAULT_UNCONDITIONAL = Path("weights/mnist_ddim.safetensors")
DEFAULT_CONDITIONAL = Path("weights/mnist_cond.safetensors")
DEFAULT_CLASSIFIER = Path("weights/mnist_classifier.safetensors")
CLASSIFIER_SCALES = (0.0, 0.5, 1.0, 2.0, 5.0, 10.0)
GUIDANCE_SCALES = (0.0, 1.0, 2.0, 3.0, 5.0, 7.0)
GOAL_ACCURACY = 0.97  # guided unconditional label accuracy ...
GOAL_FD_RATIO = 1.5  # ... with FD <= 1.5x that of the unguided conditional model
SAMPLE_COLUMNS = 10  # images per row of the samples figure (labels 0..9)
CELL_OVERHEAD_S = 0.7  # feature CNN and FD per cell
PART_NAMES = {
    "a": "(a) unconditional + classifier (s)",
    "b": "(b) conditional + classifier (s)",
    "c": "(c) classifier-free (w)",
}
# Dhariwal & Nichol 2021, Table 4 (ImageNet 256×256; both models trained for 2M iterations at
# batch 256): FID, sFID, IS, precision, recall; scale None = no guidance. Quoted from memory of
# arXiv:2105.05233v4, not yet checked against the paper: set PAPER_CHECKED once it is.
PAPER_COLUMNS = ("conditional", "scale", "fid", "sfid", "inception", "precision", "recall")
PAPER_TABLE4: list[dict[str, Any]] = [
    dict(zip(PAPER_COLUMNS, row, strict=True))
    for row in (
        (False, None, 26.21, 6.35, 39.70, 0.61, 0.63),
        (False, 1.0, 33.03, 6.99, 32.92, 0.56, 0.65),
        (False, 10.0, 12.00, 10.40, 95.41, 0.76, 0.44),
        (True, None, 10.94, 6.02, 100.98, 0.69, 0.63),
        (True, 1.0, 4.59, 5.25, 186.70, 0.82, 0.52),
        (True, 10.0, 9.11, 10.93, 283.92, 0.88, 0.32),
    )
]
PAPER_CHECKED = False


@dataclass(frozen=True)
class Settings:
    """How much work one run does (see ``--help``)."""

    n: int = 1000
    steps: int = 50
    sampler: str = "ddim"
    eta: float = 0.0
    batch_size: int = 250
    seed: int = 0
    classifier_scales: tuple[float, ...] = CLASSIFIER_SCALES
    guidance_scales: tuple[float, ...] = GUIDANCE_SCALES
    bf16: bool = False
    quick: bool = False


QUICK = Settings(
    n=20,
    steps=2,
    batch_size=10,
    classifier_scales=(0.0, 5.0),
    guidance_scales=(0.0, 3.0),
    quick=True,
)


@dataclass(frozen=True)
class Rates:
    """Images per second through one U-Net call and one classifier forward + backward."""

    unet: float
    classifier: float


@dataclass(frozen=True)
class Cell:
    """One evaluated setting: ``part`` is "a" (unconditional + classifier), "b" or "c" (CFG)."""

    part: str
    scale: float

    @property
    def label(self) -> str:
        return f"({self.part}) {'w' if self.part == 'c' else 's'}={self.scale:g}"

    def guidance(self, classifier: NoisyClassifier) -> Guidance:
        if self.part == "c":
            return Guidance(guidance_scale=self.scale)
        return Guidance(classifier, self.scale)

    def evaluations(self, settings: Settings) -> int:
        """U-Net calls on one image: 2 per image-step for CFG with w ∉ {0, 1}, else 1."""
        doubled = self.part == "c" and self.scale not in (0.0, 1.0)
        return settings.n * settings.steps * (2 if doubled else 1)

    def seconds(self, settings: Settings, rates: Rates) -> float:
        """Predicted seconds: the U-Net calls, the classifier's gradients and the scoring."""
        guided = self.part != "c" and self.scale > 0
        classifier = settings.n * settings.steps / rates.classifier if guided else 0.0
        return self.evaluations(settings) / rates.unet + classifier + CELL_OVERHEAD_S


def tasks(
    models: dict[str, DiffusionPipeline],
    classifier: NoisyClassifier,
    settings: Settings,
    rates: Rates,
    samples: dict[str, torch.Tensor],
) -> list[bench.Task]:
    """One task per cell: (a), (b) over the classifier scales, (c) over the CFG weights; each
    keeps its first images in ``samples``."""
    cells = [Cell(part, s) for part in "ab" for s in settings.classifier_scales]
    cells += [Cell("c", w) for w in settings.guidance_scales]
    reference = functools.cache(functools.partial(model_reference, models["a"]))
    return [
        bench.Task(
            "cells",
            cell.label,
            cell.evaluations(settings),
            cell.seconds(settings, rates),
            functools.partial(
                run_cell, cell, models[cell.part], classifier, reference, settings, samples
            ),
            cell_message,
        )
        for cell in cells
    ]


# ----------------------------------------------------------------------------- measuring


def load_models(
    args: argparse.Namespace, precision: str
) -> tuple[DiffusionPipeline, DiffusionPipeline, NoisyClassifier]:
    """The three checkpoints, checked to fit one another (data, image size, schedule)."""
    unconditional = load_pipeline(args.unconditional, precision=precision)
    conditional = load_pipeline(args.conditional, precision=precision)
    if unconditional.num_classes:
        raise DifflabError(f"--unconditional {args.unconditional} is class-conditional.")
    if not conditional.num_classes:
        raise DifflabError(f"--conditional {args.conditional} is unconditional.")
    if unconditional.description.dataset != conditional.description.dataset:
        raise DifflabError("the two diffusion models were trained on different datasets.")
    classifier = load_noisy_classifier(args.classifier, pipeline=unconditional)
    load_noisy_classifier(args.classifier, pipeline=conditional)  # the same checks for (b)
    return unconditional, conditional, classifier


def measure_rates(pipeline: DiffusionPipeline, classifier: NoisyClassifier, batch: int) -> Rates:
    """Images per second through the U-Net and the classifier's gradient, in the sampling
    precision (best of two calls after a warm-up)."""
    x = pipeline.noise(batch, seed=0)
    t = torch.full((batch,), pipeline.schedule.num_timesteps // 2)
    labels = torch.arange(batch) % classifier.config.num_classes
    unet = bench.denoiser_rate(pipeline, batch, Conditioning(labels=labels))
    with bench.autocast(pipeline.precision):
        seconds = bench.best_seconds(lambda: classifier_log_prob_grad(classifier, x, t, labels))
    return Rates(unet, batch / seconds)


def run_cell(
    cell: Cell,
    pipeline: DiffusionPipeline,
    classifier: NoisyClassifier,
    reference: Callable[[], FeatureStats],
    settings: Settings,
    samples: dict[str, torch.Tensor],
) -> dict[str, Any]:
    """Generate and score one cell; keeps its first images (targets 0, 1, ...) in ``samples``."""

    def keep_first(done: int, n: int, images: torch.Tensor) -> None:
        samples.setdefault(cell.label, images[:SAMPLE_COLUMNS])

    result = bench.score(
        pipeline,
        n=settings.n,
        sampler=settings.sampler,
        steps=settings.steps,
        eta=settings.eta,
        seed=settings.seed,
        batch_size=settings.batch_size,
        guidance=cell.guidance(classifier),
        reference=reference(),
        callback=keep_first,
    )
    return {"part": cell.part, "scale": cell.scale, **result}


def cell_message(row: dict[str, Any]) -> str:
    return (
        f"{row['metric']} {row['fd']:.3f}, P {bench.fmt(row['precision'])}, R "
        f"{bench.fmt(row['recall'])}, accuracy {bench.fmt(row['label_accuracy'])}"
    )


def goal_check(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """≥ 97 % accuracy for (a) at some s with FD ≤ 1.5× FD of (b) at s = 0."""
    baseline = next((r for r in rows if r["part"] == "b" and r["scale"] == 0), None)
    if baseline is None:
        return {"passed": None, "detail": "no unguided conditional cell (b, s=0) in this run"}
    limit = GOAL_FD_RATIO * baseline["fd"]
    part_a = [r for r in rows if r["part"] == "a"]
    meeting = [r for r in part_a if r["label_accuracy"] >= GOAL_ACCURACY and r["fd"] <= limit]
    best = max(part_a, key=lambda r: r["label_accuracy"], default=None)
    if meeting:
        r = meeting[0]
        detail = (
            f"s={r['scale']:g}: accuracy {r['label_accuracy']:.3f}, FD {r['fd']:.3f} ≤ {limit:.3f}"
        )
    elif best:
        detail = (
            f"best (a): s={best['scale']:g}, accuracy {best['label_accuracy']:.3f}, FD "
            f"{best['fd']:.3f} (limit {limit:.3f})"
        )
    else:
        detail = "no (a) cells"
    return {
        "goal": f"(a) reaches ≥ {GOAL_ACCURACY:.0%} label accuracy with FD ≤ {GOAL_FD_RATIO}× "
        f"FD of the unguided conditional model ({baseline['fd']:.3f})",
        "passed": bool(meeting),
        "detail": detail,
    }


def shape_checks(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The paper's qualitative shape per part: from the smallest to the largest scale."""

    def rises(before: float | None, after: float | None) -> bool | None:
        return None if before is None or after is None else after > before

    checks = []
    for part in PART_NAMES:
        cells = part_rows(rows, part)
        if len(cells) < 2:
            continue
        low, high = cells[0], cells[-1]
        checks.append(
            {
                "part": part,
                "precision_rises": rises(low["precision"], high["precision"]),
                "accuracy_rises": rises(low["label_accuracy"], high["label_accuracy"]),
                "recall_falls": rises(high["recall"], low["recall"]),
                "fd_u_shaped": min(cells, key=lambda r: r["fd"]) not in (low, high),
            }
        )
    return checks


def part_rows(rows: Sequence[dict[str, Any]], part: str) -> list[dict[str, Any]]:
    """The rows of one part, by scale."""
    return sorted((r for r in rows if r["part"] == part), key=lambda r: r["scale"])


def measure(args: argparse.Namespace, settings: Settings) -> dict[str, Any] | None:
    """Print the plan; unless ``--plan-only``, run every cell and return the report."""
    start = time.perf_counter()
    precision = "bf16" if settings.bf16 else "fp32"
    unconditional, conditional, classifier = load_models(args, precision)
    rates = measure_rates(unconditional, classifier, min(settings.batch_size, settings.n))
    models = {"a": unconditional, "b": conditional, "c": conditional}
    samples: dict[str, torch.Tensor] = {}
    planned = tasks(models, classifier, settings, rates, samples)
    print(
        f"{len(planned)} cells × n={settings.n}, {settings.sampler} S={settings.steps}: U-Net "
        f"{rates.unet:.0f} images/s, classifier gradient {rates.classifier:.0f} images/s on "
        f"{torch.get_num_threads()} thread(s); plan:",
        flush=True,
    )
    predicted = bench.print_plan(planned)
    if args.plan_only:
        return None
    rows = bench.run_tasks(planned)["cells"]
    stem = bench.stem_of(args.name, settings.quick)
    path = args.out_dir / f"{stem}_samples.png"
    print(f"wrote {bench.image_rows_figure(list(samples.values()), list(samples), path)}")
    return {
        "name": stem,
        "command": command_line(args, settings),
        "settings": dataclasses.asdict(settings),
        "checkpoints": {
            "unconditional": str(args.unconditional),
            "conditional": str(args.conditional),
            "classifier": str(args.classifier),
            "steps": {
                "unconditional": load_checkpoint_meta(args.unconditional).get("step"),
                "conditional": load_checkpoint_meta(args.conditional).get("step"),
                "classifier": classifier.meta.get("step"),
            },
            "classifier_accuracy_vs_t": classifier.meta.get("accuracy_vs_t"),
        },
        "rows": rows,
        "goal": goal_check(rows),
        "shape": shape_checks(rows),
        "paper": {
            "source": "Dhariwal & Nichol 2021, Table 4 (ImageNet 256×256)",
            "checked": PAPER_CHECKED,
            "rows": PAPER_TABLE4,
        },
        "figures": {"metrics": f"{stem}.png", "samples": f"{stem}_samples.png"},
        "rates": dataclasses.asdict(rates),
        "predicted_seconds": predicted,
        "total_seconds": time.perf_counter() - start,
        "machine": bench.machine_info(),
    }


# ----------------------------------------------------------------------------- report


def figures(report: dict[str, Any], out_dir: Path) -> list[Path]:
    """FD, precision, recall and label accuracy against the scale, one line per part."""
    fig, axes = bench.pyplot().subplots(1, 4, figsize=(15, 3.4))
    metric = report["rows"][0]["metric"]
    titles = {"fd": metric, "precision": "precision", "recall": "recall"}
    titles["label_accuracy"] = "label accuracy (clean CNN)"
    for ax, (key, title) in zip(axes, titles.items(), strict=True):
        for part, name in PART_NAMES.items():
            cells = part_rows(report["rows"], part)
            if cells and all(r[key] is not None for r in cells):
                ax.plot([r["scale"] for r in cells], [r[key] for r in cells], "o-", label=name)
        ax.set_xlabel("scale (s or w)")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    return [bench.save_figure(fig, out_dir / report["figures"]["metrics"])]


def part_markdown(rows: Sequence[dict[str, Any]], part: str) -> str:
    """One part's table: metrics per scale."""
    cells = part_rows(rows, part)
    keys = ("fd", "precision", "recall", "label_accuracy")
    body = [
        [f"{r['scale']:g}", *(bench.fmt(r[k]) for k in keys), bench.fmt(r["wall_seconds"], 0)]
        for r in cells
    ]
    headers = ["w" if part == "c" else "s", cells[0]["metric"] if cells else "FD"]
    return bench.markdown_table(
        [*headers, "precision", "recall", "label accuracy", "seconds"], body
    )


def paper_markdown(paper: dict[str, Any]) -> str:
    """The paper's Table 4 rows as the JSON holds them."""
    body = [
        [
            "yes" if r["conditional"] else "no",
            "—" if r["scale"] is None else f"{r['scale']:g}",
            *(f"{r[key]:.2f}" for key in PAPER_COLUMNS[2:]),
        ]
        for r in paper["rows"]
    ]
    return bench.markdown_table(
        ["conditional", "s", "FID", "sFID", "IS", "precision", "recall"], body
    )


def render_markdown(report: dict[str, Any]) -> str:
    """The whole report as markdown, from the JSON alone."""
    s, rows, ckpt, goal = report["settings"], report["rows"], report["checkpoints"], report["goal"]
    quick = " — quick run (smoke test; numbers meaningless)" if s["quick"] else ""
    checked = "" if report["paper"]["checked"] else " (quoted from memory: check against the paper)"
    shapes = [
        f"- {PART_NAMES[c['part']]}: precision rises {c['precision_rises']}, accuracy rises "
        f"{c['accuracy_rises']}, recall falls {c['recall_falls']}, FD minimum inside the sweep "
        f"{c['fd_u_shaped']}"
        for c in report["shape"]
    ]
    parts = [(f"## {name}", part_markdown(rows, part)) for part, name in PART_NAMES.items()]
    figures = report["figures"]
    return bench.sections(
        f"# Classifier guidance and classifier-free guidance on MNIST{quick}",
        f"Unconditional `{ckpt['unconditional']}`, conditional `{ckpt['conditional']}`, noisy "
        f"classifier `{ckpt['classifier']}`. {s['sampler'].upper()} with {s['steps']} steps, "
        f"η={s['eta']:g}, n={s['n']} per cell (targets 0..9 cycled), batch {s['batch_size']}, "
        f"seed {s['seed']} (common x_T across cells). Label accuracy is judged by the clean "
        "feature CNN (weights/mnist_cnn.safetensors), never by the guiding classifier.",
        "## Goal",
        f"- {bench.passfail(goal['passed'])}: {goal.get('goal', '')} — {goal['detail']}",
        "## Shape (the paper's: precision and accuracy rise, recall falls, FD U-shaped)",
        shapes,
        *(block for part in parts for block in part),
        f"## The paper: Dhariwal & Nichol 2021, Table 4, ImageNet 256×256{checked}",
        paper_markdown(report["paper"]),
        "## Figures",
        f"- `{figures['metrics']}`: the four metrics against the scale.\n"
        f"- `{figures['samples']}`: the first images of every cell (targets 0..9).",
        "## Cost",
        f"Rates measured before the run: U-Net {report['rates']['unet']:.0f} images/s, classifier "
        f"gradient {report['rates']['classifier']:.0f} images/s; predicted "
        f"{report['predicted_seconds'] / 60:.1f} min, actual {report['total_seconds'] / 60:.1f} "
        f"min. {bench.machine_line(report['machine'])} Rerun: `{report['command']}`.",
    )


# ----------------------------------------------------------------------------- main


def parse_scales(text: str) -> tuple[float, ...]:
    """``"0,0.5,1"`` -> (0.0, 0.5, 1.0); finite numbers ≥ 0."""
    try:
        values = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} must be numbers separated by commas") from None
    if not values or any(not math.isfinite(v) or v < 0 for v in values):
        raise argparse.ArgumentTypeError(f"{text!r} must be finite numbers >= 0")
    return values


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = bench.bench_parser(__doc__, "smoke test: n=20, S=2, s ∈ {0, 5}, w ∈ {0, 3}")
    parser.add_argument("--unconditional", type=Path, default=DEFAULT_UNCONDITIONAL)
    parser.add_argument("--conditional", type=Path, default=DEFAULT_CONDITIONAL)
    parser.add_argument("--classifier", type=Path, default=DEFAULT_CLASSIFIER)
    parser.add_argument("--n", type=int, help=f"samples per cell ({Settings.n})")
    parser.add_argument("--steps", type=int, help=f"sampling steps S ({Settings.steps})")
    parser.add_argument("--sampler", choices=("ddim", "ddpm"), default=Settings.sampler)
    parser.add_argument("--eta", type=float, default=Settings.eta, help="DDIM η")
    parser.add_argument("--batch-size", type=int, help=f"images at once ({Settings.batch_size})")
    parser.add_argument("--seed", type=int, default=Settings.seed)
    parser.add_argument("--scales", type=parse_scales, help="classifier scales s of (a), (b)")
    parser.add_argument("--guidance-scales", type=parse_scales, help="CFG weights w of (c)")
    parser.add_argument("--bf16", action="store_true", help="sample under bf16 autocast")
    parser.add_argument("--plan-only", action="store_true", help="print the plan and stop")
    bench.add_name_argument(parser, NAME)
    return bench.parse(parser, argv)


def make_settings(args: argparse.Namespace) -> Settings:
    base = QUICK if args.quick else Settings()
    return dataclasses.replace(
        base,
        n=args.n or base.n,
        steps=args.steps or base.steps,
        batch_size=args.batch_size or base.batch_size,
        sampler=args.sampler,
        eta=args.eta,
        seed=args.seed,
        classifier_scales=args.scales or base.classifier_scales,
        guidance_scales=args.guidance_scales or base.guidance_scales,
        bf16=args.bf16,
    )


def command_line(args: argparse.Namespace, settings: Settings) -> str:
    s = settings
    parts = [
        "python benchmarks/guidance_table.py",
        f"--unconditional {args.unconditional} --conditional {args.conditional}",
        f"--classifier {args.classifier}",
        f"--n {s.n} --steps {s.steps} --sampler {s.sampler} --eta {s.eta:g}",
        f"--batch-size {s.batch_size} --seed {s.seed}",
        "--scales " + ",".join(f"{v:g}" for v in s.classifier_scales),
        "--guidance-scales " + ",".join(f"{v:g}" for v in s.guidance_scales),
    ]
    flags = (("--bf16", s.bf16), ("--quick", s.quick), (f"--name {args.name}", args.name != NAME))
    return " ".join(parts + [flag for flag, on in flags if on])


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    settings = make_settings(args)
    try:
        report = None if args.render_only else measure(args, settings)
    except DifflabError as error:
        print(f"error: {error}")
        return 1
    if args.plan_only:
        return 0
    status = bench.publish(args, args.name, lambda: report, render_markdown, figures)
    if report is not None:
        print(f"goal: {report['goal']['passed']} — {report['goal']['detail']}")
    return status


if __name__ == "__main__":
    raise SystemExit(main())
