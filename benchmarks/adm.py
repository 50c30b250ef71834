"""The rest of "Diffusion Models Beat GANs" in shape on MNIST: the architecture ablation and
learned variances (issue 20).

Dhariwal & Nichol (2021) find their architecture by ablation (Table 1: depth, heads, attention at
32/16/8, BigGAN up/down residual blocks, rescaled residuals; Table 2: channels per head; Table 3:
AdaGN vs addition) and train it with Improved DDPM's learned variances and L_hybrid (Nichol &
Dhariwal 2021). This script measures both at a CPU budget:

1. **Table 1 in shape.** A small base U-Net (``unet-mnist`` at ``--width`` channels: attention at
   7x7 with one head, AdaGN, stride-2 convolution / nearest upsampling) and the base with one
   change each (BigGAN up/down blocks; attention at 14 and 7, the paper's 32/16/8 scaled to 28
   pixels; a fixed head width of ``width / 2`` channels, the paper's 64 scaled to the width;
   residual outputs times 1/sqrt(2); the embedding added instead of AdaGN), plus all of the
   paper's choices together, each trained through difflab's training loop
   (``configs/mnist.yaml``'s recipe, warm-up cut to a tenth of the steps) for the same number of
   steps and images on MNIST and Fashion-MNIST, then scored by FD-MNIST / FD-Fashion (DDIM,
   ``--eval-steps``, ``--n`` images, the same seeds for every model). Training speed is images
   per CPU-second of the training process (one torch thread; the wall clock of a shared machine
   says little).
2. **Learned Σ vs fixed.** The base trained with ``model.learn_sigma=true`` and
   ``train.vlb_weight=0.001`` (L_hybrid) is sampled by DDPM with its learned Σ; the base trained
   with L_simple (part 1's MNIST row) with Σ = β̃ (the posterior variance) and Σ = β; FD-MNIST
   against the number of DDPM steps ``--ddpm-steps`` (respaced). Improved DDPM's Figure 8 shape:
   learned Σ keeps its quality at few steps, where β̃ degrades. Bits/dim (the whole bound, T
   network calls per image) of ``--n-bpd`` test images for both models (L_simple scored with β̃).

Every run's checkpoint and scores are kept in ``runs/adm/`` and reused by a rerun with the same
settings, so an interrupted run continues where it stopped. ``--quick`` is a smoke test (width 8,
a few steps, a few images; outputs ``adm_quick.*``; its numbers mean nothing).

    python benchmarks/adm.py --threads 1        # make bench-adm
    python benchmarks/adm.py --quick --out-dir /tmp/adm

Writes ``adm.{json,md,png}``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import statistics
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

import common as bench
from difflab.config import load_config
from difflab.data.dataset import load_dataset
from difflab.diffusion import Denoiser
from difflab.diffusion.vlb import bits_per_dim
from difflab.models import build_model, forward_gflops, model_config
from difflab.pipelines import evaluate_pipeline, load_pipeline
from difflab.training.loop import train

NAME = "adm"
CONFIG = bench.REPO / "configs" / "mnist.yaml"
RUNS_DIR = bench.REPO / "runs" / "adm"
BASE_PRESET = "unet-mnist"
DATASETS = ("mnist", "fashion-mnist")
VARIANCES = ("learned (L_hybrid)", "β̃ (L_simple)", "β (L_simple)")
VLB_WEIGHT = 0.001  # Improved DDPM's λ

# What the paper found for each change (Table 1, ImageNet 128x128, and Table 3 for AdaGN), as the
# direction of its FID change only: its exact values were not checked against the paper here, so
# none are shown.
PAPER_FINDING: dict[str, str] = {
    "BigGAN up/down": "better",
    "attention at 14, 7": "better (32, 16, 8)",
    "fixed head width": "better (64 ch/head best, Table 2)",
    "rescaled residuals": "worse",
    "addition (no AdaGN)": "worse (AdaGN better, Table 3)",
}


@dataclass(frozen=True)
class Variant:
    """One network of the ablation: a label and its fields over the base's."""

    label: str
    overrides: dict[str, Any] = field(default_factory=dict)
    train_overrides: dict[str, Any] = field(default_factory=dict)


