"""Table 4 of "Diffusion Models Beat GANs" in shape on MNIST: classifier guidance and CFG sweeps.

Dhariwal & Nichol (2021), Table 4, measure how classifier guidance trades diversity for
fidelity on ImageNet 256×256. This script measures the same on MNIST (CPU):

* **(a)** the unconditional model + the noisy classifier, classifier scale
  s ∈ {0, 0.5, 1, 2, 5, 10};
* **(b)** the class-conditional model (trained with label dropout) + the same classifier, same s;
* **(c)** the conditional model with classifier-free guidance (Ho & Salimans 2022),
  w ∈ {0, 1, 2, 3, 5, 7} (difflab's w: 0 = unconditional, 1 = conditional; the paper's
  strength is w - 1).

Each cell samples ``--n`` images whose target labels cycle 0, 1, ..., 9 (DDIM with ``--steps``
steps and η = ``--eta``, Algorithm 2; ``--sampler ddpm`` uses Algorithm 1) and measures FD-MNIST,
precision and recall (k = 3) against the MNIST test set, and the **label accuracy judged by the
evaluation suite's clean CNN** (``weights/mnist_cnn.safetensors``, through
:func:`difflab.metrics.evaluate.evaluate_samples`) — never by the guiding classifier. Batch
``i`` of every cell starts from the seed ``SeedSequence([seed, i])`` as in ``evaluate_model``,
so all cells share their x_T (common random numbers) and cell (b) at s = 0 equals
``difflab eval`` of the conditional model.

Expected shape (the paper's): precision and label accuracy rise with s, recall falls, FD is
U-shaped. Goal: guided unconditional sampling (a) reaches ≥ 97 % label accuracy at some s with
FD ≤ 1.5× that of the unguided conditional model ((b) at s = 0).

Writes ``benchmarks/results/guidance.{json,md}``, ``guidance.png`` (metrics vs scale) and
``guidance_samples.png`` (one row per cell, one column per class); ``--quick`` writes
``guidance_quick.*`` instead and shrinks n and S to a smoke test whose numbers mean nothing.
Before running it times one batch of each network and prints the predicted minutes
(``--plan-only`` stops there).

    python benchmarks/guidance_table.py          # make bench-guidance, with the weights/ defaults
    python benchmarks/guidance_table.py --quick --unconditional U.safetensors \\
        --conditional C.safetensors --classifier K.safetensors --out-dir /tmp/guidance
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from common import RESULTS_DIR, machine_info, markdown_table, write_json, write_text
from difflab.errors import DifflabError
from difflab.io.images import make_grid
from difflab.metrics.evaluate import evaluate_samples
from difflab.metrics.frechet import FeatureStats
from difflab.metrics.reference import parse_data, reference_stats
from difflab.models.classifier import NoisyClassifier
from difflab.pipelines import DiffusionModel, load_diffusion_model, load_noisy_classifier
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

# Dhariwal & Nichol 2021, Table 4 (ImageNet 256×256; both models trained for 2M iterations at
# batch 256): FID, sFID, IS, precision, recall; scale None = no guidance. Quoted from memory of
# arXiv:2105.05233v4, not yet checked against the paper: set PAPER_CHECKED once it is.
PAPER_TABLE4: list[dict[str, Any]] = [
    dict(
        conditional=False,
        scale=None,
        fid=26.21,
        sfid=6.35,
        inception=39.70,
        precision=0.61,
        recall=0.63,
    ),
    dict(
        conditional=False,
        scale=1.0,
        fid=33.03,
        sfid=6.99,
        inception=32.92,
        precision=0.56,
        recall=0.65,
    ),
    dict(
        conditional=False,
        scale=10.0,
        fid=12.00,
        sfid=10.40,
        inception=95.41,
        precision=0.76,
        recall=0.44,
    ),
    dict(
        conditional=True,
        scale=None,
        fid=10.94,
        sfid=6.02,
        inception=100.98,
        precision=0.69,
        recall=0.63,
    ),
    dict(
        conditional=True,
        scale=1.0,
        fid=4.59,
        sfid=5.25,
        inception=186.70,
        precision=0.82,
        recall=0.52,
    ),
    dict(
        conditional=True,
        scale=10.0,
        fid=9.11,
        sfid=10.93,
        inception=283.92,
        precision=0.88,
        recall=0.32,
    ),
]
PAPER_CHECKED = False


# ----------------------------------------------------------------------------- settings


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


QUICK = dict(n=20, steps=2, batch_size=10, quick=True)


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

    def cost(self, settings: Settings, rates: Rates) -> float:
        """Predicted seconds: U-Net calls (2 per image-step for CFG with w ∉ {0, 1}) + classifier."""
        per_step = 1 / rates.unet
        if self.part == "c" and self.scale not in (0.0, 1.0):
            per_step *= 2
        if self.part != "c" and self.scale > 0:
            per_step += 1 / rates.classifier
        return settings.n * settings.steps * per_step + CELL_OVERHEAD_S


def plan_cells(settings: Settings) -> list[Cell]:
    return [
        *(Cell("a", s) for s in settings.classifier_scales),
        *(Cell("b", s) for s in settings.classifier_scales),
        *(Cell("c", w) for w in settings.guidance_scales),
    ]


@dataclass(frozen=True)
class Rates:
    """Images per second through one U-Net call and one classifier forward + backward."""

    unet: float
    classifier: float


# ----------------------------------------------------------------------------- models


def load_models(
    args: argparse.Namespace,
) -> tuple[DiffusionModel, DiffusionModel, NoisyClassifier]:
    """The three checkpoints, checked to fit one another (data, image size, schedule)."""
    unconditional = load_diffusion_model(args.unconditional)
    conditional = load_diffusion_model(args.conditional)
    if unconditional.num_classes:
        raise DifflabError(f"--unconditional {args.unconditional} is class-conditional.")
    if not conditional.num_classes:
        raise DifflabError(f"--conditional {args.conditional} is unconditional.")
    if unconditional.meta["data"]["name"] != conditional.meta["data"]["name"]:
        raise DifflabError("the two diffusion models were trained on different datasets.")
    classifier = load_noisy_classifier(args.classifier, model=unconditional)
    load_noisy_classifier(args.classifier, model=conditional)  # the same checks for (b)
    if args.bf16:
        from ddim_tables import (
            with_bf16,
        )  # the U-Net under bf16 autocast; the classifier stays fp32

        unconditional, conditional = with_bf16(unconditional), with_bf16(conditional)
    return unconditional, conditional, classifier


def batch_seed(seed: int, index: int) -> int:
    """The seed of batch ``index``, as :func:`difflab.metrics.evaluate.evaluate_model` draws it."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0])


