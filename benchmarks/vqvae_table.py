"""VQ-VAE on MNIST and Fashion-MNIST: reconstruction, codebook health, the prior, quantiser speed (issue 6).

van den Oord et al., "Neural Discrete Representation Learning" (NeurIPS 2017), measured in four parts:

1. **models**: the shipped ``weights/vqvae_mnist`` on the MNIST test set (MSE and PSNR on [0, 1]
   pixels, % of the 512 codes in use, code perplexity), the shipped prior
   ``weights/vqvae_prior_mnist`` (test NLL in bits per code and bits per image dimension), and
   FD-MNIST / precision / recall / label accuracy of ``--n`` prior samples (balanced labels)
   beside the same numbers for the diffusion model ``weights/mnist_ddim`` (DDIM, 50 steps,
   unconditional) in the same run. Goal: PSNR >= 25 dB at the 7x7 grid.
2. **ablation**: the codebook options, each trained with ``configs/vqvae_mnist.yaml`` for
   ``--ablation-steps`` on MNIST and on Fashion-MNIST: EMA vs codebook-loss updates, each with and
   without dead-code restarts (and k-means initialisation with the restarts). Test-set MSE, PSNR,
   codebook usage and perplexity. Goal: >= 90 % of the codes in use with restarts. The runs are
   shorter than the shipped model's, so their PSNR is lower; they compare options, not models.
3. **speed**: one training-mode quantisation (forward and backward, K = 512, D = 64, EMA
   codebook, 128 x 7 x 7 vectors) and one eval-mode quantisation, difflab's
   :class:`VectorQuantizer` vs vector-quantize-pytorch's ``VectorQuantize`` with the same settings,
   timed interleaved in the same run.

    python benchmarks/vqvae_table.py                 # make bench-vqvae
    python benchmarks/vqvae_table.py --parts speed   # one part
    python benchmarks/vqvae_table.py --quick         # smoke test (numbers measure nothing)

Writes ``benchmarks/results/vqvae.{json,md,png}`` (``vqvae_quick.*`` with ``--quick``).
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from common import (
    RESULTS_DIR,
    interleaved_timings,
    machine_info,
    markdown_table,
    write_json,
    write_text,
)
from difflab.autoencoders import VectorQuantizer
from difflab.config import load_config
from difflab.data import load_dataset
from difflab.errors import DifflabError
from difflab.io.checkpoint import load_checkpoint_meta
from difflab.metrics.evaluate import evaluate_samples
from difflab.pipelines import load_diffusion_model
from difflab.pipelines.vqvae import load_code_prior, load_vqvae, sample_vqvae
from difflab.training.vqvae_loop import reconstruction_stats, train_vqvae

NAME = "vqvae"
ROOT = Path(__file__).resolve().parents[1]
PARTS = ("models", "ablation", "speed")
VQVAE_WEIGHTS = ROOT / "weights" / "vqvae_mnist.safetensors"
PRIOR_WEIGHTS = ROOT / "weights" / "vqvae_prior_mnist.safetensors"
DIFFUSION_WEIGHTS = ROOT / "weights" / "mnist_ddim.safetensors"
CONFIG = ROOT / "configs" / "vqvae_mnist.yaml"
ABLATION_DIR = ROOT / "runs" / "vqvae_ablation"
VARIANTS: dict[str, list[str]] = {
    "EMA + restarts + k-means": [
        "model.codebook_update=ema",
        "model.restart_after=100",
        "model.kmeans_init=true",
    ],
    "EMA": ["model.codebook_update=ema", "model.restart_after=0", "model.kmeans_init=false"],
    "loss + restarts + k-means": [
        "model.codebook_update=loss",
        "model.restart_after=100",
        "model.kmeans_init=true",
    ],
    "loss": ["model.codebook_update=loss", "model.restart_after=0", "model.kmeans_init=false"],
}
DATASETS = ("mnist", "fashion-mnist")
PSNR_GOAL_DB = 25.0
USAGE_GOAL = 0.90


def part_models(n: int, sample_steps: int, quick: bool) -> dict[str, Any]:
    """The shipped VQ-VAE and prior on MNIST, and their samples beside the diffusion model's."""
    test = load_dataset("mnist", split="test", limit=200 if quick else None)
    vqvae = load_vqvae(VQVAE_WEIGHTS)
    reconstruction = reconstruction_stats(vqvae, test.images)
    prior_meta = load_checkpoint_meta(PRIOR_WEIGHTS)
    prior, autoencoder = load_code_prior(PRIOR_WEIGHTS)
    labels = torch.arange(n) % prior.config.num_classes
    start = time.perf_counter()
    images = sample_vqvae(prior, autoencoder, n, labels, seed=0)
    prior_seconds = time.perf_counter() - start
    prior_eval = evaluate_samples(images, "mnist", labels=labels)
    diffusion = load_diffusion_model(DIFFUSION_WEIGHTS)
    start = time.perf_counter()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        diffusion_images = diffusion.sample(n, sampler="ddim", steps=sample_steps, seed=0)
    diffusion_seconds = time.perf_counter() - start
    diffusion_eval = evaluate_samples(diffusion_images.float(), "mnist")
    return {
        "reconstruction": reconstruction,
        "psnr_goal_met": reconstruction["psnr"] >= PSNR_GOAL_DB,
        "prior_test": prior_meta.get("test"),
        "samples": {
            "n": n,
            "vqvae_prior": {**_eval_row(prior_eval), "seconds": prior_seconds},
            "diffusion_ddim": {
                **_eval_row(diffusion_eval),
                "seconds": diffusion_seconds,
                "steps": sample_steps,
            },
        },
    }


