"""The DDIM paper's Tables 1 and 2 and Figures 5, 6 reproduced in shape on MNIST (CPU).

Song, Meng & Ermon, "Denoising Diffusion Implicit Models" (ICLR 2021):

* **Table 1 shape**: FD-MNIST (with precision/recall, k = 3) of one checkpoint sampled with
  S ∈ {10, 20, 50, 100, 1000} steps × η ∈ {0, 0.2, 0.5, 1} and σ̂ (the larger DDPM variance),
  uniform timestep spacing, n samples per cell (``--n``; the S = 1000 column ``--n-1000``, and
  ``--skip-1000-eta`` keeps only η = 0 and η = 1 there). Every cell uses seed 0, so all cells
  start from the same x_T per batch (common random numbers: differences between cells are less
  noisy than each cell). The standard error of one cell comes from ``--seeds`` seeds of
  S = 50, η = 0. The paper's CIFAR-10 FIDs are printed beside ours (a different dataset and
  feature space: compare shapes, not values). The FD floor (real digits) is in fd_floor.json.
* **Table 2 shape**: per-dimension MSE of DDIM inversion (x0 → x_T with S steps) followed by
  generation (x_T → x0, same S) on the first ``--n-inversion`` MNIST test digits, for
  S ∈ {10, 20, 50, 100, 200, 500, 1000}. Images live in [-1, 1]; the MSE is reported on the
  [0, 1] scale (our [-1, 1] MSE / 4), as the paper does ("per-dimension mean squared error
  (scaled to [0, 1])", Sec. 5.4), beside the paper's CIFAR-10 values; the [-1, 1] MSE is in
  the JSON too.
* **Figures**: an interpolation strip (slerp between two x_T, 10 points, S = 50), the
  consistency figure (the same x_T decoded with each S, η = 0) and FD vs S (log x) per η / σ̂.

Goals, as pass/fail lines with their numbers: (1) η = 0 at S = 20 reaches FD ≤ 1.3× that of
S = 1000, η = 1. FD is biased upwards at small n, so when ``--n-1000`` differs from ``--n`` the
S = 20, η = 0 cell is run again with ``--n-1000`` samples and the two are compared at one n.
(2) "σ̂ degrades sharply at small S", read as: at S = 10 σ̂ is the worst row and its FD is ≥ 3×
that of η = 1 (the paper's CIFAR-10 ratio is 8.9). (3) Table 2 at or below the paper's values.

``--bf16`` runs the U-Net under bf16 autocast for Table 1 and the figures (about 2.5× faster on
CPUs with AVX-512 BF16); Table 2 stays fp32 (its errors go down to 1e-4, below bf16's
resolution), and the feature CNN and the FD are always fp32.

Writes ``benchmarks/results/ddim_tables.{json,md}`` and ``ddim_fd_vs_steps.png``,
``ddim_interpolation.png``, ``ddim_consistency.png`` (``--quick`` adds ``_quick`` to every name).
Before running, the script times one batch of the U-Net, prints the plan (image-network
evaluations per part, predicted minutes); ``--time-budget-min M`` scales ``--n``, ``--n-1000``
and ``--n-inversion`` by one factor so that the prediction fits M minutes; ``--plan-only`` stops
after the plan. Progress lines give each cell's time, the elapsed time and the estimated total.

    python benchmarks/ddim_tables.py --checkpoint weights/mnist_ddim.safetensors   # make bench-ddim
    python benchmarks/ddim_tables.py --quick --checkpoint TINY.safetensors --out-dir /tmp/x
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from common import RESULTS_DIR, machine_info, markdown_table, write_json, write_text
from difflab.data import load_dataset
from difflab.errors import DifflabError
from difflab.io.images import make_grid
from difflab.metrics.evaluate import evaluate_model
from difflab.pipelines import DiffusionModel, load_diffusion_model

NAME = "ddim_tables"
DEFAULT_CHECKPOINT = Path("weights/mnist_ddim.safetensors")
STEPS = (10, 20, 50, 100, 1000)
INVERSION_STEPS = (10, 20, 50, 100, 200, 500, 1000)
BATCH_SIZE = 250
TABLE_SEED = 0  # every Table 1 cell: the same x_T per batch
SE_STEPS, SE_ETA = 50, 0.0  # the cell whose seed-to-seed spread gives the standard error
GOAL_STEPS = 20  # goal: eta = 0 at S = 20 ...
GOAL_RATIO = 1.3  # ... reaches FD <= 1.3x that of the full chain (S = T) with eta = 1
SIGMA_HAT_FACTOR = 3.0  # "sigma-hat degrades sharply": FD(σ̂, S=10) >= 3x FD(η=1, S=10)
INTERPOLATION_STEPS, INTERPOLATION_POINTS = 50, 10
INTERPOLATION_PAIRS = ((1, 2), (3, 4), (5, 6))  # seed pairs; one strip each
CONSISTENCY_IMAGES, CONSISTENCY_SEED = 8, 7
CELL_OVERHEAD_S = 0.7  # per FD cell: feature CNN + reference statistics (measured ≈ 0.6 s)
MIN_FD_N = 150  # the smallest n a time budget picks: > 128 features for a full-rank covariance
MIN_INVERSION_N = 10
MNIST_TEST_SIZE = 10_000
FEATURE_DIM = 128  # FD-MNIST features; fewer samples than this give a rank-deficient covariance
FD_FLOOR_FILE = RESULTS_DIR / "fd_floor.json"

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


# ----------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class Variant:
    """One row of Table 1: the DDIM noise level η, or the paper's σ̂ (η = 1 mean, DDPM variance)."""

    label: str
    eta: float
    sigma_hat: bool = False