def measure_rates(model: DiffusionModel, classifier: NoisyClassifier, batch: int) -> Rates:
    """Best of two timed calls of each network on ``batch`` images (after a warm-up)."""
    x = model.noise(batch, seed=0)
    t = torch.full((batch,), model.schedule.num_timesteps // 2)
    labels = torch.arange(batch) % classifier.config.num_classes
    denoiser = model.denoiser()

    def best(fn: Any) -> float:
        fn()
        seconds = []
        for _ in range(2):
            start = time.perf_counter()
            fn()
            seconds.append(time.perf_counter() - start)
        return min(seconds)

    cond = model.conditioning(labels, targets_only=True)
    with torch.no_grad():
        unet_s = best(lambda: denoiser(x, t, cond))
        classifier_s = best(lambda: classifier_log_prob_grad(classifier, x, t, labels))
    return Rates(batch / unet_s, batch / classifier_s)


# ----------------------------------------------------------------------------- cells


def run_cell(
    cell: Cell,
    model: DiffusionModel,
    classifier: NoisyClassifier,
    reference: FeatureStats,
    settings: Settings,
) -> tuple[dict[str, Any], torch.Tensor]:
    """Sample and evaluate one cell; returns the row and its first images (labels 0, 1, ...)."""
    start = time.perf_counter()
    labels = torch.arange(settings.n) % classifier.config.num_classes  # (n,)
    batches = []
    sample_seconds = 0.0
    for index, first in enumerate(range(0, settings.n, settings.batch_size)):
        chunk = labels[first : first + settings.batch_size]
        tick = time.perf_counter()
        batches.append(
            model.sample(
                len(chunk),
                sampler=settings.sampler,
                steps=settings.steps,
                eta=settings.eta,
                seed=batch_seed(settings.seed, index),
                labels=chunk,
                guidance=cell.guidance(classifier),
            )
        )
        sample_seconds += time.perf_counter() - tick
    images = torch.cat(batches)  # (n, C, H, W)
    result = evaluate_samples(images, reference, labels=labels)  # judged by the clean CNN
    row = {
        "part": cell.part,
        "scale": cell.scale,
        "fd": result["fd"],
        "precision": result["precision"],
        "recall": result["recall"],
        "label_accuracy": result["label_accuracy"],
        "metric": result["metric"],
        "n": settings.n,
        "sample_seconds": sample_seconds,
        "wall_seconds": time.perf_counter() - start,
    }
    return row, images[:SAMPLE_COLUMNS]


def goal_check(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """≥ 97 % accuracy for (a) at some s with FD ≤ 1.5× FD of (b) at s = 0."""
    baseline = next((r for r in rows if r["part"] == "b" and r["scale"] == 0), None)
    if baseline is None:
        return {"passed": None, "detail": "no unguided conditional cell (b, s=0) in this run"}
    limit = GOAL_FD_RATIO * baseline["fd"]
    meeting = [
        r
        for r in rows
        if r["part"] == "a" and r["label_accuracy"] >= GOAL_ACCURACY and r["fd"] <= limit
    ]
    best = max(
        (r for r in rows if r["part"] == "a"), key=lambda r: r["label_accuracy"], default=None
    )
    detail = (
        f"s={meeting[0]['scale']:g}: accuracy {meeting[0]['label_accuracy']:.3f}, FD "
        f"{meeting[0]['fd']:.3f} ≤ {limit:.3f}"
        if meeting
        else f"best (a): s={best['scale']:g}, accuracy {best['label_accuracy']:.3f}, FD "
        f"{best['fd']:.3f} (limit {limit:.3f})"
        if best
        else "no (a) cells"
    )
    return {
        "goal": f"(a) reaches ≥ {GOAL_ACCURACY:.0%} label accuracy with FD ≤ {GOAL_FD_RATIO}× "
        f"FD of the unguided conditional model ({baseline['fd']:.3f})",
        "passed": bool(meeting),
        "detail": detail,
    }


def shape_checks(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The paper's qualitative shape per part: from the smallest to the largest scale."""
    checks = []
    for part in ("a", "b", "c"):
        cells = sorted((r for r in rows if r["part"] == part), key=lambda r: r["scale"])
        if len(cells) < 2:
            continue
        low, high = cells[0], cells[-1]
        interior = min(cells, key=lambda r: r["fd"]) not in (low, high)
        checks.append(
            {
                "part": part,
                "precision_rises": _rises(low["precision"], high["precision"]),
                "accuracy_rises": _rises(low["label_accuracy"], high["label_accuracy"]),
                "recall_falls": _rises(high["recall"], low["recall"]),
                "fd_u_shaped": interior,
            }
        )
    return checks


def _rises(before: float | None, after: float | None) -> bool | None:
    return None if before is None or after is None else after > before


# ----------------------------------------------------------------------------- figures


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


PART_NAMES = {
    "a": "(a) unconditional + classifier (s)",
    "b": "(b) conditional + classifier (s)",
    "c": "(c) classifier-free (w)",
}


def metrics_figure(rows: Sequence[dict[str, Any]], metric: str, path: Path) -> Path:
    """FD, precision, recall and label accuracy against the scale, one line per part."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 4, figsize=(15, 3.4))
    for ax, key, title in zip(
        axes,
        ("fd", "precision", "recall", "label_accuracy"),
        (metric, "precision", "recall", "label accuracy (clean CNN)"),
        strict=True,
    ):
        for part, name in PART_NAMES.items():
            cells = sorted((r for r in rows if r["part"] == part), key=lambda r: r["scale"])
            if cells and all(r[key] is not None for r in cells):
                ax.plot([r["scale"] for r in cells], [r[key] for r in cells], "o-", label=name)
        ax.set_xlabel("scale (s or w)")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def samples_figure(samples: dict[str, torch.Tensor], path: Path) -> Path:
    """One labelled row per cell: its first images (targets 0, 1, ..., 9)."""
    plt = _pyplot()
    fig, axes = plt.subplots(len(samples), 1, figsize=(8, 0.8 * len(samples) + 0.5), squeeze=False)
    for ax, (label, images) in zip(axes[:, 0], samples.items(), strict=True):
        grid = make_grid(images, nrow=len(images))  # (H', W', C) uint8
        ax.imshow(grid[..., 0] if grid.shape[-1] == 1 else grid, cmap="gray", vmin=0, vmax=255)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_ylabel(label, rotation=0, ha="right", va="center", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


# ----------------------------------------------------------------------------- markdown


def fmt(value: float | None, digits: int = 3) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def part_markdown(rows: Sequence[dict[str, Any]], part: str) -> str:
    cells = sorted((r for r in rows if r["part"] == part), key=lambda r: r["scale"])
    symbol = "w" if part == "c" else "s"
    body = [
        [
            f"{r['scale']:g}",
            fmt(r["fd"]),
            fmt(r["precision"]),
            fmt(r["recall"]),
            fmt(r["label_accuracy"]),
            fmt(r["wall_seconds"], 0),
        ]
        for r in cells
    ]
    metric = cells[0]["metric"] if cells else "FD"
    return markdown_table(
        [symbol, metric, "precision", "recall", "label accuracy", "seconds"], body
    )


def paper_markdown() -> str:
    body = [
        [
            "yes" if r["conditional"] else "no",
            "—" if r["scale"] is None else f"{r['scale']:g}",
            f"{r['fid']:.2f}",
            f"{r['sfid']:.2f}",
            f"{r['inception']:.2f}",
            f"{r['precision']:.2f}",
            f"{r['recall']:.2f}",
        ]
        for r in PAPER_TABLE4
    ]
    return markdown_table(["conditional", "s", "FID", "sFID", "IS", "precision", "recall"], body)


def render_markdown(report: dict[str, Any]) -> str:
    s, rows = report["settings"], report["rows"]
    quick = " — quick run (smoke test; numbers meaningless)" if s["quick"] else ""
    ckpt = report["checkpoints"]
    goal = report["goal"]
    verdict = "n/a" if goal["passed"] is None else ("PASS" if goal["passed"] else "FAIL")
    shapes = "\n".join(
        f"- {PART_NAMES[c['part']]}: precision rises {c['precision_rises']}, accuracy rises "
        f"{c['accuracy_rises']}, recall falls {c['recall_falls']}, FD minimum inside the sweep "
        f"{c['fd_u_shaped']}"
        for c in report["shape"]
    )
    checked = "" if PAPER_CHECKED else " (quoted from memory: check against the paper)"
    parts = [
        f"# Classifier guidance and classifier-free guidance on MNIST{quick}",
        f"Unconditional `{ckpt['unconditional']}`, conditional `{ckpt['conditional']}`, noisy "
        f"classifier `{ckpt['classifier']}`. {s['sampler'].upper()} with {s['steps']} steps, "
        f"η={s['eta']:g}, n={s['n']} per cell (targets 0..9 cycled), batch {s['batch_size']}, "
        f"seed {s['seed']} (common x_T across cells). Label accuracy is judged by the clean "
        "feature CNN (weights/mnist_cnn.safetensors), never by the guiding classifier.",
        "## Goal",
        f"- {verdict}: {goal.get('goal', '')} — {goal['detail']}",
        "## Shape (the paper's: precision and accuracy rise, recall falls, FD U-shaped)",
        shapes,
        f"## {PART_NAMES['a']}",
        part_markdown(rows, "a"),
        f"## {PART_NAMES['b']}",
        part_markdown(rows, "b"),
        f"## {PART_NAMES['c']}",
        part_markdown(rows, "c"),
        f"## The paper: Dhariwal & Nichol 2021, Table 4, ImageNet 256×256{checked}",
        paper_markdown(),
        "## Figures",
        f"- `{report['figures']['metrics']}`: the four metrics against the scale.\n"
        f"- `{report['figures']['samples']}`: the first images of every cell (targets 0..9).",
        "## Cost",
        f"Rates measured before the run: U-Net {report['rates']['unet']:.0f} images/s, classifier "
        f"gradient {report['rates']['classifier']:.0f} images/s; predicted "
        f"{report['predicted_seconds'] / 60:.1f} min, actual {report['total_seconds'] / 60:.1f} "
        f"min. {report['machine']['cpu_model']}, torch threads "
        f"{report['machine']['torch_threads']}. Rerun: `{report['command']}`.",
    ]
    return "\n\n".join(parts)


# ----------------------------------------------------------------------------- main


def parse_scales(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} must be numbers separated by commas") from None
    if not values or any(not math.isfinite(v) or v < 0 for v in values):
        raise argparse.ArgumentTypeError(f"{text!r} must be finite numbers >= 0")
    return values


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--unconditional", type=Path, default=DEFAULT_UNCONDITIONAL)
    parser.add_argument("--conditional", type=Path, default=DEFAULT_CONDITIONAL)
    parser.add_argument("--classifier", type=Path, default=DEFAULT_CLASSIFIER)
    parser.add_argument("--n", type=int, help=f"samples per cell ({Settings.n})")
    parser.add_argument("--steps", type=int, help=f"sampling steps S ({Settings.steps})")
    parser.add_argument("--sampler", choices=("ddim", "ddpm"), default=Settings.sampler)
    parser.add_argument("--eta", type=float, default=Settings.eta, help="DDIM η")
    parser.add_argument(
        "--batch-size", type=int, help=f"images sampled at once ({Settings.batch_size})"
    )
    parser.add_argument("--seed", type=int, default=Settings.seed)
    parser.add_argument(
        "--scales",
        type=parse_scales,
        default=CLASSIFIER_SCALES,
        help="classifier scales s of (a), (b)",
    )
    parser.add_argument(
        "--guidance-scales", type=parse_scales, default=GUIDANCE_SCALES, help="CFG weights w of (c)"
    )
    parser.add_argument("--bf16", action="store_true", help="U-Net under bf16 autocast")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--quick", action="store_true", help="smoke test: n=20, S=2")
    parser.add_argument("--plan-only", action="store_true", help="print the plan and stop")
    parser.add_argument("--out-dir", type=Path, default=RESULTS_DIR)
    return parser.parse_args(argv)


def make_settings(args: argparse.Namespace) -> Settings:
    base = Settings(**QUICK) if args.quick else Settings()  # type: ignore[arg-type]
    return dataclasses.replace(
        base,
        n=args.n or base.n,
        steps=args.steps or base.steps,
        batch_size=args.batch_size or base.batch_size,
        sampler=args.sampler,
        eta=args.eta,
        seed=args.seed,
        classifier_scales=args.scales,
        guidance_scales=args.guidance_scales,
        bf16=args.bf16,
    )


def command_line(args: argparse.Namespace, settings: Settings) -> str:
    parts = [
        "python benchmarks/guidance_table.py",
        f"--unconditional {args.unconditional}",
        f"--conditional {args.conditional}",
        f"--classifier {args.classifier}",
        f"--n {settings.n} --steps {settings.steps} --sampler {settings.sampler} --eta {settings.eta:g}",
        f"--batch-size {settings.batch_size} --seed {settings.seed}",
        "--scales " + ",".join(f"{s:g}" for s in settings.classifier_scales),
        "--guidance-scales " + ",".join(f"{w:g}" for w in settings.guidance_scales),
    ]
    parts += [flag for flag, on in (("--bf16", settings.bf16), ("--quick", settings.quick)) if on]
    return " ".join(parts)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    settings = make_settings(args)
    try:
        unconditional, conditional, classifier = load_models(args)
    except DifflabError as error:
        print(f"error: {error}")
        return 1
    rates = measure_rates(unconditional, classifier, min(settings.batch_size, settings.n))
    cells = plan_cells(settings)
    predicted = sum(cell.cost(settings, rates) for cell in cells)
    print(
        f"{len(cells)} cells × n={settings.n}, {settings.sampler} S={settings.steps}: U-Net "
        f"{rates.unet:.0f} images/s, classifier gradient {rates.classifier:.0f} images/s on "
        f"{torch.get_num_threads()} thread(s); predicted {predicted / 60:.1f} min",
        flush=True,
    )
    if args.plan_only:
        return 0
    data = parse_data(unconditional.meta["data"]["name"])
    data_config = unconditional.meta.get("experiment", {}).get("data", {})
    reference = reference_stats(
        data,
        split="test",
        image_size=data_config.get("image_size"),
        pad_to_32=bool(data_config.get("pad_to_32", False)),
        data_dir=data_config.get("data_dir"),
    )
    models = {"a": unconditional, "b": conditional, "c": conditional}
    rows, samples = [], {}
    done = 0.0
    for index, cell in enumerate(cells, 1):
        row, first = run_cell(cell, models[cell.part], classifier, reference, settings)
        rows.append(row)
        samples[cell.label] = first
        done += cell.cost(settings, rates)
        elapsed = time.perf_counter() - start
        print(
            f"[{index:>2}/{len(cells)}] {cell.label}: {row['metric']} {row['fd']:.3f}, P "
            f"{fmt(row['precision'])}, R {fmt(row['recall'])}, accuracy "
            f"{fmt(row['label_accuracy'])} ({row['wall_seconds']:.1f} s) | elapsed "
            f"{elapsed / 60:.1f} min, estimated total {elapsed * predicted / done / 60:.1f} min",
            flush=True,
        )
    suffix = "_quick" if settings.quick else ""
    out_dir: Path = args.out_dir
    metric = rows[0]["metric"]
    figures = {
        "metrics": metrics_figure(rows, metric, out_dir / f"{NAME}{suffix}.png").name,
        "samples": samples_figure(samples, out_dir / f"{NAME}{suffix}_samples.png").name,
    }
    report = {
        "name": NAME + suffix,
        "command": command_line(args, settings),
        "settings": dataclasses.asdict(settings),
        "checkpoints": {
            "unconditional": str(args.unconditional),
            "conditional": str(args.conditional),
            "classifier": str(args.classifier),
            "steps": {
                "unconditional": unconditional.meta.get("step"),
                "conditional": conditional.meta.get("step"),
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
        "figures": figures,
        "rates": dataclasses.asdict(rates),
        "predicted_seconds": predicted,
        "total_seconds": time.perf_counter() - start,
        "machine": machine_info(),
    }
    for path in (
        write_json(out_dir / f"{NAME}{suffix}.json", report),
        write_text(out_dir / f"{NAME}{suffix}.md", render_markdown(report)),
    ):
        print(f"wrote {path}")
    for name in figures.values():
        print(f"wrote {out_dir / name}")
    goal = report["goal"]
    print(f"goal: {goal['passed']} — {goal['detail']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
