"""VQ-VAE on MNIST and Fashion-MNIST: reconstruction, codebook health, prior, quantiser speed.

van den Oord et al., "Neural Discrete Representation Learning" (NeurIPS 2017), measured in parts:

1. **models**: the shipped ``weights/vqvae_mnist`` on the MNIST test set (MSE and PSNR on [0, 1]
   pixels, % of the 512 codes in use, code perplexity), the shipped prior
   ``weights/vqvae_prior_mnist`` (test NLL in bits per code and bits per image dimension), and
   FD-MNIST / precision / recall / label accuracy of ``--n`` prior samples (balanced labels)
   beside the same numbers for the diffusion model ``weights/mnist_ddim`` (``evaluate_pipeline``:
   DDIM, 50 steps, bf16, unconditional) in the same run. Goal: PSNR >= 25 dB at the 7x7 grid.
2. **ablation**: the codebook options, each trained with ``configs/vqvae_mnist.yaml`` for
   ``--ablation-steps`` on MNIST and on Fashion-MNIST: EMA vs codebook-loss updates, each with and
   without dead-code restarts (and k-means initialisation with the restarts). Test-set MSE, PSNR,
   codebook usage and perplexity. Goal: >= 90 % of the codes in use with restarts. The runs are
   shorter than the shipped model's, so their PSNR is lower; they compare options, not models.
3. **speed**: one training-mode quantisation (forward and backward, K = 512, D = 64, EMA
   codebook, 128 x 7 x 7 vectors) and one eval-mode quantisation, difflab's
   :class:`VectorQuantizer` vs vector-quantize-pytorch's ``VectorQuantize`` with the same settings,
   timed interleaved in the same run (skipped, with a note, when that package is absent).

    python benchmarks/vqvae_table.py                 # make bench-vqvae
    python benchmarks/vqvae_table.py --parts speed   # one part
    python benchmarks/vqvae_table.py --quick         # smoke test (numbers measure nothing)

Writes ``vqvae.{json,md,png}`` (``vqvae_quick.*`` with ``--quick``).
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

import common as bench
from difflab.autoencoders import VectorQuantizer
from difflab.config import load_config
from difflab.data import load_dataset
from difflab.errors import DifflabError
from difflab.io.checkpoint import load_checkpoint_meta
from difflab.metrics.evaluate import evaluate_samples
from difflab.pipelines import evaluate_pipeline, load_pipeline
from difflab.pipelines.vqvae import load_code_prior, load_vqvae, sample_vqvae
from difflab.training.vqvae_loop import reconstruction_stats, train_vqvae

NAME = "vqvae"
PARTS = ("models", "ablation", "speed")
VQVAE_WEIGHTS = bench.REPO / "weights" / "vqvae_mnist.safetensors"
PRIOR_WEIGHTS = bench.REPO / "weights" / "vqvae_prior_mnist.safetensors"
DIFFUSION_WEIGHTS = bench.REPO / "weights" / "mnist_ddim.safetensors"
CONFIG = bench.REPO / "configs" / "vqvae_mnist.yaml"
ABLATION_DIR = bench.REPO / "runs" / "vqvae_ablation"
VARIANTS: dict[str, list[str]] = {
    "EMA + restarts + k-means": ["ema", "100", "true"],
    "EMA": ["ema", "0", "false"],
    "loss + restarts + k-means": ["loss", "100", "true"],
    "loss": ["loss", "0", "false"],
}  # model.codebook_update, model.restart_after, model.kmeans_init
DATASETS = ("mnist", "fashion-mnist")
PSNR_GOAL_DB = 25.0
USAGE_GOAL = 0.90
PEER = "vector_quantize_pytorch"


def part_models(n: int, sample_steps: int, quick: bool) -> dict[str, Any]:
    """The shipped VQ-VAE and prior on MNIST, and their samples beside the diffusion model's."""
    test = load_dataset("mnist", split="test", limit=200 if quick else None)
    reconstruction = reconstruction_stats(load_vqvae(VQVAE_WEIGHTS), test.images)
    prior, autoencoder = load_code_prior(PRIOR_WEIGHTS)
    labels = torch.arange(n) % prior.config.num_classes
    start = time.perf_counter()
    images = sample_vqvae(prior, autoencoder, n, labels, seed=0)
    prior_seconds = time.perf_counter() - start
    prior_eval = evaluate_samples(images, "mnist", labels=labels)
    diffusion = evaluate_pipeline(
        load_pipeline(DIFFUSION_WEIGHTS, precision="bf16"), n, steps=sample_steps, seed=0
    )
    keys = ("fd", "precision", "recall", "label_accuracy")
    return {
        "reconstruction": reconstruction,
        "psnr_goal_met": reconstruction["psnr"] >= PSNR_GOAL_DB,
        "prior_test": load_checkpoint_meta(PRIOR_WEIGHTS).get("test"),
        "samples": {
            "n": n,
            "vqvae_prior": {**{k: prior_eval.get(k) for k in keys}, "seconds": prior_seconds},
            "diffusion_ddim": {
                **{k: diffusion.get(k) for k in keys},
                "seconds": diffusion["sample_seconds"],
                "steps": sample_steps,
            },
        },
    }