VARIANTS = (
    Variant("η=0.0", 0.0),
    Variant("η=0.2", 0.2),
    Variant("η=0.5", 0.5),
    Variant("η=1.0", 1.0),
    Variant("σ̂", 1.0, sigma_hat=True),
)
FULL_CHAIN_VARIANTS = ("η=0.0", "η=1.0")  # what --skip-1000-eta keeps at S = 1000


@dataclass(frozen=True)
class Settings:
    """How much work one run does (see ``--help``)."""

    n: int = 500
    n_full: int = 200
    skip_full_eta: bool = False
    seeds: int = 3
    n_inversion: int = 100
    steps: tuple[int, ...] = STEPS
    inversion_steps: tuple[int, ...] = INVERSION_STEPS
    batch_size: int = BATCH_SIZE
    bf16: bool = False
    quick: bool = False

    @property
    def full_steps(self) -> int:
        """The longest chain of Table 1 (S = 1000 = T for the real model)."""
        return max(self.steps)


QUICK_DEFAULTS = Settings(n=16, n_full=8, seeds=2, n_inversion=8, quick=True)


@dataclass(frozen=True)
class Cell:
    """One FD evaluation: ``n`` samples with ``steps`` steps of ``variant`` from ``seed``."""

    steps: int
    variant: Variant
    n: int
    seed: int = TABLE_SEED

    @property
    def cost(self) -> int:
        """Image-network evaluations (one U-Net call on one image = 1)."""
        return self.n * self.steps

    @property
    def name(self) -> str:
        return f"S={self.steps} {self.variant.label} seed={self.seed} n={self.n}"


@dataclass(frozen=True)
class Plan:
    """Every piece of work of a run, with its cost in image-network evaluations."""

    table1: tuple[Cell, ...]
    se_cells: tuple[Cell, ...]  # the extra seeds of the SE cell (its seed 0 is in table1)
    goal_cells: tuple[Cell, ...]  # eta = 0 at S = 20 with the full column's n (fair goal check)
    inversion: tuple[tuple[int, int], ...]  # (S, n): invert + regenerate = 2 S n evaluations
    figure_cost: int

    def parts(self) -> dict[str, int]:
        """Cost of each part."""
        return {
            "table1": sum(c.cost for c in self.table1),
            "standard_error": sum(c.cost for c in self.se_cells),
            "goal_matched_n": sum(c.cost for c in self.goal_cells),
            "table2": sum(2 * s * n for s, n in self.inversion),
            "figures": self.figure_cost,
        }

    @property
    def total(self) -> int:
        return sum(self.parts().values())

    @property
    def fd_cells(self) -> int:
        return len(self.table1) + len(self.se_cells) + len(self.goal_cells)

    def seconds(self, rates: Rates) -> dict[str, float]:
        """Predicted seconds of each part (Table 2 at the fp32 rate), FD overhead included."""
        out = {
            part: cost / (rates.inversion if part == "table2" else rates.sampling)
            for part, cost in self.parts().items()
        }
        out["fd_overhead"] = self.fd_cells * CELL_OVERHEAD_S
        return out

    def predicted_seconds(self, rates: Rates) -> float:
        return sum(self.seconds(rates).values())


@dataclass(frozen=True)
class Rates:
    """Image-network evaluations per second: of the sampler's U-Net and of fp32 (inversion)."""

    sampling: float
    inversion: float


def table1_cells(settings: Settings) -> tuple[Cell, ...]:
    """The Table 1 grid: every S × variant, the full-chain column at ``n_full`` samples."""
    cells = []
    for steps in settings.steps:
        full = steps == settings.full_steps
        for variant in VARIANTS:
            if full and settings.skip_full_eta and variant.label not in FULL_CHAIN_VARIANTS:
                continue
            cells.append(Cell(steps, variant, settings.n_full if full else settings.n))
    return tuple(cells)