def ablation(width: int) -> list[Variant]:
    """The base and each of the paper's changes alone, then all its choices together."""
    head = {"head_channels": max(width // 2, 1)}
    updown = {"resblock_updown": True}
    attention = {"attention_resolutions": [14, 7]}
    return [
        Variant("base"),
        Variant("BigGAN up/down", updown),
        Variant("attention at 14, 7", attention),
        Variant("fixed head width", head),
        Variant("rescaled residuals", {"rescale_residual": True}),
        Variant("addition (no AdaGN)", {"scale_shift_norm": False}),
        Variant("all ADM choices", {**updown, **attention, **head}),
    ]


HYBRID = Variant("base, L_hybrid", {"learn_sigma": True}, {"vlb_weight": VLB_WEIGHT})


@dataclass(frozen=True)
class Settings:
    """The budget of a run (recorded in the report)."""

    width: int
    steps: int
    batch_size: int
    n: int
    eval_steps: int
    n_sigma: int
    ddpm_steps: tuple[int, ...]
    n_bpd: int
    datasets: tuple[str, ...]
    variants: tuple[str, ...] = ()  # ablation labels to run; () = all
    seed: int = 0
    data_limit: int | None = None
    quick: bool = False

    @property
    def warmup_steps(self) -> int:
        return self.steps // 10

    @property
    def budget(self) -> str:
        """The training budget's name: ``w16-s80-b32`` (width, steps, batch size)."""
        return f"w{self.width}-s{self.steps}-b{self.batch_size}"


def cpu_seconds() -> float:
    """CPU time of this process (all its threads), in seconds."""
    return time.process_time()


def run_folder(runs_dir: Path, settings: Settings, dataset: str, variant: Variant) -> Path:
    """``RUNS/w16-s80-b32/mnist-biggan-up-down``: one folder per budget, dataset and variant."""
    name = variant.label.lower().replace(" ", "-").replace("/", "-")
    name = "".join(c for c in name if c.isalnum() or c == "-")
    return runs_dir / settings.budget / f"{dataset}-{name}"


def net_config(variant: Variant, width: int) -> tuple[str, Any]:
    """(architecture, config) of a variant at ``width`` base channels."""
    overrides = {**variant.overrides, "base_channels": width}
    overrides = {k: tuple(v) if isinstance(v, list) else v for k, v in overrides.items()}
    return model_config(BASE_PRESET, **overrides)


def train_variant(
    variant: Variant, dataset: str, settings: Settings, runs_dir: Path
) -> dict[str, Any]:
    """Train (or reuse) one model; ``{"checkpoint", "cpu_seconds", "images_per_cpu_second", ...}``."""
    out_dir = run_folder(runs_dir, settings, dataset, variant)
    record = out_dir / "benchmark.json"
    if record.exists():
        return {**bench.read_json(record), "reused": True}
    wanted = {"steps": settings.steps, "batch_size": settings.batch_size, "width": settings.width}
    overrides = [
        f"data.name={dataset}",
        f"model.preset={BASE_PRESET}",
        f"model.base_channels={settings.width}",
        f"train.steps={settings.steps}",
        f"train.batch_size={settings.batch_size}",
        f"train.warmup_steps={settings.warmup_steps}",
        f"train.out_dir={out_dir}",
        f"train.seed={settings.seed}",
        f"train.sample_every={settings.steps}",
        "train.sample_steps=2",
        f"train.checkpoint_every={settings.steps}",
        f"train.log_every={max(1, settings.steps // 10)}",
        *(f"model.{key}={json.dumps(value)}" for key, value in variant.overrides.items()),
        *(f"train.{key}={json.dumps(value)}" for key, value in variant.train_overrides.items()),
    ]
    if settings.data_limit is not None:
        overrides.append(f"data.limit={settings.data_limit}")
    config = load_config(CONFIG, overrides)
    resume = (out_dir / "checkpoints" / "last.safetensors").exists()  # an interrupted run
    start_cpu, start_wall = cpu_seconds(), time.perf_counter()
    checkpoint = train(config, resume=resume, progress=False)
    spent = cpu_seconds() - start_cpu
    images = settings.steps * settings.batch_size
    done = {
        **wanted,
        "checkpoint": str(checkpoint),
        "images": images,
        "cpu_seconds": spent,
        "wall_seconds": time.perf_counter() - start_wall,
        "images_per_cpu_second": None if resume else images / spent,
        "resumed": resume,
        "precision": "bf16" if config.train.bf16 is True else str(config.train.bf16),
    }
    bench.write_json(record, done)
    return {**done, "reused": False}


def cached_score(out_dir: Path, key: str, compute: Any) -> dict[str, Any]:
    """``compute()`` once per ``key`` for a run folder (kept in its ``scores.json``)."""
    path = out_dir / "scores.json"
    scores = bench.read_json(path) if path.exists() else {}
    if key not in scores:
        start = cpu_seconds()
        scores[key] = {**compute(), "cpu_seconds": cpu_seconds() - start}
        bench.write_json(path, scores)
    return scores[key]


def fd_score(checkpoint: str, n: int, sampler: str, steps: int, sigma_hat: bool) -> dict[str, Any]:
    """FD (and precision, recall) of ``n`` samples; every model gets the same seeds."""
    result = evaluate_pipeline(
        load_pipeline(checkpoint),
        n=n,
        sampler=sampler,
        steps=steps,
        sigma_hat=sigma_hat,
        seed=0,
        batch_size=min(n, 100),
    )
    return {key: result[key] for key in ("metric", "fd", "precision", "recall", "n")}


def ablation_rows(settings: Settings, runs_dir: Path) -> list[dict[str, Any]]:
    """Part 1: train and score every variant (``settings.variants``, default all) on every dataset."""
    rows = []
    chosen = [
        v for v in ablation(settings.width) if v.label in settings.variants or not settings.variants
    ]
    for dataset in settings.datasets:
        for variant in chosen:
            arch, config = net_config(variant, settings.width)
            trained = train_variant(variant, dataset, settings, runs_dir)
            out_dir = run_folder(runs_dir, settings, dataset, variant)
            key = f"ddim{settings.eval_steps}-n{settings.n}"
            scored = cached_score(
                out_dir,
                key,
                lambda t=trained: fd_score(
                    t["checkpoint"], settings.n, "ddim", settings.eval_steps, False
                ),
            )
            rows.append(
                {
                    "dataset": dataset,
                    "variant": variant.label,
                    "overrides": variant.overrides,
                    "parameters": bench.parameter_count(build_model(arch, config)),
                    "gflops": forward_gflops(arch, config),
                    "train": trained,
                    "score": scored,
                }
            )
            print(
                f"{dataset} {variant.label}: FD {scored['fd']:.2f}, "
                f"{trained['images_per_cpu_second']:.1f} images/CPU-s",
                flush=True,
            )
    return rows


def mean_and_sem(values: Sequence[float]) -> dict[str, float]:
    mean = statistics.fmean(values)
    sem = statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else 0.0
    return {"mean": mean, "sem": sem}


def bits_per_dim_score(checkpoint: str, n: int, seed: int) -> dict[str, Any]:
    """Bits/dim of the first ``n`` MNIST test images (the whole bound: T network calls each)."""
    pipeline = load_pipeline(checkpoint)
    x0 = load_dataset("mnist", split="test", limit=n).images  # (n, 1, 28, 28) in [-1, 1]
    bits = bits_per_dim(
        Denoiser(pipeline.net, pipeline.schedule), x0, torch.Generator().manual_seed(seed)
    )
    return {"n": n, **mean_and_sem(bits.tolist()), "values": bits.tolist()}


def sigma_rows(settings: Settings, runs_dir: Path) -> dict[str, Any]:
    """Part 2: FD against DDPM steps for learned Σ, β̃ and β; bits/dim with and without L_hybrid."""
    base = ablation(settings.width)[0]
    hybrid = train_variant(HYBRID, "mnist", settings, runs_dir)
    simple = train_variant(base, "mnist", settings, runs_dir)
    models = {
        VARIANCES[0]: (hybrid, HYBRID, False),
        VARIANCES[1]: (simple, base, False),
        VARIANCES[2]: (simple, base, True),
    }
    curves = []
    for variance, (trained, variant, sigma_hat) in models.items():
        out_dir = run_folder(runs_dir, settings, "mnist", variant)
        for steps in settings.ddpm_steps:
            key = f"ddpm{steps}{'-beta' if sigma_hat else ''}-n{settings.n_sigma}"
            scored = cached_score(
                out_dir,
                key,
                lambda t=trained, s=steps, h=sigma_hat: fd_score(
                    t["checkpoint"], settings.n_sigma, "ddpm", s, h
                ),
            )
            curves.append({"variance": variance, "steps": steps, "score": scored})
            print(f"DDPM {steps} steps, Σ = {variance}: FD {scored['fd']:.2f}", flush=True)
    bpd = []
    for label, trained, variant in (
        ("L_hybrid, learned Σ", hybrid, HYBRID),
        ("L_simple, β̃", simple, base),
    ):
        scored = cached_score(
            run_folder(runs_dir, settings, "mnist", variant),
            f"bpd-n{settings.n_bpd}-seed{settings.seed}",
            lambda t=trained: bits_per_dim_score(t["checkpoint"], settings.n_bpd, settings.seed),
        )
        bpd.append({"model": label, "score": scored})
        print(f"bits/dim {label}: {scored['mean']:.3f} ± {scored['sem']:.3f}", flush=True)
    return {"hybrid_train": hybrid, "simple_train": simple, "curves": curves, "bits_per_dim": bpd}


# ----------------------------------------------------------------------------- report


def measure(
    settings: Settings, parts: Sequence[str], runs_dir: Path, earlier: dict[str, Any]
) -> dict[str, Any]:
    """The parts at this budget, merged into the report of earlier runs (``earlier``): a budget's
    parts measured now replace its earlier ones; other budgets and parts are kept."""
    measured: dict[str, Any] = {}
    part_settings = dataclasses.asdict(settings)
    if "ablation" in parts:
        measured["ablation"] = {
            "settings": part_settings,
            "rows": ablation_rows(settings, runs_dir),
        }
    if "sigma" in parts:
        measured["sigma"] = {"settings": part_settings, **sigma_rows(settings, runs_dir)}
    budgets = {b["budget"]: b for b in earlier.get("budgets", [])}
    budget = {
        **budgets.get(settings.budget, {}),
        **measured,
        "budget": settings.budget,
        "recipe": dataclasses.asdict(load_config(CONFIG).train),
        "machine": bench.machine_info(),
    }
    budget["cpu_seconds"] = spent_cpu_seconds(budget)
    budgets[settings.budget] = budget
    ordered = sorted(
        budgets.values(), key=lambda b: b[next(k for k in PARTS if k in b)]["settings"]["steps"]
    )
    return {"budgets": ordered, "cpu_seconds": sum(b["cpu_seconds"] for b in ordered)}


PARTS = ("ablation", "sigma")


def spent_cpu_seconds(budget: dict[str, Any]) -> float:
    """CPU seconds of every training and scoring a budget's report rests on (each model once,
    reused runs included)."""
    trained: dict[str, float] = {}
    scored = 0.0
    for row in budget.get("ablation", {}).get("rows", []):
        trained[row["train"]["checkpoint"]] = row["train"]["cpu_seconds"]
        scored += row["score"]["cpu_seconds"]
    sigma = budget.get("sigma")
    if sigma:
        for run in (sigma["hybrid_train"], sigma["simple_train"]):
            trained[run["checkpoint"]] = run["cpu_seconds"]
        scored += sum(c["score"]["cpu_seconds"] for c in sigma["curves"])
        scored += sum(b["score"]["cpu_seconds"] for b in sigma["bits_per_dim"])
    return sum(trained.values()) + scored


def ablation_table(rows: list[dict[str, Any]]) -> str:
    datasets = list(dict.fromkeys(r["dataset"] for r in rows))
    by = {(r["dataset"], r["variant"]): r for r in rows}
    headers = ["change", "params (M)", "GFLOPs"]
    for d in datasets:
        headers += [f"FD {d}", "Δ vs base", f"img/CPU-s {d}"]
    headers.append("the paper's finding (ImageNet 128)")
    table = []
    for variant in dict.fromkeys(r["variant"] for r in rows):
        first = next(r for r in rows if r["variant"] == variant)
        line: list[Any] = [variant, first["parameters"] / 1e6, first["gflops"]]
        for d in datasets:
            row, base = by.get((d, variant)), by.get((d, "base"))
            if row is None:
                line += ["—", "—", "—"]
                continue
            fd = row["score"]["fd"]
            delta = "—" if variant == "base" or base is None else f"{fd - base['score']['fd']:+.2f}"
            line += [fd, delta, row["train"]["images_per_cpu_second"] or "—"]
        line.append(PAPER_FINDING.get(variant, ""))
        table.append(line)
    return bench.markdown_table(headers, table)


def sigma_table(curves: list[dict[str, Any]]) -> str:
    steps = sorted({c["steps"] for c in curves})
    table = []
    for variance in dict.fromkeys(c["variance"] for c in curves):
        fds = {c["steps"]: c["score"]["fd"] for c in curves if c["variance"] == variance}
        table.append([variance, *(fds.get(s, "—") for s in steps)])
    return bench.markdown_table(["Σ", *(f"{s} steps" for s in steps)], table)


def bpd_table(bits: list[dict[str, Any]]) -> str:
    rows = [
        [b["model"], bench.format_spread(b["score"]["mean"], b["score"]["sem"], 3), b["score"]["n"]]
        for b in bits
    ]
    table = bench.markdown_table(["model", "bits/dim (± s.e.m.)", "images"], rows)
    values = [b["score"].get("values") for b in bits]
    if len(values) != 2 or None in values:
        return table
    difference = mean_and_sem([a - b for a, b in zip(*values, strict=True)])
    return (
        f"{table}\n\nPaired difference ({bits[0]['model']} − {bits[1]['model']}; the same images "
        f"and the same noise draws): {bench.format_spread(difference['mean'], difference['sem'], 3)}"
        " bits/dim."
    )


def budget_line(s: dict[str, Any], recipe: dict[str, Any]) -> str:
    return (
        f"U-Nets of width {s['width']} (`{BASE_PRESET}` sizes otherwise), {s['steps']} steps of "
        f"{s['batch_size']} images ({s['steps'] * s['batch_size']:,} images per model; "
        f"configs/mnist.yaml's lr {recipe['lr']}, warm-up {s['steps'] // 10} steps, EMA "
        f"{recipe['ema_decay']} with warm-up), trained on one torch thread"
    )


def render_budget(budget: dict[str, Any]) -> list[str]:
    first = budget[next(k for k in PARTS if k in budget)]["settings"]
    parts = [
        f"## Budget {budget['budget']}",
        f"{budget_line(first, budget['recipe'])}; {budget['cpu_seconds'] / 60:.1f} CPU-minutes "
        f"for its trainings and scores. {bench.machine_line(budget['machine'])}",
    ]
    if "ablation" in budget:
        s = budget["ablation"]["settings"]
        parts += [
            "### Table 1 in shape (each change alone over the base)",
            f"FD in the dataset's feature space (FD-MNIST / FD-Fashion: the evaluation suite's "
            f"CNNs) of n = {s['n']} samples (DDIM, {s['eval_steps']} steps, η = 0, the same seeds "
            "for every model) against the test set; lower is better. Training speed: images per "
            "CPU-second of the training process. At n this small FD is biased upward and its "
            "spread between seeds is several units: read differences of a few units as noise.",
            ablation_table(budget["ablation"]["rows"]),
        ]
    if "sigma" in budget:
        s = budget["sigma"]["settings"]
        parts += [
            "### Learned Σ vs fixed (MNIST)",
            f"FD-MNIST of n = {s['n_sigma']} DDPM samples against the number of (respaced) steps: "
            "the base trained with L_hybrid (λ = 0.001) sampled with its learned Σ, and the base "
            "trained with L_simple sampled with Σ = β̃ and Σ = β.",
            sigma_table(budget["sigma"]["curves"]),
            f"Bits/dim (the whole variational bound: T = 1000 terms plus L_T) of the first "
            f"{s['n_bpd']} MNIST test images:",
            bpd_table(budget["sigma"]["bits_per_dim"]),
        ]
    return parts


def render(report: dict[str, Any]) -> str:
    quick = render_quick(report)
    title = "# Diffusion Models Beat GANs, the rest: architecture ablation and learned Σ"
    summary = (
        f"{len(report['budgets'])} training budget(s), {report['cpu_seconds'] / 60:.1f} "
        "CPU-minutes in all (trainings and scores; process CPU time, summed over its threads)."
    )
    parts = [title + (" (quick: numbers mean nothing)" if quick else ""), summary]
    for budget in report["budgets"]:
        parts += render_budget(budget)
    return bench.sections(*parts)


def figures(report: dict[str, Any], out_dir: Path) -> list[Path]:
    plt = bench.pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.4))
    series = [
        (b["budget"], row)
        for b in report["budgets"]
        for row in b.get("ablation", {}).get("rows", [])
    ]
    variants = list(dict.fromkeys(row["variant"] for _, row in series))
    groups = list(dict.fromkeys((budget, row["dataset"]) for budget, row in series))
    width = 0.8 / max(len(groups), 1)
    for i, (budget, dataset) in enumerate(groups):
        fds = {
            r["variant"]: r["score"]["fd"]
            for b, r in series
            if (b, r["dataset"]) == (budget, dataset)
        }
        xs = [j + i * width for j in range(len(variants))]
        axes[0].bar(
            xs, [fds.get(v, float("nan")) for v in variants], width, label=f"{dataset}, {budget}"
        )
    axes[0].set_xticks([j + 0.4 - width / 2 for j in range(len(variants))])
    axes[0].set_xticklabels(variants, rotation=30, ha="right", fontsize=8)
    axes[0].set_ylabel("FD (lower is better)")
    axes[0].set_title("architecture ablation, same budget per model")
    for budget in report["budgets"]:
        curves = budget.get("sigma", {}).get("curves", [])
        for variance in dict.fromkeys(c["variance"] for c in curves):
            points = sorted(
                (c["steps"], c["score"]["fd"]) for c in curves if c["variance"] == variance
            )
            axes[1].plot(
                *zip(*points, strict=True), marker="o", label=f"{variance}, {budget['budget']}"
            )
    axes[1].set_xscale("log")
    axes[1].set_xlabel("DDPM steps")
    axes[1].set_ylabel("FD-MNIST")
    axes[1].set_title("learned vs fixed Σ")
    for ax in axes:
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize="x-small")
    return [bench.save_figure(fig, out_dir / f"{bench.stem_of(NAME, render_quick(report))}.png")]