def _eval_row(result: dict[str, Any]) -> dict[str, Any]:
    keys = ("fd", "precision", "recall", "label_accuracy")
    return {key: result.get(key) for key in keys}


def part_ablation(steps: int, quick: bool, run_root: Path) -> list[dict[str, Any]]:
    """Train every codebook variant on both datasets for ``steps``; test statistics of each."""
    rows = []
    for dataset in DATASETS:
        try:
            test = load_dataset(dataset, split="test", limit=200 if quick else None)
        except DifflabError as error:
            print(f"skipping {dataset}: {error}")
            continue
        for variant, overrides in VARIANTS.items():
            slug = variant.replace(" + ", "-").replace(" ", "")
            out_dir = run_root / f"{dataset}-{slug}-{steps}"
            extra = [f"data.name={dataset}", f"train.steps={steps}", f"train.out_dir={out_dir}"]
            if quick:
                extra += ["data.limit=256", "train.batch_size=32", "model.preset=vqvae-tiny"]
            config = load_config(CONFIG, [*overrides, *extra, "train.sample_every=100000"])
            model_path = out_dir / "model.safetensors"
            start = time.perf_counter()
            if not model_path.exists():
                train_vqvae(config, resume=(out_dir / "checkpoints").exists(), progress=False)
            seconds = time.perf_counter() - start
            model = load_vqvae(model_path)
            stats = reconstruction_stats(model, test.images)
            restarts = int(model.quantizer.restarts)
            rows.append(
                {
                    "dataset": dataset,
                    "variant": variant,
                    "steps": steps,
                    **stats,
                    "restarts": restarts,
                    "train_seconds": seconds,
                }
            )
            print(
                f"{dataset:14s} {variant:28s} PSNR {stats['psnr']:.2f} dB, usage "
                f"{100 * stats['codebook_usage']:.1f} %, perplexity {stats['perplexity']:.0f}"
            )
    return rows