def se_cell_steps(settings: Settings) -> int:
    """S of the standard-error cell: 50, or the middle S when 50 is not in the grid."""
    steps = sorted(settings.steps)
    return SE_STEPS if SE_STEPS in steps else steps[len(steps) // 2]


def build_plan(settings: Settings) -> Plan:
    """All cells, inversions and figures of a run with ``settings``."""
    se_steps = se_cell_steps(settings)
    se_variant = next(v for v in VARIANTS if v.eta == SE_ETA and not v.sigma_hat)
    n_se = settings.n_full if se_steps == settings.full_steps else settings.n
    se_cells = tuple(
        Cell(se_steps, se_variant, n_se, seed) for seed in range(TABLE_SEED + 1, settings.seeds)
    )
    goal_variant = next(v for v in VARIANTS if v.eta == 0.0 and not v.sigma_hat)
    matched = settings.n_full != settings.n and GOAL_STEPS in settings.steps
    goal_cells = (Cell(GOAL_STEPS, goal_variant, settings.n_full),) if matched else ()
    interpolation = len(INTERPOLATION_PAIRS) * INTERPOLATION_POINTS * INTERPOLATION_STEPS
    consistency = CONSISTENCY_IMAGES * sum(settings.steps)
    return Plan(
        table1=table1_cells(settings),
        se_cells=se_cells,
        goal_cells=goal_cells,
        inversion=tuple((s, settings.n_inversion) for s in settings.inversion_steps),
        figure_cost=interpolation + consistency,
    )


# ----------------------------------------------------------------------------- model


class AutocastNet(nn.Module):
    """A network run under bf16 autocast, its output returned in fp32 (``--bf16``)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.inner = net
        self.prediction = net.prediction
        self.config = net.config

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, cond: Any) -> torch.Tensor:
        with torch.autocast(x_t.device.type, dtype=torch.bfloat16):
            return self.inner(x_t, t, cond).float()


def with_bf16(model: DiffusionModel) -> DiffusionModel:
    """The same model (shared weights) with its U-Net under bf16 autocast."""
    return dataclasses.replace(model, net=AutocastNet(model.net))


def class_labels(model: DiffusionModel, n: int) -> torch.Tensor | None:
    """Classes 0, 1, ..., K-1, 0, ... for a class-conditional model; None otherwise."""
    return torch.arange(n) % model.num_classes if model.num_classes else None


@torch.no_grad()
def measure_rate(model: DiffusionModel, batch_size: int, repeats: int = 2) -> float:
    """Image-network evaluations per second: one U-Net call on ``batch_size`` images, best of a few."""
    x = model.noise(batch_size, seed=0)
    t = torch.full((batch_size,), model.schedule.num_timesteps // 2)
    denoiser = model.denoiser()
    cond = model.conditioning(class_labels(model, batch_size))
    denoiser(x, t, cond)  # warm-up
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        denoiser(x, t, cond)
        seconds.append(time.perf_counter() - start)
    return batch_size / min(seconds)


def measure_rates(model: DiffusionModel, sampler: DiffusionModel, batch_size: int) -> Rates:
    """The sampling rate, and the fp32 rate when the sampler is another (bf16) model."""
    sampling = measure_rate(sampler, batch_size)
    inversion = sampling if sampler is model else measure_rate(model, batch_size)
    return Rates(sampling, inversion)


def fit_to_budget(settings: Settings, rates: Rates, budget_s: float) -> tuple[Settings, float]:
    """``settings`` with n, n_full and n_inversion scaled by one factor to fit ``budget_s``.

    The prediction is :meth:`Plan.predicted_seconds`; the figures and the per-cell overhead are
    fixed costs. No n goes below ``MIN_FD_N`` (FD-MNIST of fewer samples than features is
    degenerate), so a small budget can be exceeded. Returns the new settings and the scale.
    """
    plan = build_plan(settings)
    seconds = plan.seconds(rates)
    fixed_s = seconds["figures"] + seconds["fd_overhead"]
    variable_s = plan.predicted_seconds(rates) - fixed_s
    scale = max((budget_s - fixed_s) / variable_s, 0.0)

    def scaled(value: int, low: int, cap: int | None = None) -> int:
        count = max(low, round(value * scale / 10) * 10)
        return min(count, cap) if cap else count

    low = 2 if settings.quick else MIN_FD_N
    fitted = dataclasses.replace(
        settings,
        n=scaled(settings.n, low),
        n_full=scaled(settings.n_full, low),
        n_inversion=scaled(settings.n_inversion, MIN_INVERSION_N, MNIST_TEST_SIZE),
    )
    return fitted, scale


# ----------------------------------------------------------------------------- progress


class Progress:
    """Prints one line per finished piece of work: its time, the elapsed and estimated total.

    Work is counted in predicted seconds (evaluations / measured rate + overhead), so the
    estimate is the elapsed time scaled by how much of the predicted work is done.
    """

    def __init__(self, total_work: float, rates: Rates) -> None:
        self.total_work = total_work
        self.rates = rates
        self.done_work = 0.0
        self.count = 0
        self.start = time.perf_counter()

    def cell_work(self, cell: Cell) -> float:
        """Predicted seconds of one FD cell."""
        return cell.cost / self.rates.sampling + CELL_OVERHEAD_S

    def done(self, label: str, work: float, seconds: float, message: str) -> None:
        """Record ``work`` predicted seconds finished in ``seconds`` and print a line."""
        self.done_work += work
        self.count += 1
        elapsed = time.perf_counter() - self.start
        estimate = elapsed * self.total_work / max(self.done_work, 1e-9)
        print(
            f"[{self.count:>2}] {label}: {message} ({seconds:.1f} s) | elapsed "
            f"{clock(elapsed)}, estimated total {clock(estimate)}",
            flush=True,
        )


def clock(seconds: float) -> str:
    """``"1:02:03"`` or ``"2:03"``."""
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


# ----------------------------------------------------------------------------- Table 1


def run_cell(model: DiffusionModel, cell: Cell, batch_size: int) -> dict[str, Any]:
    """FD-MNIST, precision, recall of one cell (``evaluate_model`` on the loaded model)."""
    start = time.perf_counter()
    result = evaluate_model(
        model,
        n=cell.n,
        sampler="ddim",
        steps=cell.steps,
        eta=cell.variant.eta,
        sigma_hat=cell.variant.sigma_hat,
        seed=cell.seed,
        batch_size=batch_size,
    )
    return {
        "steps": cell.steps,
        "variant": cell.variant.label,
        "eta": cell.variant.eta,
        "sigma_hat": cell.variant.sigma_hat,
        "n": cell.n,
        "seed": cell.seed,
        "fd": result["fd"],
        "precision": result["precision"],
        "recall": result["recall"],
        "label_accuracy": result["label_accuracy"],
        "metric": result["metric"],
        "sample_seconds": result["sample_seconds"],
        "wall_seconds": time.perf_counter() - start,
    }


def run_cells(
    model: DiffusionModel, cells: Sequence[Cell], batch_size: int, progress: Progress
) -> list[dict[str, Any]]:
    """Run cells in order, printing progress."""
    rows = []
    for cell in cells:
        row = run_cell(model, cell, batch_size)
        message = f"FD {row['fd']:.3f}, P {fmt(row['precision'])}, R {fmt(row['recall'])}"
        progress.done(cell.name, progress.cell_work(cell), row["wall_seconds"], message)
        rows.append(row)
    return rows


def standard_error(rows: Sequence[dict[str, Any]], steps: int) -> dict[str, Any] | None:
    """FD mean ± std over the seeds of the SE cell (None with fewer than two seeds)."""
    values = [
        r["fd"] for r in rows if r["steps"] == steps and r["eta"] == SE_ETA and not r["sigma_hat"]
    ]
    if len(values) < 2:
        return None
    return {
        "steps": steps,
        "variant": f"η={SE_ETA:.1f}",
        "n": next(r["n"] for r in rows if r["steps"] == steps),
        "seeds": len(values),
        "values": values,
        "mean": statistics.fmean(values),
        "std": statistics.stdev(values),
        "sem": statistics.stdev(values) / math.sqrt(len(values)),
    }


def fd_lookup(rows: Sequence[dict[str, Any]]) -> dict[tuple[str, int], float]:
    """``{(variant, S): FD}`` of the seed-0 Table 1 cells."""
    return {(r["variant"], r["steps"]): r["fd"] for r in rows if r["seed"] == TABLE_SEED}


def goal_checks(
    rows: Sequence[dict[str, Any]], matched: Sequence[dict[str, Any]], full_steps: int
) -> list[dict[str, Any]]:
    """The issue's two goals as pass/fail records with their numbers.

    FD is biased upwards at small n, so the first goal compares cells of one n: the S = 20 cell
    re-run with the full column's n (``matched``) when the full column has fewer samples.
    """
    fd = fd_lookup(rows)
    checks = []
    ddim = matched[0]["fd"] if matched else fd.get(("η=0.0", GOAL_STEPS))
    ddpm = fd.get(("η=1.0", full_steps))
    n_goal = matched[0]["n"] if matched else None
    text = f"η=0, S={GOAL_STEPS} reaches FD ≤ {GOAL_RATIO}× that of {full_steps}-step η=1"
    if n_goal is not None:
        text += f" (both at n={n_goal})"
    if ddim is None or ddpm is None:
        checks.append({"goal": text, "passed": None, "detail": "cells missing"})
    else:
        ratio = ddim / ddpm
        paper = PAPER_TABLE1["η=0.0"][GOAL_STEPS] / PAPER_TABLE1["η=1.0"][1000]
        checks.append(
            {
                "goal": text,
                "passed": ratio <= GOAL_RATIO,
                "ratio": ratio,
                "detail": f"FD {ddim:.3f} vs {ddpm:.3f}: ratio {ratio:.2f} "
                f"(limit {GOAL_RATIO}; paper CIFAR-10: {paper:.2f})",
            }
        )
    smallest = min(s for _, s in fd)
    sig, eta1 = fd.get(("σ̂", smallest)), fd.get(("η=1.0", smallest))
    text = (
        f"σ̂ degrades sharply at small S: at S={smallest} σ̂ is the worst row and its FD ≥ "
        f"{SIGMA_HAT_FACTOR:g}× that of η=1"
    )
    if sig is None or eta1 is None:
        checks.append({"goal": text, "passed": None, "detail": "cells missing"})
    else:
        worst = max(v for (label, s), v in fd.items() if s == smallest)
        ratio = sig / eta1
        paper = PAPER_TABLE1["σ̂"][10] / PAPER_TABLE1["η=1.0"][10]
        trend = ", ".join(
            f"S={s}: {fd[('σ̂', s)]:.3f}" for s in sorted({s for _, s in fd}) if ("σ̂", s) in fd
        )
        checks.append(
            {
                "goal": text,
                "passed": sig >= worst and ratio >= SIGMA_HAT_FACTOR,
                "ratio": ratio,
                "detail": f"FD σ̂ {sig:.3f} vs η=1 {eta1:.3f}: ratio {ratio:.2f} (paper CIFAR-10 "
                f"at S=10: {paper:.1f}); σ̂ by S: {trend}",
            }
        )
    return checks


def fd_floor(n: int) -> dict[str, Any] | None:
    """The FD-MNIST floor (real training digits vs the test set) at the n nearest ``n``."""
    if not FD_FLOOR_FILE.is_file():
        return None
    rows = json.loads(FD_FLOOR_FILE.read_text())["rows"]
    row = min(rows, key=lambda r: abs(math.log(r["n"] / n)))
    return {"n": row["n"], **{k: row["fd_vs_test_full"][k] for k in ("mean", "std")}}


# ----------------------------------------------------------------------------- Table 2


def inversion_images(model: DiffusionModel, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``n`` test images of the model's dataset, prepared as in training, and labels."""
    data = model.meta.get("experiment", {}).get("data", {})
    dataset = load_dataset(
        model.meta["data"]["name"],
        split="test",
        limit=n,
        image_size=data.get("image_size"),
        pad_to_32=bool(data.get("pad_to_32", False)),
        data_dir=data.get("data_dir"),
    )
    return dataset.images, dataset.labels


def reconstruction_mse(
    model: DiffusionModel,
    images: torch.Tensor,
    labels: torch.Tensor | None,
    steps: int,
    batch_size: int,
) -> dict[str, Any]:
    """Per-dimension MSE of invert → regenerate with ``steps`` DDIM steps (η = 0), no clamping."""
    start = time.perf_counter()
    total = 0.0
    for first in range(0, len(images), batch_size):
        x0 = images[first : first + batch_size]
        y = None if labels is None else labels[first : first + batch_size]
        x_T = model.invert(x0, steps, labels=y)
        x0_hat = model.reconstruct(x_T, steps, labels=y)
        total += float(((x0_hat.float() - x0) ** 2).sum())
    mse = total / images.numel()
    return {
        "steps": steps,
        "n": len(images),
        "mse_unit": mse / 4,  # [0, 1] scale: (x / 2 + 1 / 2) halves every difference
        "mse_pm1": mse,
        "paper_cifar10": PAPER_TABLE2.get(steps),
        "wall_seconds": time.perf_counter() - start,
    }


def run_table2(
    model: DiffusionModel, settings: Settings, progress: Progress
) -> list[dict[str, Any]]:
    """Table 2 rows for every S in ``settings.inversion_steps``."""
    images, labels = inversion_images(model, settings.n_inversion)
    labels = labels if model.num_classes else None
    rows = []
    for steps in settings.inversion_steps:
        row = reconstruction_mse(model, images, labels, steps, settings.batch_size)
        paper = row["paper_cifar10"]
        row["passed"] = None if paper is None else row["mse_unit"] <= paper
        progress.done(
            f"inversion S={steps} n={len(images)}",
            2 * steps * len(images) / progress.rates.inversion,
            row["wall_seconds"],
            f"MSE[0,1] {row['mse_unit']:.2e}",
        )
        rows.append(row)
    return rows


# ----------------------------------------------------------------------------- figures


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def image_rows_figure(
    rows: Sequence[torch.Tensor], row_labels: Sequence[str], title: str, path: Path
) -> Path:
    """One PNG: each tensor (k, C, H, W) in [-1, 1] a labelled row of images."""
    plt = _pyplot()
    width = max(len(r) for r in rows)
    fig, axes = plt.subplots(
        len(rows), 1, figsize=(0.75 * width + 1.2, 0.8 * len(rows) + 0.6), squeeze=False
    )
    for ax, images, label in zip(axes[:, 0], rows, row_labels, strict=True):
        grid = make_grid(images, nrow=len(images))  # (H', W', C) uint8
        ax.imshow(grid[..., 0] if grid.shape[-1] == 1 else grid, cmap="gray", vmin=0, vmax=255)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_ylabel(label, rotation=0, ha="right", va="center", fontsize=9)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def interpolation_figure(model: DiffusionModel, path: Path) -> dict[str, Any]:
    """Slerp strips between pairs of x_T (S = 50, η = 0), one row per pair."""
    start = time.perf_counter()
    label = 0 if model.num_classes else None
    rows = [
        model.interpolate(a, b, INTERPOLATION_POINTS, INTERPOLATION_STEPS, label=label)
        for a, b in INTERPOLATION_PAIRS
    ]
    labels = [f"seeds {a}→{b}" for a, b in INTERPOLATION_PAIRS]
    title = (
        f"DDIM interpolation: slerp between two x_T, {INTERPOLATION_POINTS} points, "
        f"S={INTERPOLATION_STEPS}, η=0"
    )
    image_rows_figure(rows, labels, title, path)
    return {"path": path.name, "pairs": INTERPOLATION_PAIRS, "seconds": time.perf_counter() - start}


def consistency_figure(model: DiffusionModel, steps: Sequence[int], path: Path) -> dict[str, Any]:
    """The same x_T decoded with every S (η = 0), one row per S; MSE of each row to the longest."""
    start = time.perf_counter()
    labels = class_labels(model, CONSISTENCY_IMAGES)
    rows = [
        model.sample(CONSISTENCY_IMAGES, steps=s, eta=0.0, seed=CONSISTENCY_SEED, labels=labels)
        for s in steps
    ]
    reference = rows[-1].clamp(-1, 1)
    mse = {
        s: float(((r.clamp(-1, 1) - reference) ** 2).mean()) / 4
        for s, r in zip(steps, rows, strict=True)
    }
    title = f"DDIM consistency: the same {CONSISTENCY_IMAGES} x_T, η=0, each row another S"
    image_rows_figure(rows, [f"S={s}" for s in steps], title, path)
    return {
        "path": path.name,
        "seed": CONSISTENCY_SEED,
        "images": CONSISTENCY_IMAGES,
        "mse_unit_to_longest": {str(s): v for s, v in mse.items()},
        "seconds": time.perf_counter() - start,
    }


def plot_label(variant: Variant) -> str:
    """Mathtext legend label (the combining hat of "σ̂" renders badly in DejaVu Sans)."""
    return r"$\hat{\sigma}$" if variant.sigma_hat else rf"$\eta$={variant.eta:.1f}"


def fd_vs_steps_figure(rows: Sequence[dict[str, Any]], metric: str, path: Path) -> Path:
    """FD vs S (log x, log y) per η / σ̂: ours on the left, the paper's CIFAR-10 on the right."""
    plt = _pyplot()
    fd = fd_lookup(rows)
    fig, (ours, paper) = plt.subplots(1, 2, figsize=(11, 4.2))
    for variant in VARIANTS:
        points = sorted((s, v) for (label, s), v in fd.items() if label == variant.label)
        if points:
            ours.plot(*zip(*points, strict=True), marker="o", label=plot_label(variant))
        reference = sorted(PAPER_TABLE1[variant.label].items())
        paper.plot(*zip(*reference, strict=True), marker="o", label=plot_label(variant))
    values = list(fd.values())
    spread = max(values) / max(min(values), 1e-12) if values else 1.0
    for ax, title, ylabel, log_y in (
        (ours, f"ours: MNIST, {metric}", metric, spread > 10),
        (paper, "DDIM paper Table 1: CIFAR-10", "FID", True),
    ):
        ax.set_xscale("log")
        ax.set_yscale("log" if log_y else "linear")
        ax.set_xlabel("S (sampling steps)")
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize="small")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


