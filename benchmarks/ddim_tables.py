"""The DDIM paper's Tables 1 and 2 and Figures 5, 6 reproduced in shape on MNIST (CPU).

Song, Meng & Ermon, "Denoising Diffusion Implicit Models" (ICLR 2021):

* **Table 1 shape**: FD-MNIST (with precision/recall, k = 3) of one checkpoint sampled with
  S ∈ {10, 20, 50, 100, 1000} steps × η ∈ {0, 0.2, 0.5, 1} and σ̂ (the larger DDPM variance),
  uniform spacing, ``--n`` samples per cell (the S = 1000 column ``--n-1000``; ``--skip-1000-eta``
  keeps only η = 0 and η = 1 there), each cell ``evaluate_pipeline`` of the loaded pipeline.
  Every cell uses seed 0, so all cells start from the same x_T per batch (common random
  numbers). The standard error of one cell comes from ``--seeds`` seeds of S = 50, η = 0. The
  paper's CIFAR-10 FIDs are printed beside ours (other data and features: compare shapes).
* **Table 2 shape**: per-dimension MSE of DDIM inversion (x0 → x_T with S steps) followed by
  generation (x_T → x0, same S) on the first ``--n-inversion`` MNIST test digits, for
  S ∈ {10, 20, 50, 100, 200, 500, 1000}, on the paper's [0, 1] scale ([-1, 1] MSE / 4; "scaled
  to [0, 1]", Sec. 5.4); the [-1, 1] MSE is in the JSON too.
* **Figures**: an interpolation strip (slerp between two x_T, 10 points, S = 50), the
  consistency figure (the same x_T decoded with each S, η = 0) and FD vs S per η / σ̂.

Goals, as pass/fail lines with their numbers: (1) η = 0 at S = 20 reaches FD ≤ 1.3× that of
S = 1000, η = 1 (FD is biased upwards at small n, so when ``--n-1000`` differs from ``--n`` the
S = 20, η = 0 cell is run again with ``--n-1000`` samples). (2) "σ̂ degrades sharply at small S":
at S = 10 σ̂ is the worst row and its FD is ≥ 3× that of η = 1 (paper: 8.9). (3) Table 2 at or
below the paper's values.

``--bf16`` runs the U-Net under bf16 autocast for Table 1 and the figures; Table 2 stays fp32
(its errors go down to 1e-4, below bf16's resolution); the feature CNN and FD are always fp32.
Before running, the script times one batch of the U-Net and prints the plan;
``--time-budget-min M`` scales the n's by one factor to fit M minutes; ``--plan-only`` stops
there. Writes ``ddim_tables.{json,md}``, ``ddim_fd_vs_steps.png``, ``ddim_interpolation.png``
and ``ddim_consistency.png``; ``--quick`` (S ∈ {2, 5}, a few samples) adds ``_quick``.

A subset of the cells: ``--steps 20,1000`` (Table 1's S; Table 2 keeps its own), ``--etas
0,1`` (Table 1's rows, from ``0,0.2,0.5,1,sigma_hat``), ``--n-inversion 0`` (no Table 2),
``--etas-1000 1`` (the rows run at the longest S), ``--seeds 1`` (no standard-error cell),
``--no-figures``, and ``--name NAME`` (outputs
``NAME.{json,md}`` and ``NAME_*.png``, so a subset does not overwrite the full tables). Rows not
run are left out of the tables; a goal whose cells were not run reads "n/a ... not run".

    python benchmarks/ddim_tables.py --checkpoint weights/mnist_ddim.safetensors   # make bench-ddim
    python benchmarks/ddim_tables.py --quick --out-dir /tmp/ddim
    make bench-ddim-headline   # goal (1) only, on weights/mnist_fast, as ddim_headline.*
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

import common as bench
from difflab.data import load_dataset
from difflab.diffusion import Conditioning
from difflab.errors import DifflabError
from difflab.io.checkpoint import load_checkpoint_meta
from difflab.pipelines import DiffusionPipeline, load_pipeline

NAME = "ddim_tables"
DEFAULT_CHECKPOINT = Path("weights/mnist_ddim.safetensors")
STEPS = (10, 20, 50, 100, 1000)
INVERSION_STEPS = (10, 20, 50, 100, 200, 500, 1000)
QUICK_STEPS = (2, 5)
BATCH_SIZE = 250
SE_STEPS = 50  # the S of the cell (η = 0) whose seed-to-seed spread gives the standard error
GOAL_STEPS, GOAL_RATIO = 20, 1.3  # η = 0 at S = 20 reaches FD <= 1.3x that of S = T, η = 1
SIGMA_HAT_FACTOR = 3.0  # "σ̂ degrades sharply": FD(σ̂, S=10) >= 3x FD(η=1, S=10)
TABLE2_GOAL = "Table 2 reconstruction MSE ([0,1] scale) at or below the paper's CIFAR-10 values"
INTERPOLATION_POINTS = 10
INTERPOLATION_PAIRS = ((1, 2), (3, 4), (5, 6))  # seed pairs; one strip each
CONSISTENCY_IMAGES, CONSISTENCY_SEED = 8, 7
CELL_OVERHEAD_S = 0.7  # per FD cell: feature CNN + reference statistics (measured ≈ 0.6 s)
MIN_FD_N, MIN_INVERSION_N, MNIST_TEST_SIZE = 150, 10, 10_000
FEATURE_DIM = 128  # FD-MNIST features; fewer samples give a rank-deficient covariance
FD_FLOOR_FILE = bench.RESULTS_DIR / "fd_floor.json"

# DDIM paper, Table 1, CIFAR10 (32x32) FID, S = 10, 20, 50, 100, 1000 (checked against the
# ar5iv rendering of arXiv:2010.02502).
PAPER_TABLE1: dict[str, dict[int, float]] = {
    "η=0.0": dict(zip(STEPS, (13.36, 6.84, 4.67, 4.16, 4.04), strict=True)),
    "η=0.2": dict(zip(STEPS, (14.04, 7.11, 4.77, 4.25, 4.09), strict=True)),
    "η=0.5": dict(zip(STEPS, (16.66, 8.35, 5.25, 4.46, 4.29), strict=True)),
    "η=1.0": dict(zip(STEPS, (41.07, 18.36, 8.01, 5.78, 4.73), strict=True)),
    "σ̂": dict(zip(STEPS, (367.43, 133.37, 32.72, 9.99, 3.17), strict=True)),
}
# DDIM paper, Table 2: CIFAR-10 test-set reconstruction MSE per dimension, scaled to [0, 1].
PAPER_TABLE2: dict[int, float] = dict(
    zip(INVERSION_STEPS, (0.014, 0.0065, 0.0023, 0.0009, 0.0004, 0.0001, 0.0001), strict=True)
)


# ----------------------------------------------------------------------------- the plan


@dataclass(frozen=True)
class Variant:
    """One row of Table 1: the DDIM noise level η, or the paper's σ̂ (η = 1 mean, DDPM variance)."""

    label: str
    eta: float
    sigma_hat: bool = False