def part_ablation(steps: int, quick: bool, run_root: Path) -> list[dict[str, Any]]:
    """Train every codebook variant on both datasets for ``steps``; test statistics of each."""
    rows = []
    for dataset in DATASETS:
        try:
            test = load_dataset(dataset, split="test", limit=200 if quick else None)
        except DifflabError as error:
            print(f"skipping {dataset}: {error}")
            continue
        for variant, (update, restart_after, kmeans) in VARIANTS.items():
            slug = variant.replace(" + ", "-").replace(" ", "")
            out_dir = run_root / f"{dataset}-{slug}-{steps}"
            overrides = [
                f"model.codebook_update={update}",
                f"model.restart_after={restart_after}",
                f"model.kmeans_init={kmeans}",
                f"data.name={dataset}",
                f"train.steps={steps}",
                f"train.out_dir={out_dir}",
                "train.sample_every=100000",
            ]
            if quick:
                overrides += ["data.limit=64", "train.batch_size=16", "model.preset=vqvae-tiny"]
            start = time.perf_counter()
            if not (out_dir / "model.safetensors").exists():
                config = load_config(CONFIG, overrides)
                train_vqvae(config, resume=(out_dir / "checkpoints").exists(), progress=False)
            seconds = time.perf_counter() - start
            model = load_vqvae(out_dir / "model.safetensors")
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


def part_speed(warmup: int, repeats: int) -> dict[str, Any]:
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

    @torch.no_grad()
    def eval_ours() -> None:
        ours.eval()(z_ours)

    @torch.no_grad()
    def eval_theirs() -> None:
        theirs.eval()(z_theirs)

    calls = {
        "difflab train": train_ours,
        "vector-quantize-pytorch train": train_theirs,
        "difflab eval": eval_ours,
        "vector-quantize-pytorch eval": eval_theirs,
    }
    timings = bench.interleaved_timings(calls, warmup=warmup, repeats=repeats)
    ms = {name: 1000 * timing.median for name, timing in timings.items()}
    result = {
        "num_codes": num_codes,
        "code_dim": code_dim,
        "vectors": batch * side * side,
        "ms": ms,
    }
    for mode in ("train", "eval"):
        result[f"{mode}_speedup"] = ms[f"vector-quantize-pytorch {mode}"] / ms[f"difflab {mode}"]
    return result


# ----------------------------------------------------------------------------- report


def models_markdown(models: dict[str, Any]) -> str:
    """The shipped models' reconstruction and NLL, and their samples beside the diffusion model's."""
    rec, samples = models["reconstruction"], models["samples"]
    prior = models.get("prior_test") or {}
    shipped = [f"{rec['mse']:.5f}", f"{rec['psnr']:.2f}", f"{100 * rec['codebook_usage']:.1f} %"]
    nll = [
        bench.fmt(prior.get("bits_per_code"), 3, ""),
        bench.fmt(prior.get("bits_per_image_dim"), 4, ""),
    ]
    rows = [
        ["weights/vqvae_mnist (7x7, K=512)", *shipped, f"{rec['perplexity']:.0f}", "", ""],
        ["weights/vqvae_prior_mnist", "", "", "", "", *nll],
    ]
    diffusion = samples["diffusion_ddim"]
    generators = {
        "VQ-VAE + prior (labels 0..9)": samples["vqvae_prior"],
        f"diffusion mnist_ddim, DDIM-{diffusion['steps']}": diffusion,
    }
    keys = ("fd", "precision", "recall", "label_accuracy")
    sample_rows = [
        [name, *(bench.fmt(row[k], 3, "") for k in keys), f"{row['seconds']:.1f}"]
        for name, row in generators.items()
    ]
    return bench.sections(
        "## Shipped models (MNIST test set)",
        bench.markdown_table(
            ["model", "MSE", "PSNR (dB)", "codes used", "perplexity", "bits/code", "bits/dim"], rows
        ),
        f"PSNR goal >= {PSNR_GOAL_DB:g} dB: {'met' if models['psnr_goal_met'] else 'MISSED'}. "
        f"A uniform prior costs {math.log2(512):.0f} bits per code.",
        f"Samples (n = {samples['n']}, FD-MNIST space):",
        bench.markdown_table(
            ["generator", "FD-MNIST", "precision", "recall", "label accuracy", "seconds"],
            sample_rows,
        ),
    )