# ----------------------------------------------------------------------------- report


def fmt(value: float | None, digits: int = 3) -> str:
    """A number, or "—" for None."""
    return "—" if value is None else f"{value:.{digits}f}"


def table1_markdown(rows: Sequence[dict[str, Any]], steps: Sequence[int]) -> str:
    """FD per variant × S, each cell "ours (paper CIFAR-10 FID)"."""
    fd = fd_lookup(rows)
    body = []
    for variant in VARIANTS:
        cells = []
        for s in steps:
            paper = PAPER_TABLE1[variant.label].get(s)
            ours = fmt(fd.get((variant.label, s)))
            cells.append(f"{ours} ({paper:g})" if paper is not None else ours)
        body.append([variant.label, *cells])
    return markdown_table(["", *(f"S={s}" for s in steps)], body)


def precision_recall_markdown(rows: Sequence[dict[str, Any]], steps: Sequence[int]) -> str:
    """Precision / recall per variant × S (seed-0 cells)."""
    cells = {(r["variant"], r["steps"]): r for r in rows if r["seed"] == TABLE_SEED}
    body = []
    for variant in VARIANTS:
        line = [variant.label]
        for s in steps:
            r = cells.get((variant.label, s))
            line.append("—" if r is None else f"{fmt(r['precision'])} / {fmt(r['recall'])}")
        body.append(line)
    return markdown_table(["P / R", *(f"S={s}" for s in steps)], body)