VARIANTS = (
    *(Variant(f"η={eta:.1f}", eta) for eta in (0.0, 0.2, 0.5, 1.0)),
    Variant("σ̂", 1.0, sigma_hat=True),
)
FULL_CHAIN_VARIANTS = ("η=0.0", "η=1.0")  # what --skip-1000-eta keeps at S = 1000 (--etas-1000 0,1)
VARIANT_LABELS = tuple(v.label for v in VARIANTS)
ETA_NAMES = {"0": "η=0.0", "0.2": "η=0.2", "0.5": "η=0.5", "1": "η=1.0", "sigma_hat": "σ̂"}
ETA_NAME_OF = {label: name for name, label in ETA_NAMES.items()}  # row label -> --etas name


@dataclass(frozen=True)
class Settings:
    """How much work one run does (see ``--help``)."""

    n: int = 500
    n_full: int = 200
    seeds: int = 3
    n_inversion: int = 100
    steps: tuple[int, ...] = STEPS
    inversion_steps: tuple[int, ...] = INVERSION_STEPS
    interpolation_steps: int = 50
    batch_size: int = BATCH_SIZE
    bf16: bool = False
    quick: bool = False
    variants: tuple[str, ...] = VARIANT_LABELS  # the Table 1 rows run (--etas)
    full_variants: tuple[str, ...] | None = None  # those run at the longest S (--etas-1000)
    figures: bool = True  # the interpolation and consistency strips and FD vs S (--no-figures)

    @property
    def full_steps(self) -> int:
        """The longest chain of Table 1 (S = 1000 = T for the real model)."""
        return max(self.steps)

    @property
    def se_steps(self) -> int:
        """S of the standard-error cell: 50, or the middle S when 50 is not in the grid."""
        return SE_STEPS if SE_STEPS in self.steps else sorted(self.steps)[len(self.steps) // 2]


QUICK = Settings(n=8, n_full=8, seeds=2, n_inversion=4, steps=QUICK_STEPS, batch_size=8)
QUICK = dataclasses.replace(QUICK, inversion_steps=QUICK_STEPS, interpolation_steps=2, quick=True)


@dataclass(frozen=True)
class Rates:
    """Image-network evaluations per second: of the sampling U-Net and of fp32 (inversion)."""

    sampling: float
    inversion: float


@dataclass(frozen=True)
class Cell:
    """One FD evaluation: ``n`` samples with ``steps`` steps of ``variant`` from ``seed``."""

    part: str
    steps: int
    variant: Variant
    n: int
    seed: int = 0  # every Table 1 cell: seed 0, the same x_T per batch


def fd_cells(settings: Settings) -> list[Cell]:
    """Table 1 (the full-chain column at ``n_full``), the extra seeds of the standard-error
    cell, and η = 0 at S = 20 again with the full column's n (the first goal at one n); the
    last two only when the η = 0 row is run."""
    s, full = settings, settings.full_steps
    table1 = [
        Cell("table1", steps, v, s.n_full if steps == full else s.n)
        for steps in s.steps
        for v in VARIANTS
        if v.label in s.variants
        and not (steps == full and s.full_variants is not None and v.label not in s.full_variants)
    ]
    se_n = s.n_full if s.se_steps == full else s.n
    seeds = range(1, s.seeds) if VARIANTS[0].label in s.variants else ()  # η = 0 rows only
    se = [Cell("standard_error", s.se_steps, VARIANTS[0], se_n, seed) for seed in seeds]
    matched = s.n_full != s.n and GOAL_STEPS in s.steps and VARIANTS[0].label in s.variants
    goal = [Cell("goal_matched_n", GOAL_STEPS, VARIANTS[0], s.n_full)] if matched else []
    return table1 + se + goal


def tasks(
    pipeline: DiffusionPipeline, settings: Settings, rates: Rates, out_dir: Path, name: str = NAME
) -> list[bench.Task]:
    """Every piece of work of a run, with its cost and predicted seconds.

    Table 1 and the figures sample in bf16 with ``--bf16``; Table 2 always runs in fp32 (errors
    of 1e-4 are below bf16's resolution). Figures are written NAME-prefixed (:func:`figure_name`).
    """
    sampler = dataclasses.replace(pipeline, precision="bf16" if settings.bf16 else "fp32")
    fp32 = dataclasses.replace(pipeline, precision="fp32")
    out = []
    for cell in fd_cells(settings):
        label = f"S={cell.steps} {cell.variant.label} seed={cell.seed} n={cell.n}"
        cost = cell.n * cell.steps
        seconds = cost / rates.sampling + CELL_OVERHEAD_S
        run = functools.partial(run_cell, sampler, cell, settings.batch_size)
        out.append(bench.Task(cell.part, label, cost, seconds, run, cell_message))
    n = settings.n_inversion
    digits = functools.cache(functools.partial(test_digits, fp32, n))  # loaded once, when needed
    for steps in settings.inversion_steps:
        cost = 2 * steps * n
        run = functools.partial(reconstruction_row, fp32, digits, steps, settings.batch_size)
        label = f"inversion S={steps} n={n}"
        out.append(bench.Task("table2", label, cost, cost / rates.inversion, run, mse_message))
    steps = settings.interpolation_steps
    strips = len(INTERPOLATION_PAIRS) * INTERPOLATION_POINTS
    figures = {
        "interpolation": (interpolation_figure, steps, strips * steps),
        "consistency": (
            consistency_figure,
            settings.steps,
            CONSISTENCY_IMAGES * sum(settings.steps),
        ),
    }
    for kind, (make, arg, cost) in figures.items() if settings.figures else ():
        run = functools.partial(
            make, sampler, arg, out_dir / figure_name(kind, settings.quick, name)
        )
        out.append(bench.Task("figures", kind, cost, cost / rates.sampling, run))
    return out


def measure_rates(pipeline: DiffusionPipeline, settings: Settings) -> Rates:
    """The U-Net's rate in the sampling precision and in fp32, at the run's batch size."""
    size = settings.batch_size
    cond = conditioning(pipeline, size)
    fp32 = bench.denoiser_rate(dataclasses.replace(pipeline, precision="fp32"), size, cond)
    if not settings.bf16:
        return Rates(fp32, fp32)
    bf16 = dataclasses.replace(pipeline, precision="bf16")
    return Rates(bench.denoiser_rate(bf16, size, cond), fp32)


def fit_to_budget(
    pipeline: DiffusionPipeline, settings: Settings, rates: Rates, budget_s: float
) -> tuple[Settings, float]:
    """``settings`` with n, n_full and n_inversion scaled by one factor to fit ``budget_s``.

    The figures and the per-cell overhead are fixed costs. No n goes below ``MIN_FD_N`` (FD of
    fewer samples than features is degenerate), so a small budget can be exceeded.
    """
    planned = tasks(pipeline, settings, rates, Path())
    fixed = sum(t.seconds if t.part == "figures" else 0.0 for t in planned)
    fixed += CELL_OVERHEAD_S * len(fd_cells(settings))
    scale = max((budget_s - fixed) / (sum(t.seconds for t in planned) - fixed), 0.0)

    def scaled(value: int, low: int) -> int:
        return max(low, round(value * scale / 10) * 10)

    low = 2 if settings.quick else MIN_FD_N
    fitted = dataclasses.replace(
        settings,
        n=scaled(settings.n, low),
        n_full=scaled(settings.n_full, low),
        n_inversion=min(scaled(settings.n_inversion, MIN_INVERSION_N), MNIST_TEST_SIZE)
        if settings.n_inversion
        else 0,
    )
    return fitted, scale


# ----------------------------------------------------------------------------- the work


def conditioning(pipeline: DiffusionPipeline, n: int) -> Conditioning:
    """Classes 0, 1, ..., K-1, 0, ... for a class-conditional model; nothing otherwise."""
    k = pipeline.num_classes
    return Conditioning(labels=torch.arange(n) % k) if k else Conditioning()


def run_cell(pipeline: DiffusionPipeline, cell: Cell, batch_size: int) -> dict[str, Any]:
    """FD-MNIST, precision and recall of one cell (``evaluate_pipeline``)."""
    v = cell.variant
    row = {"steps": cell.steps, "variant": v.label, "eta": v.eta, "sigma_hat": v.sigma_hat}
    row |= {"n": cell.n, "seed": cell.seed}
    options = dict(n=cell.n, steps=cell.steps, spacing="uniform", eta=v.eta, sigma_hat=v.sigma_hat)
    return row | bench.score(pipeline, **options, seed=cell.seed, batch_size=batch_size)


def cell_message(row: dict[str, Any]) -> str:
    return f"FD {row['fd']:.3f}, P {bench.fmt(row['precision'])}, R {bench.fmt(row['recall'])}"


def mse_message(row: dict[str, Any]) -> str:
    return f"MSE[0,1] {row['mse_unit']:.2e}"


def test_digits(pipeline: DiffusionPipeline, n: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The first ``n`` test images of the model's data, prepared as in training, and their
    labels (None for an unconditional model)."""
    data = pipeline.description.data_config
    test = load_dataset(
        pipeline.description.dataset,
        split="test",
        limit=n,
        image_size=data.get("image_size"),
        pad_to_32=bool(data.get("pad_to_32", False)),
        data_dir=data.get("data_dir"),
    )
    return test.images, (test.labels if pipeline.num_classes else None)


def reconstruction_row(
    pipeline: DiffusionPipeline,
    digits: Callable[[], tuple[torch.Tensor, torch.Tensor | None]],
    steps: int,
    batch_size: int,
) -> dict[str, Any]:
    """Per-dimension MSE of invert → regenerate with ``steps`` DDIM steps (η = 0, no clamping)
    of the images (and labels) ``digits()`` returns."""
    images, labels = digits()
    total = 0.0
    for first in range(0, len(images), batch_size):
        x0 = images[first : first + batch_size]
        y = None if labels is None else labels[first : first + batch_size]
        cond = Conditioning(labels=y)
        x_T = pipeline.invert(x0, steps, conditioning=cond)
        x0_hat = pipeline.reconstruct(x_T, steps, conditioning=cond)
        total += float(((x0_hat.float() - x0) ** 2).sum())
    mse, paper = total / images.numel(), PAPER_TABLE2.get(steps)
    row = {"steps": steps, "n": len(images), "mse_unit": mse / 4, "mse_pm1": mse}
    passed = None if paper is None else row["mse_unit"] <= paper
    return row | {"paper_cifar10": paper, "passed": passed}


def figure_name(kind: str, quick: bool, name: str = NAME) -> str:
    """``ddim_{kind}.png`` for the default ``--name`` (``ddim_tables``), ``{name}_{kind}.png``
    for another; ``_quick`` before ``.png`` for a quick run."""
    prefix = "ddim" if name == NAME else name
    return f"{prefix}_{bench.stem_of(kind, quick)}.png"


def interpolation_figure(pipeline: DiffusionPipeline, steps: int, path: Path) -> dict[str, Any]:
    """Slerp strips between pairs of x_T (η = 0), one row per pair (class 0 if conditional)."""
    cond, points, pairs = conditioning(pipeline, 1), INTERPOLATION_POINTS, INTERPOLATION_PAIRS
    rows = [pipeline.interpolate(a, b, points, steps, conditioning=cond) for a, b in pairs]
    title = f"DDIM interpolation: slerp between two x_T, {points} points, S={steps}, η=0"
    bench.image_rows_figure(rows, [f"seeds {a}→{b}" for a, b in pairs], path, title)
    return {"path": path.name, "pairs": pairs, "points": points, "steps": steps}


def consistency_figure(
    pipeline: DiffusionPipeline, steps: Sequence[int], path: Path
) -> dict[str, Any]:
    """The same x_T decoded with every S (η = 0), one row per S; MSE of each row to the longest."""
    n, seed = CONSISTENCY_IMAGES, CONSISTENCY_SEED
    cond = conditioning(pipeline, n)
    rows = [
        pipeline.generate(n, cond, seed=seed, steps=s, spacing="uniform", eta=0.0).clamp(-1, 1)
        for s in steps
    ]
    mse = [float(((r - rows[-1]) ** 2).mean()) / 4 for r in rows]
    title = f"DDIM consistency: the same {n} x_T, η=0, each row another S"
    bench.image_rows_figure(rows, [f"S={s}" for s in steps], path, title)
    distances = {str(s): v for s, v in zip(steps, mse, strict=True)}
    return {"path": path.name, "seed": seed, "images": n, "mse_unit_to_longest": distances}


def standard_error(rows: Sequence[dict[str, Any]], steps: int) -> dict[str, Any] | None:
    """FD mean ± std over the seeds of the SE cell (None with fewer than two seeds)."""
    cells = [r for r in rows if r["steps"] == steps and r["eta"] == 0 and not r["sigma_hat"]]
    if len(cells) < 2:
        return None
    values = [r["fd"] for r in cells]
    std = statistics.stdev(values)
    return {
        "steps": steps,
        "variant": "η=0.0",
        "n": cells[0]["n"],
        "seeds": len(values),
        "values": values,
        "mean": statistics.fmean(values),
        "std": std,
        "sem": std / math.sqrt(len(values)),
    }


def fd_lookup(rows: Sequence[dict[str, Any]]) -> dict[tuple[str, int], float]:
    """``{(variant, S): FD}`` of the seed-0 Table 1 cells."""
    return {(r["variant"], r["steps"]): r["fd"] for r in rows if r["seed"] == 0}


def goal_checks(
    rows: Sequence[dict[str, Any]], matched: Sequence[dict[str, Any]], full_steps: int
) -> list[dict[str, Any]]:
    """The two Table 1 goals as pass/fail records with their numbers (see the module doc)."""
    fd = fd_lookup(rows)
    ddim = matched[0]["fd"] if matched else fd.get(("η=0.0", GOAL_STEPS))
    ddpm = fd.get(("η=1.0", full_steps))
    text = f"η=0, S={GOAL_STEPS} reaches FD ≤ {GOAL_RATIO}× that of {full_steps}-step η=1"
    text += f" (both at n={matched[0]['n']})" if matched else ""
    missing = f"not run (needs η=0 at S={GOAL_STEPS} and η=1 at S={full_steps})"
    checks = [{"goal": text, "passed": None, "detail": missing}]
    if ddim is not None and ddpm is not None:
        ratio = ddim / ddpm
        paper = PAPER_TABLE1["η=0.0"][GOAL_STEPS] / PAPER_TABLE1["η=1.0"][1000]
        checks[0] |= {
            "passed": ratio <= GOAL_RATIO,
            "ratio": ratio,
            "detail": f"FD {ddim:.3f} vs {ddpm:.3f}: ratio {ratio:.2f} (limit {GOAL_RATIO}; "
            f"paper CIFAR-10: {paper:.2f})",
        }
    smallest = min(s for _, s in fd)
    sig, eta1 = fd.get(("σ̂", smallest)), fd.get(("η=1.0", smallest))
    text = (
        f"σ̂ degrades sharply at small S: at S={smallest} σ̂ is the worst row and its FD ≥ "
        f"{SIGMA_HAT_FACTOR:g}× that of η=1"
    )
    missing = f"not run (needs σ̂ and η=1 at S={smallest})"
    checks.append({"goal": text, "passed": None, "detail": missing})
    if sig is not None and eta1 is not None:
        worst = max(v for (_, s), v in fd.items() if s == smallest)
        ratio = sig / eta1
        paper = PAPER_TABLE1["σ̂"][10] / PAPER_TABLE1["η=1.0"][10]
        trend = ", ".join(f"S={s}: {v:.3f}" for (name, s), v in sorted(fd.items()) if name == "σ̂")
        checks[1] |= {
            "passed": sig >= worst and ratio >= SIGMA_HAT_FACTOR,
            "ratio": ratio,
            "detail": f"FD σ̂ {sig:.3f} vs η=1 {eta1:.3f}: ratio {ratio:.2f} (paper CIFAR-10 "
            f"at S=10: {paper:.1f}); σ̂ by S: {trend}",
        }
    return checks


def fd_floor(n: int) -> dict[str, Any] | None:
    """The FD-MNIST floor (real training digits vs the test set) at the n nearest ``n``."""
    if not FD_FLOOR_FILE.is_file():
        return None
    row = min(bench.read_json(FD_FLOOR_FILE)["rows"], key=lambda r: abs(math.log(r["n"] / n)))
    return {"n": row["n"], **{k: row["fd_vs_test_full"][k] for k in ("mean", "std")}}


def measure(
    pipeline: DiffusionPipeline, settings: Settings, planned: list[bench.Task], name: str = NAME
) -> dict[str, Any]:
    """Run the plan; the report without the run's command, checkpoint path and plan."""
    rows = bench.run_tasks(planned)
    table1, se_rows = rows["table1"], rows.get("standard_error", [])
    goal_rows = rows.get("goal_matched_n", [])
    meta = load_checkpoint_meta(pipeline.description.source)
    figures = None
    if settings.figures:
        interpolation, consistency = rows["figures"]
        figures = {
            "fd_vs_steps": figure_name("fd_vs_steps", settings.quick, name),
            "interpolation": interpolation,
            "consistency": consistency,
        }
    return {
        "name": bench.stem_of(name, settings.quick),
        "metric": table1[0]["metric"],
        "settings": {**dataclasses.asdict(settings), "full_steps": settings.full_steps},
        "checkpoint": {
            "step": meta.get("step"),
            "preset": meta.get("experiment", {}).get("model", {}).get("preset"),
            "num_timesteps": pipeline.schedule.num_timesteps,
            "data": meta.get("data"),
        },
        "table1": table1,
        "standard_error_cells": se_rows,
        "standard_error": standard_error([*table1, *se_rows], settings.se_steps),
        "goal_matched_n_cells": goal_rows,
        "goals": goal_checks(table1, goal_rows, settings.full_steps),
        "fd_floor": fd_floor(settings.n),
        "table2": rows.get("table2", []),
        "figures": figures,
        "paper": {
            "source": "Song, Meng & Ermon, DDIM (ICLR 2021), Tables 1 and 2, CIFAR-10",
            "table1_fid": {k: {str(s): v for s, v in d.items()} for k, d in PAPER_TABLE1.items()},
            "table2_mse_unit": {str(s): v for s, v in PAPER_TABLE2.items()},
        },
        "machine": bench.machine_info(),
    }


# ----------------------------------------------------------------------------- report


def seed0_cells(report: dict[str, Any]) -> dict[tuple[str, int], dict[str, Any]]:
    """``{(variant, S): row}`` of the seed-0 Table 1 cells."""
    return {(r["variant"], r["steps"]): r for r in report["table1"] if r["seed"] == 0}


def variant_table(report: dict[str, Any], corner: str, cell: Any) -> str:
    """A variant × S table of the rows run (all but those ``--etas`` left out); ``cell(label,
    S, row or None)`` gives each entry."""
    rows, steps = seed0_cells(report), report["settings"]["steps"]
    run = report["settings"].get("variants", VARIANT_LABELS)
    body = [
        [label, *(cell(label, s, rows.get((label, s))) for s in steps)]
        for label in report["paper"]["table1_fid"]
        if label in run
    ]
    return bench.markdown_table([corner, *(f"S={s}" for s in steps)], body)


def table1_markdown(report: dict[str, Any]) -> str:
    """FD per variant × S, each cell "ours (paper CIFAR-10 FID)"."""
    paper = report["paper"]["table1_fid"]

    def cell(label: str, s: int, row: dict[str, Any] | None) -> str:
        ours = bench.fmt(row and row["fd"])
        theirs = paper[label].get(str(s))
        return ours if theirs is None else f"{ours} ({theirs:g})"

    return variant_table(report, "", cell)


def precision_recall_markdown(report: dict[str, Any]) -> str:
    """Precision / recall per variant × S (seed-0 cells)."""
    return variant_table(
        report,
        "P / R",
        lambda _, __, r: (
            "—" if r is None else f"{bench.fmt(r['precision'])} / {bench.fmt(r['recall'])}"
        ),
    )


def table2_section(rows: Sequence[dict[str, Any]]) -> str:
    """What Table 2 measures and its table, or one line when it was not run."""
    if not rows:
        return "Not run (--n-inversion 0)."
    return bench.sections(
        "Per-dimension MSE between test digits and their DDIM reconstruction (invert with S "
        "steps, regenerate with the same S, no clamping). Our images are in [-1, 1]; the MSE is "
        "reported on the [0, 1] scale (= [-1, 1] MSE / 4) because the paper states its CIFAR-10 "
        'numbers are "scaled to [0, 1]" (Sec. 5.4, Table 2, rounded to 1e-4).',
        table2_markdown(rows),
    )


def table2_markdown(rows: Sequence[dict[str, Any]]) -> str:
    """Reconstruction MSE per S beside the paper's CIFAR-10 values."""
    headers = ["", "MSE, [0,1] scale", "paper CIFAR-10", "≤ paper", "MSE, [-1,1]", "seconds"]
    body = [
        [
            f"S={r['steps']}",
            f"{r['mse_unit']:.2e}",
            "—" if r["paper_cifar10"] is None else f"{r['paper_cifar10']:g}",
            bench.passfail(r["passed"]),
            f"{r['mse_pm1']:.2e}",
            f"{r['wall_seconds']:.0f}",
        ]
        for r in rows
    ]
    return bench.markdown_table(headers, body)


def summary_lines(report: dict[str, Any]) -> list[str]:
    """Goal lines, the standard-error line and the FD floor, as plain sentences."""
    lines = [f"{bench.passfail(g['passed'])}: {g['goal']} — {g['detail']}" for g in report["goals"]]
    table2 = [r for r in report["table2"] if r["passed"] is not None]
    if table2:
        failed = [f"S={r['steps']}" for r in table2 if not r["passed"]]
        detail = "above the paper at " + ", ".join(failed) if failed else "all S"
        lines.append(f"{bench.passfail(not failed)}: {TABLE2_GOAL} — {detail}")
    elif not report["table2"]:
        lines.append(f"n/a: {TABLE2_GOAL} — not run (--n-inversion 0)")
    se, floor, s = report["standard_error"], report["fd_floor"], report["settings"]
    if se is not None:
        lines.append(
            f"Standard error: FD at S={se['steps']}, {se['variant']}, n={se['n']} over "
            f"{se['seeds']} seeds: {se['mean']:.3f} ± {se['std']:.3f} (std; SE of the mean "
            f"{se['sem']:.3f})"
        )
    if floor is not None:
        lines.append(
            f"FD floor (real MNIST training digits vs the test set, fd_floor.json) at "
            f"n={floor['n']}: {floor['mean']:.3f} ± {floor['std']:.3f}; Table 1 uses "
            f"n={s['n']} (S={s['full_steps']}: n={s['n_full']}); FD is biased upwards at small n."
        )
    return lines


def figures_markdown(report: dict[str, Any]) -> str:
    """One bullet per PNG."""
    figures, metric = report["figures"], report["metric"]
    if figures is None:
        return "Not drawn (--no-figures)."
    interpolation, consistency = figures["interpolation"], figures["consistency"]
    distances = ", ".join(f"S={k}: {v:.3g}" for k, v in consistency["mse_unit_to_longest"].items())
    return "\n".join(
        [
            f"- `{figures['fd_vs_steps']}`: {metric} vs S per η / σ̂ (left) and the paper's "
            "CIFAR-10 FID (right).",
            f"- `{interpolation['path']}`: slerp between two x_T (one row per seed pair), "
            f"{interpolation.get('points', INTERPOLATION_POINTS)} points, "
            f"S={interpolation.get('steps', 50)}, η=0.",
            f"- `{consistency['path']}`: the same {consistency['images']} x_T decoded with each "
            f"S (η=0), one row per S. MSE ([0,1] scale) of each row to the longest chain: "
            f"{distances}.",
        ]
    )


def cost_markdown(report: dict[str, Any]) -> str:
    """Wall time per Table 1 cell and the run's totals, machine and plan."""
    s, plan = report["settings"], report["plan"]
    table = variant_table(
        report, "seconds", lambda _, __, r: "—" if r is None else bench.fmt(r["wall_seconds"], 0)
    )
    bf16 = f" in bf16, {plan['rate_fp32']:.0f} in fp32" if s["bf16"] else ""
    budget = plan.get("time_budget_min")
    budget = f" `--time-budget-min {budget:g}` scaled n by {plan['scale']:.2f}." if budget else ""
    return bench.sections(
        table,
        f"Measured before the run: {plan['rate']:.0f} image-network evaluations/s{bf16} (one "
        f"batch of {s['batch_size']}); plan {plan['total']:,} evaluations, predicted "
        f"{plan['predicted_seconds'] / 60:.1f} min; actual {report['total_seconds'] / 60:.1f} "
        f"min.{budget}",
        f"{bench.machine_line(report['machine'])} Rerun: `{report['command']}`.",
    )


def render_markdown(report: dict[str, Any]) -> str:
    """The whole report as markdown, from the JSON alone."""
    s, ckpt, metric = report["settings"], report["checkpoint"], report["metric"]
    quick = " — quick run (smoke test; numbers meaningless)" if s["quick"] else ""
    unet = "bf16 autocast (Table 2 in fp32)" if s["bf16"] else "fp32"
    full_rows = s.get("full_variants") or (FULL_CHAIN_VARIANTS if s.get("skip_full_eta") else ())
    only = [label if label == "σ̂" else f"η={ETA_NAME_OF[label]}" for label in full_rows]
    skip = f" (only {' and '.join(only)} there)" if only else ""  # old reports: skip_full_eta
    digits = s["n_inversion"]
    table2 = f"the first {digits} MNIST test digits" if digits else "not run (--n-inversion 0)"
    return bench.sections(
        f"# The DDIM paper's tables on MNIST{quick}",
        f"Checkpoint `{ckpt['path']}` (step {ckpt['step']}, preset {ckpt['preset']}, "
        f"T={ckpt['num_timesteps']}). Sampling: DDIM, uniform spacing, batch {s['batch_size']}, "
        f"U-Net in {unet} (the feature CNN and FD are fp32). Table 1: n={s['n']} samples per "
        f"cell, n={s['n_full']} at S={s['full_steps']}{skip}; seed 0 in every cell (the same "
        f"x_T per batch). Table 2: {table2}.",
        "## Goals",
        [f"- {line}" for line in summary_lines(report)],
        f"## Table 1 shape: {metric} (paper: CIFAR-10 FID, in parentheses)",
        "The paper's numbers are quoted from DDIM Table 1 (CIFAR10 32×32; checked against the "
        "arXiv text). Different data and feature space: compare how each row changes with S, "
        "not the values.",
        table1_markdown(report),
        "Precision / recall (k = 3, against n MNIST test features):",
        precision_recall_markdown(report),
        "## Table 2 shape: reconstruction error of DDIM inversion → generation",
        table2_section(report["table2"]),
        "## Figures",
        figures_markdown(report),
        "## Cost",
        cost_markdown(report),
    )


def figures(report: dict[str, Any], out_dir: Path) -> list[Path]:
    """FD vs S (log x) per η / σ̂: ours on the left (the rows run), the paper's CIFAR-10 on the
    right; nothing with ``--no-figures``."""
    if report["figures"] is None:
        return []
    plt = bench.pyplot()
    fd = fd_lookup(report["table1"])
    fig, (ours, paper) = plt.subplots(1, 2, figsize=(11, 4.2))
    for label, reference in report["paper"]["table1_fid"].items():
        legend = r"$\hat{\sigma}$" if label == "σ̂" else rf"$\eta$={label[2:]}"  # mathtext hat
        points = sorted((s, v) for (name, s), v in fd.items() if name == label)
        if points:
            ours.plot(*zip(*points, strict=True), marker="o", label=legend)
        paper_points = sorted((int(s), v) for s, v in reference.items())
        paper.plot(*zip(*paper_points, strict=True), marker="o", label=legend)
    values = list(fd.values())
    spread = max(values) / max(min(values), 1e-12) if values else 1.0
    metric = report["metric"]
    for ax, title, ylabel, log_y in (
        (ours, f"ours: MNIST, {metric}", metric, spread > 10),
        (paper, "DDIM paper Table 1: CIFAR-10", "FID", True),
    ):
        ax.set_xscale("log")
        ax.set_yscale("log" if log_y else "linear")
        ax.set(xlabel="S (sampling steps)", ylabel=ylabel, title=title)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize="small")
    return [bench.save_figure(fig, out_dir / report["figures"]["fd_vs_steps"])]


# ----------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = bench.bench_parser(__doc__, "S ∈ {2, 5}, n=8, seeds 2, n-inversion 4")
    parser.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT)
    parser.add_argument("--n", type=int, help=f"samples per Table 1 cell ({Settings.n})")
    parser.add_argument("--n-1000", type=int, help=f"samples at S=1000 = T ({Settings.n_full})")
    parser.add_argument(
        "--skip-1000-eta", action="store_true", help="at S=1000 only η=0, η=1 (--etas-1000 0,1)"
    )
    parser.add_argument("--seeds", type=int, help=f"seeds of the SE cell ({Settings.seeds})")
    parser.add_argument("--n-inversion", type=int, help=f"Table 2 digits ({Settings.n_inversion})")
    parser.add_argument("--batch-size", type=int, help=f"images sampled at once ({BATCH_SIZE})")
    parser.add_argument("--bf16", action="store_true", help="U-Net under bf16 autocast")
    parser.add_argument("--time-budget-min", type=float, help="scale n to fit this many minutes")
    parser.add_argument("--plan-only", action="store_true", help="print the plan and stop")
    parser.add_argument("--steps", help="Table 1's S, comma-separated (default: 10,20,50,100,1000)")
    parser.add_argument(
        "--etas", help=f"Table 1's rows, comma-separated from {','.join(ETA_NAMES)}"
    )
    parser.add_argument("--etas-1000", help="the rows run at the longest S (default: --etas)")
    parser.add_argument("--no-figures", action="store_true", help="draw no figure (no PNG)")
    bench.add_name_argument(parser, NAME)
    args = bench.parse(parser, argv)
    for name in ("n", "n_1000", "batch_size"):
        if getattr(args, name) is not None and getattr(args, name) < 2:
            parser.error(f"--{name.replace('_', '-')} must be at least 2")
    if args.n_inversion is not None and (args.n_inversion < 0 or args.n_inversion == 1):
        parser.error("--n-inversion must be 0 (no Table 2) or at least 2")
    if args.seeds is not None and args.seeds < 1:
        parser.error("--seeds must be at least 1")
    try:
        args.steps = table1_steps(args.steps)
        args.etas = table1_variants(args.etas)
        args.etas_1000 = table1_variants(args.etas_1000)
        if args.skip_1000_eta and args.etas_1000 is None:
            args.etas_1000 = FULL_CHAIN_VARIANTS
    except ValueError as error:
        parser.error(str(error))
    return args