def render_quick(report: dict[str, Any]) -> bool:
    return any(b[k]["settings"]["quick"] for b in report["budgets"] for k in PARTS if k in b)


def comma_list_of(args: Any) -> tuple[str, ...]:
    """The ``--variants`` labels (commas inside a label are not used)."""
    return bench.comma_list(args.variants)


def main(argv: Sequence[str] | None = None) -> int:
    parser = bench.bench_parser(__doc__, "tiny models, a few steps and images (a smoke test)")
    parser.add_argument("--parts", default="ablation,sigma", help="ablation and/or sigma")
    parser.add_argument("--width", type=int, default=16, help="base channels (default 16)")
    parser.add_argument("--train-steps", type=int, default=80)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--n", type=int, default=128, help="samples per ablation FD")
    parser.add_argument("--eval-steps", type=int, default=10, help="DDIM steps of the ablation")
    parser.add_argument("--n-sigma", type=int, default=64, help="samples per DDPM FD")
    parser.add_argument("--ddpm-steps", default="25,50,100,250")
    parser.add_argument("--n-bpd", type=int, default=8, help="test images scored in bits/dim")
    parser.add_argument("--datasets", default=",".join(DATASETS))
    parser.add_argument("--variants", default="", help="ablation labels to run (default: all)")
    parser.add_argument("--runs-dir", type=Path, default=RUNS_DIR)
    args = bench.parse(parser, argv)
    if args.quick:
        settings = Settings(
            8,
            2,
            8,
            10,
            2,
            10,
            (2, 5),
            2,
            ("mnist",),
            comma_list_of(args),
            data_limit=64,
            quick=True,
        )
    else:
        settings = Settings(
            args.width,
            args.train_steps,
            args.batch_size,
            args.n,
            args.eval_steps,
            args.n_sigma,
            tuple(int(s) for s in bench.comma_list(args.ddpm_steps)),
            args.n_bpd,
            bench.comma_list(args.datasets),
            comma_list_of(args),
        )
    parts = bench.comma_list(args.parts)

    def run() -> dict[str, Any]:
        if not args.quick:
            path = args.out_dir / f"{NAME}.json"
            earlier = bench.read_json(path) if path.is_file() else {}
            return measure(settings, parts, args.runs_dir, earlier)
        with tempfile.TemporaryDirectory() as runs:
            return measure(settings, parts, Path(runs), {})

    return bench.publish(args, NAME, run, render, figures)


if __name__ == "__main__":
    raise SystemExit(main())