def table2_markdown(rows: Sequence[dict[str, Any]]) -> str:
    """Reconstruction MSE per S beside the paper's CIFAR-10 values."""
    body = [
        [
            f"S={r['steps']}",
            f"{r['mse_unit']:.2e}",
            "—" if r["paper_cifar10"] is None else f"{r['paper_cifar10']:g}",
            passfail(r["passed"]),
            f"{r['mse_pm1']:.2e}",
            f"{r['wall_seconds']:.0f}",
        ]
        for r in rows
    ]
    headers = ["", "MSE, [0,1] scale", "paper CIFAR-10", "≤ paper", "MSE, [-1,1]", "seconds"]
    return markdown_table(headers, body)


def passfail(value: bool | None) -> str:
    return "n/a" if value is None else ("PASS" if value else "FAIL")


def summary_lines(report: dict[str, Any]) -> list[str]:
    """Goal lines, the standard-error line and the FD floor, as plain sentences."""
    lines = [f"{passfail(g['passed'])}: {g['goal']} — {g['detail']}" for g in report["goals"]]
    table2 = [r for r in report["table2"] if r["passed"] is not None]
    if table2:
        failed = [f"S={r['steps']}" for r in table2 if not r["passed"]]
        verdict = "PASS" if not failed else "FAIL"
        detail = "all S" if not failed else "above the paper at " + ", ".join(failed)
        lines.append(
            f"{verdict}: Table 2 reconstruction MSE ([0,1] scale) at or below the paper's "
            f"CIFAR-10 values — {detail}"
        )
    se = report["standard_error"]
    if se is not None:
        lines.append(
            f"Standard error: FD at S={se['steps']}, {se['variant']}, n={se['n']} over "
            f"{se['seeds']} seeds: {se['mean']:.3f} ± {se['std']:.3f} (std; SE of the mean "
            f"{se['sem']:.3f})"
        )
    floor = report["fd_floor"]
    if floor is not None:
        lines.append(
            f"FD floor (real MNIST training digits vs the test set, fd_floor.json) at "
            f"n={floor['n']}: {floor['mean']:.3f} ± {floor['std']:.3f}; Table 1 uses "
            f"n={report['settings']['n']} (S={report['settings']['full_steps']}: "
            f"n={report['settings']['n_full']}); FD is biased upwards at small n."
        )
    return lines