def part_speed(repeats: int) -> dict[str, Any]:
    """Training- and eval-mode quantisation: difflab vs vector-quantize-pytorch, same settings."""
    from vector_quantize_pytorch import VectorQuantize

    torch.manual_seed(0)
    num_codes, code_dim, batch, side = 512, 64, 128, 7
    ours = VectorQuantizer(num_codes, code_dim, update="ema", ema_decay=0.99)
    theirs = VectorQuantize(
        dim=code_dim, codebook_size=num_codes, decay=0.99, commitment_weight=0.25
    )
    z_ours = torch.randn(batch, code_dim, side, side, requires_grad=True)  # (B, D, h, w)
    z_theirs = z_ours.detach().permute(0, 2, 3, 1).reshape(batch, side * side, code_dim)
    z_theirs.requires_grad_(True)  # (B, h*w, D): their layout

    def train_ours() -> None:
        out = ours.train()(z_ours)
        (out.z_q.sum() + 0.25 * out.commitment_loss).backward()

    def train_theirs() -> None:
        quantized, _, loss = theirs.train()(z_theirs)
        (quantized.sum() + loss.sum()).backward()

    def eval_ours() -> None:
        with torch.no_grad():
            ours.eval()(z_ours)

    def eval_theirs() -> None:
        with torch.no_grad():
            theirs.eval()(z_theirs)

    timings = interleaved_timings(
        {
            "difflab train": train_ours,
            "vector-quantize-pytorch train": train_theirs,
            "difflab eval": eval_ours,
            "vector-quantize-pytorch eval": eval_theirs,
        },
        warmup=3,
        repeats=repeats,
    )
    result: dict[str, Any] = {
        "num_codes": num_codes,
        "code_dim": code_dim,
        "vectors": batch * side * side,
        "ms": {name: 1000 * timing.median for name, timing in timings.items()},
    }
    for mode in ("train", "eval"):
        ms = result["ms"]
        result[f"{mode}_speedup"] = ms[f"vector-quantize-pytorch {mode}"] / ms[f"difflab {mode}"]
    return result


def write_report(report: dict[str, Any], out_dir: Path, quick: bool) -> None:
    stem = NAME + ("_quick" if quick else "")
    write_json(out_dir / f"{stem}.json", report)
    lines = [f"# VQ-VAE{' (quick: numbers measure nothing)' if quick else ''}", ""]
    models = report.get("models")
    if models:
        rec, prior = models["reconstruction"], models.get("prior_test") or {}
        lines += [
            "## Shipped models (MNIST test set)",
            "",
            markdown_table(
                ["model", "MSE", "PSNR (dB)", "codes used", "perplexity", "bits/code", "bits/dim"],
                [
                    [
                        "weights/vqvae_mnist (7x7, K=512)",
                        f"{rec['mse']:.5f}",
                        f"{rec['psnr']:.2f}",
                        f"{100 * rec['codebook_usage']:.1f} %",
                        f"{rec['perplexity']:.0f}",
                        "",
                        "",
                    ],
                    [
                        "weights/vqvae_prior_mnist",
                        "",
                        "",
                        "",
                        "",
                        _fmt(prior.get("bits_per_code"), 3),
                        _fmt(prior.get("bits_per_image_dim"), 4),
                    ],
                ],
            ),
            "",
            f"PSNR goal >= {PSNR_GOAL_DB:g} dB: {'met' if models['psnr_goal_met'] else 'MISSED'}. "
            f"A uniform prior costs {math.log2(512):.0f} bits per code.",
            "",
            f"Samples (n = {models['samples']['n']}, FD-MNIST space):",
            "",
            markdown_table(
                ["generator", "FD-MNIST", "precision", "recall", "label accuracy", "seconds"],
                [
                    [
                        name,
                        _fmt(row["fd"], 3),
                        _fmt(row["precision"], 3),
                        _fmt(row["recall"], 3),
                        _fmt(row["label_accuracy"], 3),
                        f"{row['seconds']:.1f}",
                    ]
                    for name, row in (
                        ("VQ-VAE + prior (labels 0..9)", models["samples"]["vqvae_prior"]),
                        (
                            f"diffusion mnist_ddim, DDIM-{models['samples']['diffusion_ddim']['steps']}",
                            models["samples"]["diffusion_ddim"],
                        ),
                    )
                ],
            ),
            "",
        ]
    ablation = report.get("ablation")
    if ablation:
        lines += [
            f"## Codebook ablation ({ablation[0]['steps']} steps each, test sets)",
            "",
            markdown_table(
                ["dataset", "codebook", "MSE", "PSNR (dB)", "codes used", "perplexity", "restarts"],
                [
                    [
                        row["dataset"],
                        row["variant"],
                        f"{row['mse']:.5f}",
                        f"{row['psnr']:.2f}",
                        f"{100 * row['codebook_usage']:.1f} %",
                        f"{row['perplexity']:.0f}",
                        row["restarts"],
                    ]
                    for row in ablation
                ],
            ),
            "",
            f"Usage goal >= {100 * USAGE_GOAL:.0f} % with restarts: "
            + ", ".join(
                f"{row['dataset']} {row['variant']}: "
                f"{'met' if row['codebook_usage'] >= USAGE_GOAL else 'MISSED'}"
                for row in ablation
                if "restarts" in row["variant"]
            )
            + ".",
            "",
        ]
    speed = report.get("speed")
    if speed:
        ms = speed["ms"]
        lines += [
            f"## Quantiser speed (K = {speed['num_codes']}, D = {speed['code_dim']}, "
            f"{speed['vectors']} vectors, EMA codebook; median ms per call)",
            "",
            markdown_table(
                ["mode", "difflab", "vector-quantize-pytorch", "speed-up"],
                [
                    [
                        mode,
                        f"{ms[f'difflab {mode}']:.2f}",
                        f"{ms[f'vector-quantize-pytorch {mode}']:.2f}",
                        f"{speed[f'{mode}_speedup']:.2f}x",
                    ]
                    for mode in ("train", "eval")
                ],
            ),
            "",
        ]
    write_text(out_dir / f"{stem}.md", "\n".join(lines))
    if ablation:
        _plot_ablation(ablation, out_dir / f"{stem}.png")