def table1_steps(text: str | None) -> tuple[int, ...] | None:
    """``"20,1000"`` -> ``(20, 1000)`` (sorted, each once); None when not given."""
    if text is None:
        return None
    try:
        steps = sorted({int(part) for part in bench.comma_list(text)})
    except ValueError:
        raise ValueError(f"--steps {text!r}: give whole numbers, e.g. --steps 20,1000") from None
    if not steps or steps[0] < 1:
        raise ValueError(f"--steps {text!r}: give one or more S >= 1, e.g. --steps 20,1000")
    return tuple(steps)


def table1_variants(text: str | None) -> tuple[str, ...] | None:
    """``"0,1,sigma_hat"`` -> the labels of those Table 1 rows, in the table's order; None when
    not given. Numbers match by value (``1.0`` is ``1``)."""
    if text is None:
        return None
    by_value = {float(name): label for name, label in ETA_NAMES.items() if name != "sigma_hat"}
    chosen = set()
    for part in bench.comma_list(text):
        try:
            label = ETA_NAMES["sigma_hat"] if part == "sigma_hat" else by_value.get(float(part))
        except ValueError:
            label = None
        if label is None:
            raise ValueError(f"--etas: {part!r} is not a Table 1 row; use {','.join(ETA_NAMES)}")
        chosen.add(label)
    if not chosen:
        raise ValueError(f"--etas {text!r}: name one or more of {','.join(ETA_NAMES)}")
    return tuple(label for label in VARIANT_LABELS if label in chosen)