def render_markdown(report: dict[str, Any]) -> str:
    """The whole report as markdown."""
    s = report["settings"]
    ckpt = report["checkpoint"]
    steps = s["steps"]
    metric = report["metric"]
    quick = " — quick run (smoke test; numbers meaningless)" if s["quick"] else ""
    parts = [
        f"# The DDIM paper's tables on MNIST{quick}",
        f"Checkpoint `{ckpt['path']}` (step {ckpt['step']}, preset {ckpt['preset']}, "
        f"T={ckpt['num_timesteps']}). Sampling: DDIM, uniform spacing, batch {s['batch_size']}, "
        f"U-Net in {'bf16 autocast (Table 2 in fp32)' if s['bf16'] else 'fp32'} (the feature "
        "CNN and FD are fp32). "
        f"Table 1: n={s['n']} samples per cell, n={s['n_full']} at S={s['full_steps']}"
        f"{' (only η=0 and η=1 there)' if s['skip_full_eta'] else ''}; seed 0 in every cell "
        f"(the same x_T per batch). Table 2: the first {s['n_inversion']} MNIST test digits.",
        "## Goals",
        "\n".join(f"- {line}" for line in summary_lines(report)),
        f"## Table 1 shape: {metric} (paper: CIFAR-10 FID, in parentheses)",
        "The paper's numbers are quoted from DDIM Table 1 (CIFAR10 32×32; checked against the "
        "arXiv text). Different data and feature space: compare how each row changes with S, "
        "not the values.",
        table1_markdown(report["table1"], steps),
        "Precision / recall (k = 3, against n MNIST test features):",
        precision_recall_markdown(report["table1"], steps),
        "## Table 2 shape: reconstruction error of DDIM inversion → generation",
        "Per-dimension MSE between test digits and their DDIM reconstruction (invert with S "
        "steps, regenerate with the same S, no clamping). Our images are in [-1, 1]; the MSE is "
        "reported on the [0, 1] scale (= [-1, 1] MSE / 4) because the paper states its CIFAR-10 "
        'numbers are "scaled to [0, 1]" (Sec. 5.4, Table 2, rounded to 1e-4).',
        table2_markdown(report["table2"]),
        "## Figures",
        figures_markdown(report["figures"], metric),
        "## Cost",
        cost_markdown(report),
    ]
    return "\n\n".join(parts)


def figures_markdown(figures: dict[str, Any], metric: str) -> str:
    """One bullet per PNG."""
    consistency = figures["consistency"]
    distances = ", ".join(f"S={k}: {v:.3g}" for k, v in consistency["mse_unit_to_longest"].items())
    return "\n".join(
        [
            f"- `{figures['fd_vs_steps']}`: {metric} vs S per η / σ̂ (left) and the paper's "
            "CIFAR-10 FID (right).",
            f"- `{figures['interpolation']['path']}`: slerp between two x_T (one row per seed "
            f"pair), {INTERPOLATION_POINTS} points, S={INTERPOLATION_STEPS}, η=0.",
            f"- `{consistency['path']}`: the same {consistency['images']} x_T decoded with each "
            f"S (η=0), one row per S. MSE ([0,1] scale) of each row to the longest chain: "
            f"{distances}.",
        ]
    )