def _fmt(value: float | None, digits: int) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def _plot_ablation(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    for axis, key, label in (
        (axes[0], "codebook_usage", "codes in use (fraction)"),
        (axes[1], "psnr", "test PSNR (dB)"),
    ):
        for offset, dataset in enumerate(DATASETS):
            values = [row[key] for row in rows if row["dataset"] == dataset]
            names = [row["variant"] for row in rows if row["dataset"] == dataset]
            positions = [i + 0.4 * offset for i in range(len(values))]
            axis.bar(positions, values, width=0.4, label=dataset)
            axis.set_xticks([i + 0.2 for i in range(len(names))], names, rotation=20, fontsize=7)
        axis.set_ylabel(label)
        axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--parts", default=",".join(PARTS), help=f"comma list of {PARTS}")
    parser.add_argument("--n", type=int, default=1000, help="samples per FD")
    parser.add_argument(
        "--sample-steps", type=int, default=50, help="DDIM steps of the diffusion model"
    )
    parser.add_argument(
        "--ablation-steps", type=int, default=600, help="training steps per variant"
    )
    parser.add_argument("--repeats", type=int, default=20, help="timed rounds of the speed part")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--quick", action="store_true", help="smoke test: tiny sizes")
    parser.add_argument("--out-dir", type=Path, default=RESULTS_DIR)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    parts = tuple(part.strip() for part in args.parts.split(",") if part.strip())
    unknown = set(parts) - set(PARTS)
    if unknown:
        parser.error(f"unknown parts {sorted(unknown)}; choose from {PARTS}")
    report: dict[str, Any] = {
        "machine": machine_info(["vector-quantize-pytorch", "diffusers"]),
        "quick": args.quick,
    }
    with tempfile.TemporaryDirectory() as scratch:
        if "models" in parts:
            n, steps = (20, 2) if args.quick else (args.n, args.sample_steps)
            report["models"] = part_models(n, steps, args.quick)
        if "ablation" in parts:
            root = Path(scratch) if args.quick else ABLATION_DIR
            steps = 4 if args.quick else args.ablation_steps
            report["ablation"] = part_ablation(steps, args.quick, root)
        if "speed" in parts:
            report["speed"] = part_speed(3 if args.quick else args.repeats)
    write_report(report, args.out_dir, args.quick)
    print(f"wrote {args.out_dir / (NAME + ('_quick' if args.quick else ''))}.{{json,md,png}}")


if __name__ == "__main__":
    main()