def make_settings(args: argparse.Namespace, num_timesteps: int) -> Settings:
    """Settings from the arguments; the quick grid with ``--quick``."""
    given = {"n": args.n, "n_full": args.n_1000, "seeds": args.seeds}
    given |= {"n_inversion": args.n_inversion, "batch_size": args.batch_size}
    given |= {"steps": args.steps, "variants": args.etas, "full_variants": args.etas_1000}
    if args.n_inversion == 0:
        given["inversion_steps"] = ()
    settings = dataclasses.replace(
        QUICK if args.quick else Settings(),
        **{key: value for key, value in given.items() if value is not None},
        bf16=args.bf16,
        figures=not args.no_figures,
    )
    if max(settings.steps + settings.inversion_steps) > num_timesteps:
        raise DifflabError(
            f"the checkpoint has T={num_timesteps} < {max(settings.steps)} steps; use --quick "
            "for a smoke test on a small model."
        )
    return settings


def command_line(args: argparse.Namespace, settings: Settings) -> str:
    """The command that redoes this run with the n it used (a time budget's choice explicit)."""
    s, default = settings, QUICK if settings.quick else Settings()
    flags = {
        f"--steps {','.join(map(str, s.steps))}": s.steps != default.steps,
        f"--etas {','.join(ETA_NAME_OF[v] for v in s.variants)}": s.variants != default.variants,
        f"--etas-1000 {','.join(ETA_NAME_OF[v] for v in s.full_variants or ())}": bool(
            s.full_variants
        ),
        "--no-figures": not s.figures,
        "--bf16": s.bf16,
        "--quick": s.quick,
        f"--batch-size {s.batch_size}": s.batch_size != default.batch_size,
        f"--threads {args.threads}": bool(args.threads),
        f"--name {args.name}": args.name != NAME,
    }
    return " ".join(
        [
            f"python benchmarks/ddim_tables.py --checkpoint {args.checkpoint} --n {s.n}",
            f"--n-1000 {s.n_full} --seeds {s.seeds} --n-inversion {s.n_inversion}",
            *(flag for flag, on in flags.items() if on),
        ]
    )