def cost_markdown(report: dict[str, Any]) -> str:
    """Wall time per Table 1 cell and the run's totals, machine and plan."""
    s, m, plan = report["settings"], report["machine"], report["plan"]
    rows = {(r["variant"], r["steps"]): r for r in report["table1"] if r["seed"] == TABLE_SEED}
    body = [
        [
            v.label,
            *(
                fmt(rows[(v.label, st)]["wall_seconds"], 0) if (v.label, st) in rows else "—"
                for st in s["steps"]
            ),
        ]
        for v in VARIANTS
    ]
    table = markdown_table(["seconds", *(f"S={st}" for st in s["steps"])], body)
    bf16_note = f" in bf16, {plan['rate_fp32']:.0f} in fp32" if s["bf16"] else ""
    budget = plan.get("time_budget_min")
    budget_text = (
        f" `--time-budget-min {budget:g}` scaled n by {plan['scale']:.2f}." if budget else ""
    )
    return "\n\n".join(
        [
            table,
            f"Measured before the run: {plan['rate']:.0f} image-network evaluations/s"
            f"{bf16_note} (one batch of {s['batch_size']}); plan {plan['total']:,} evaluations, "
            "predicted "
            f"{plan['predicted_seconds'] / 60:.1f} min; actual {report['total_seconds'] / 60:.1f}"
            f" min.{budget_text}",
            f"{m['cpu_model']}, {m['logical_cpus']} CPUs, torch threads {m['torch_threads']}, "
            f"torch {m['torch']}; {m['date']}. Rerun: `{report['command']}`.",
        ]
    )


# ----------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT)
    parser.add_argument("--n", type=int, help=f"samples per Table 1 cell ({Settings.n})")
    parser.add_argument(
        "--n-1000", type=int, help=f"samples per cell at S=1000 = T ({Settings.n_full})"
    )
    parser.add_argument(
        "--skip-1000-eta", action="store_true", help="at S=1000 run only η=0 and η=1"
    )
    parser.add_argument(
        "--seeds", type=int, help=f"seeds of the S=50, η=0 cell, for the SE ({Settings.seeds})"
    )
    parser.add_argument(
        "--n-inversion", type=int, help=f"test digits in Table 2 ({Settings.n_inversion})"
    )
    parser.add_argument("--batch-size", type=int, default=BATCH_SIZE)
    parser.add_argument("--bf16", action="store_true", help="U-Net under bf16 autocast")
    parser.add_argument(
        "--time-budget-min", type=float, default=None, help="scale n to fit this many minutes"
    )
    parser.add_argument("--plan-only", action="store_true", help="print the plan and stop")
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke test on a small model: n=16, n-1000=8, seeds 2, n-inversion 8 unless given; "
        "S capped at the model's T; outputs named *_quick",
    )
    parser.add_argument("--out-dir", type=Path, default=RESULTS_DIR)
    args = parser.parse_args(argv)
    for name in ("n", "n_1000", "n_inversion", "batch_size"):
        if getattr(args, name) is not None and getattr(args, name) < 2:
            parser.error(f"--{name.replace('_', '-')} must be at least 2")
    if args.seeds is not None and args.seeds < 1:
        parser.error("--seeds must be at least 1")
    return args


def make_settings(args: argparse.Namespace, num_timesteps: int) -> Settings:
    """Settings from the arguments; ``--quick`` shrinks the defaults and caps S at T."""
    defaults = QUICK_DEFAULTS if args.quick else Settings()
    given = {
        "n": args.n,
        "n_full": args.n_1000,
        "seeds": args.seeds,
        "n_inversion": args.n_inversion,
    }
    settings = dataclasses.replace(
        defaults,
        **{key: value for key, value in given.items() if value is not None},
        skip_full_eta=args.skip_1000_eta,
        batch_size=args.batch_size,
        bf16=args.bf16,
        quick=args.quick,
    )
    if args.quick or max(STEPS) > num_timesteps:
        if not args.quick:
            raise SystemExit(
                f"the checkpoint has T={num_timesteps} < {max(STEPS)} steps; use --quick for a "
                "smoke test on a small model."
            )
        steps = tuple(sorted({min(s, num_timesteps) for s in STEPS}))
        inversion = tuple(sorted({min(s, num_timesteps) for s in INVERSION_STEPS}))
        settings = dataclasses.replace(settings, steps=steps, inversion_steps=inversion)
    return settings