def ablation_markdown(ablation: list[dict[str, Any]]) -> str:
    """Every codebook variant on every dataset, and the usage goal."""
    rows = [
        [
            r["dataset"],
            r["variant"],
            f"{r['mse']:.5f}",
            f"{r['psnr']:.2f}",
            f"{100 * r['codebook_usage']:.1f} %",
            f"{r['perplexity']:.0f}",
            r["restarts"],
        ]
        for r in ablation
    ]
    goals = ", ".join(
        f"{r['dataset']} {r['variant']}: {'met' if r['codebook_usage'] >= USAGE_GOAL else 'MISSED'}"
        for r in ablation
        if "restarts" in r["variant"]
    )
    return bench.sections(
        f"## Codebook ablation ({ablation[0]['steps']} steps each, test sets)",
        bench.markdown_table(
            ["dataset", "codebook", "MSE", "PSNR (dB)", "codes used", "perplexity", "restarts"],
            rows,
        ),
        f"Usage goal >= {100 * USAGE_GOAL:.0f} % with restarts: {goals}.",
    )


def speed_markdown(speed: dict[str, Any]) -> str:
    """Quantiser milliseconds of both libraries, training and eval mode."""
    ms = speed["ms"]
    rows = [
        [
            mode,
            f"{ms[f'difflab {mode}']:.2f}",
            f"{ms[f'vector-quantize-pytorch {mode}']:.2f}",
            f"{speed[f'{mode}_speedup']:.2f}x",
        ]
        for mode in ("train", "eval")
    ]
    return bench.sections(
        f"## Quantiser speed (K = {speed['num_codes']}, D = {speed['code_dim']}, "
        f"{speed['vectors']} vectors, EMA codebook; median ms per call)",
        bench.markdown_table(["mode", "difflab", "vector-quantize-pytorch", "speed-up"], rows),
    )


def render_markdown(report: dict[str, Any]) -> str:
    """Every part the JSON holds, as markdown."""
    skipped = report.get("speed_skipped")
    return bench.sections(
        f"# VQ-VAE{' (quick: numbers measure nothing)' if report['quick'] else ''}",
        models_markdown(report["models"]) if report.get("models") else "",
        ablation_markdown(report["ablation"]) if report.get("ablation") else "",
        speed_markdown(report["speed"]) if report.get("speed") else "",
        f"Quantiser speed: skipped ({skipped})." if skipped else "",
        "" if report["quick"] or "machine" not in report else bench.machine_line(report["machine"]),
    )


def figures(report: dict[str, Any], out_dir: Path) -> list[Path]:
    """Codebook usage and PSNR of every ablation run, per dataset."""
    rows = report.get("ablation")
    if not rows:
        return []
    figure, axes = bench.pyplot().subplots(1, 2, figsize=(10, 3.5))
    for axis, key, label in (
        (axes[0], "codebook_usage", "codes in use (fraction)"),
        (axes[1], "psnr", "test PSNR (dB)"),
    ):
        for offset, dataset in enumerate(DATASETS):
            values = [row[key] for row in rows if row["dataset"] == dataset]
            names = [row["variant"] for row in rows if row["dataset"] == dataset]
            axis.bar(
                [i + 0.4 * offset for i in range(len(values))], values, width=0.4, label=dataset
            )
            axis.set_xticks([i + 0.2 for i in range(len(names))], names, rotation=20, fontsize=7)
        axis.set_ylabel(label)
        axis.legend(fontsize=7)
    return [bench.save_figure(figure, out_dir / f"{bench.stem_of(NAME, report['quick'])}.png")]


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """The parts named by ``--parts``."""
    parts = bench.comma_list(args.parts)
    report: dict[str, Any] = {"machine": bench.machine_info([PEER.replace("_", "-"), "diffusers"])}
    report["quick"] = args.quick
    with tempfile.TemporaryDirectory() as scratch:
        if "models" in parts:
            n, steps = (20, 2) if args.quick else (args.n, args.sample_steps)
            report["models"] = part_models(n, steps, args.quick)
        if "ablation" in parts:
            root, steps = (Path(scratch), 2) if args.quick else (ABLATION_DIR, args.ablation_steps)
            report["ablation"] = part_ablation(steps, args.quick, root)
    if "speed" in parts and importlib.util.find_spec(PEER) is None:
        report["speed_skipped"] = f"{PEER} is not installed; `make install` installs it"
    elif "speed" in parts:
        report["speed"] = part_speed(*((1, 1) if args.quick else (3, args.repeats)))
    return report


def main(argv: Sequence[str] | None = None) -> int:
    parser = bench.bench_parser(__doc__, "smoke test: tiny sizes")
    parser.add_argument("--parts", default=",".join(PARTS), help=f"comma list of {PARTS}")
    parser.add_argument("--n", type=int, default=1000, help="samples per FD")
    parser.add_argument(
        "--sample-steps", type=int, default=50, help="DDIM steps of the diffusion model"
    )
    parser.add_argument(
        "--ablation-steps", type=int, default=600, help="training steps per variant"
    )
    parser.add_argument("--repeats", type=int, default=20, help="timed rounds of the speed part")
    args = bench.parse(parser, argv)
    unknown = set(bench.comma_list(args.parts)) - set(PARTS)
    if unknown:
        parser.error(f"unknown parts {sorted(unknown)}; choose from {PARTS}")
    return bench.publish(args, NAME, lambda: measure(args), render_markdown, figures)


if __name__ == "__main__":
    raise SystemExit(main())