def plan_run(
    pipeline: DiffusionPipeline, args: argparse.Namespace
) -> tuple[Settings, list[bench.Task], dict[str, Any]]:
    """Settings (fitted to ``--time-budget-min``), the tasks, and the printed plan."""
    settings = make_settings(args, pipeline.schedule.num_timesteps)
    rates = measure_rates(pipeline, settings)
    bf16 = f" (bf16; fp32: {rates.inversion:.0f})" if settings.bf16 else ""
    print(
        f"{args.checkpoint}: T={pipeline.schedule.num_timesteps}; {rates.sampling:.0f} "
        f"image-network evaluations/s{bf16} at batch {settings.batch_size} on "
        f"{torch.get_num_threads()} thread(s)",
        flush=True,
    )
    scale, budget = 1.0, args.time_budget_min
    if budget:
        settings, scale = fit_to_budget(pipeline, settings, rates, budget * 60)
        print(
            f"--time-budget-min {budget:g}: scale {scale:.2f} → n={settings.n}, "
            f"n-1000={settings.n_full}, n-inversion={settings.n_inversion}"
        )
        if min(settings.n, settings.n_full) < 2 * FEATURE_DIM:
            print(f"  note: n < {2 * FEATURE_DIM}: FD is strongly biased upwards at this n.")
    planned = tasks(pipeline, settings, rates, args.out_dir, args.name)
    print("plan:")
    predicted = bench.print_plan(planned)
    if budget and predicted > budget * 60 * 1.05:
        print(f"  note: the smallest n allowed (n={settings.n}) does not fit the budget.")
    parts = {name: part["evaluations"] for name, part in bench.plan_parts(planned).items()}
    about = {"rate": rates.sampling, "rate_fp32": rates.inversion, "parts": parts}
    about |= {"total": sum(parts.values()), "predicted_seconds": predicted}
    return settings, planned, about | {"time_budget_min": budget, "scale": scale}


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.render_only:
        return bench.publish(args, args.name, dict, render_markdown, figures)
    start = time.perf_counter()
    try:
        pipeline = load_pipeline(args.checkpoint)
        settings, planned, plan = plan_run(pipeline, args)
    except DifflabError as error:
        print(f"error: {error}")
        return 1
    if args.plan_only:
        return 0

    def report() -> dict[str, Any]:
        out = measure(pipeline, settings, planned, args.name)
        out["checkpoint"]["path"] = str(args.checkpoint)
        out |= {"command": command_line(args, settings), "plan": plan}
        out["total_seconds"] = time.perf_counter() - start
        print("\n".join(summary_lines(out)))
        return out

    return bench.publish(args, args.name, report, render_markdown, figures)


if __name__ == "__main__":
    raise SystemExit(main())