def print_plan(plan: Plan, rates: Rates) -> float:
    """Print the cost and predicted minutes of each part; returns the predicted seconds."""
    seconds = plan.seconds(rates)
    for part, cost in plan.parts().items():
        print(f"  {part:<15} {cost:>12,} evaluations  ≈ {seconds[part] / 60:6.1f} min")
    overhead = seconds["fd_overhead"] / 60
    print(f"  {'FD overhead':<15} {plan.fd_cells:>12} cells        ≈ {overhead:6.1f} min")
    predicted = plan.predicted_seconds(rates)
    print(f"  {'total':<15} {plan.total:>12,} evaluations  ≈ {predicted / 60:6.1f} min", flush=True)
    return predicted


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    try:
        model = load_diffusion_model(args.checkpoint)
    except DifflabError as error:
        print(f"error: {error}")
        return 1
    sampler = with_bf16(model) if args.bf16 else model
    settings = make_settings(args, model.schedule.num_timesteps)
    rates = measure_rates(model, sampler, settings.batch_size)
    bf16 = f" (bf16; fp32: {rates.inversion:.0f})" if args.bf16 else ""
    print(
        f"{args.checkpoint}: step {model.meta.get('step')}, T={model.schedule.num_timesteps}; "
        f"{rates.sampling:.0f} image-network evaluations/s{bf16} at batch "
        f"{settings.batch_size} on {torch.get_num_threads()} thread(s)",
        flush=True,
    )
    scale = 1.0
    if args.time_budget_min:
        settings, scale = fit_to_budget(settings, rates, args.time_budget_min * 60)
        print(
            f"--time-budget-min {args.time_budget_min:g}: scale {scale:.2f} → n={settings.n}, "
            f"n-1000={settings.n_full}, n-inversion={settings.n_inversion}"
        )
        if min(settings.n, settings.n_full) < 2 * FEATURE_DIM:
            print(f"  note: n < {2 * FEATURE_DIM}: FD is strongly biased upwards at this n.")
        if build_plan(settings).predicted_seconds(rates) > args.time_budget_min * 60 * 1.05:
            print(f"  note: the minimum n (={MIN_FD_N}) does not fit the budget.")
    plan = build_plan(settings)
    print("plan:")
    predicted = print_plan(plan, rates)
    if args.plan_only:
        return 0
    report = run(model, sampler, settings, plan, rates, args)
    report["plan"] = {
        "rate": rates.sampling,
        "rate_fp32": rates.inversion,
        "parts": plan.parts(),
        "total": plan.total,
        "predicted_seconds": predicted,
        "time_budget_min": args.time_budget_min,
        "scale": scale,
    }
    report["total_seconds"] = time.perf_counter() - start
    for path in write_outputs(report, args.out_dir):
        print(f"wrote {path}")
    return 0


def run(
    model: DiffusionModel,
    sampler: DiffusionModel,
    settings: Settings,
    plan: Plan,
    rates: Rates,
    args: argparse.Namespace,
) -> dict[str, Any]:
    """Every table and figure; returns the report (without plan and total time).

    ``sampler`` (``model`` under bf16 autocast with ``--bf16``) draws Table 1 and the figures;
    Table 2 always runs ``model`` in fp32: errors of 1e-4 are below bf16's resolution.
    """
    suffix = "_quick" if settings.quick else ""
    out_dir: Path = args.out_dir
    progress = Progress(plan.predicted_seconds(rates), rates)
    table1 = run_cells(sampler, plan.table1, settings.batch_size, progress)
    se_rows = run_cells(sampler, plan.se_cells, settings.batch_size, progress)
    goal_rows = run_cells(sampler, plan.goal_cells, settings.batch_size, progress)
    table2 = run_table2(model, settings, progress)
    figures_start = time.perf_counter()
    interpolation = interpolation_figure(sampler, out_dir / f"ddim_interpolation{suffix}.png")
    consistency = consistency_figure(
        sampler, settings.steps, out_dir / f"ddim_consistency{suffix}.png"
    )
    figure_work = plan.figure_cost / rates.sampling
    progress.done("figures", figure_work, time.perf_counter() - figures_start, "done")
    metric = table1[0]["metric"]
    fd_plot = fd_vs_steps_figure(table1, metric, out_dir / f"ddim_fd_vs_steps{suffix}.png")
    meta = model.meta
    return {
        "name": NAME + suffix,
        "command": "python benchmarks/ddim_tables.py " + " ".join(command_args(args, settings)),
        "metric": metric,
        "settings": {**dataclasses.asdict(settings), "full_steps": settings.full_steps},
        "checkpoint": {
            "path": str(args.checkpoint),
            "step": meta.get("step"),
            "preset": meta.get("experiment", {}).get("model", {}).get("preset"),
            "num_timesteps": model.schedule.num_timesteps,
            "data": meta.get("data"),
        },
        "table1": table1,
        "standard_error_cells": se_rows,
        "standard_error": standard_error([*table1, *se_rows], se_cell_steps(settings)),
        "goal_matched_n_cells": goal_rows,
        "goals": goal_checks(table1, goal_rows, settings.full_steps),
        "fd_floor": fd_floor(settings.n),
        "table2": table2,
        "figures": {
            "fd_vs_steps": fd_plot.name,
            "interpolation": interpolation,
            "consistency": consistency,
        },
        "paper": {
            "source": "Song, Meng & Ermon, DDIM (ICLR 2021), Tables 1 and 2, CIFAR-10",
            "table1_fid": {k: {str(s): v for s, v in d.items()} for k, d in PAPER_TABLE1.items()},
            "table2_mse_unit": {str(s): v for s, v in PAPER_TABLE2.items()},
        },
        "machine": machine_info(),
    }


def command_args(args: argparse.Namespace, settings: Settings) -> list[str]:
    """Arguments that redo this run with the n it used (a time budget's choice made explicit)."""
    out = [
        f"--checkpoint {args.checkpoint}",
        f"--n {settings.n}",
        f"--n-1000 {settings.n_full}",
        f"--seeds {settings.seeds}",
        f"--n-inversion {settings.n_inversion}",
    ]
    flags = {
        "--skip-1000-eta": settings.skip_full_eta,
        "--bf16": settings.bf16,
        "--quick": settings.quick,
        f"--batch-size {settings.batch_size}": settings.batch_size != BATCH_SIZE,
        f"--threads {args.threads}": bool(args.threads),
    }
    return out + [flag for flag, wanted in flags.items() if wanted]


def write_outputs(report: dict[str, Any], out_dir: Path) -> list[Path]:
    """Write the JSON and markdown (the PNGs are written as they are made), print the summary."""
    name = report["name"]
    paths = [
        write_json(out_dir / f"{name}.json", report),
        write_text(out_dir / f"{name}.md", render_markdown(report)),
    ]
    steps = report["settings"]["steps"]
    print()
    print(table1_markdown(report["table1"], steps))
    print()
    print(precision_recall_markdown(report["table1"], steps))
    print()
    print(table2_markdown(report["table2"]))
    print()
    print("\n".join(summary_lines(report)))
    return paths


if __name__ == "__main__":
    raise SystemExit(main())
