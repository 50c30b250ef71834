"""ControlNet on MNIST: how closely samples follow Canny hints, at what cost to quality.

Zhang, Rao & Agrawala (2023) measure control fidelity by how well generated images reproduce the
condition. This script does so on held-out MNIST digits (the first ``--n`` test images, never seen
in training): their Canny edges are the hints, and

* **edge F1**: the Canny edges of each generated image against the hint's edges, a pixel matched
  when the other map has an edge within 1 pixel (also reported within 0 pixels), averaged over
  the images (:func:`difflab.data.hints.edge_f1`);
* **label accuracy** (the evaluation suite's clean CNN, ``weights/mnist_cnn``) and **FD-MNIST**
  against the MNIST test set.

Cells: the locked base (``weights/mnist_cond``) given only the digit's label, the ControlNet
given label and hint, and the ControlNet given the hint alone (no label); then, when a DiT
ControlNet is there (``--dit-controlnet``, default the shipped scribble one), its locked DiT base
given the label and the DiT ControlNet given label and its own kind of hint (scribbles of the same
digits; F1 still against their Canny edges). Every cell uses DDIM
with ``--steps`` steps and the same x_T per batch (``SeedSequence([seed, i])``). Goals (issue 15):
F1 >= 0.7, F1 >= 3x the base's, FD <= 1.3x the base's.

The **sudden-convergence curve** (the paper's sec. 4.1 observation) is read from the training
run's ``metrics.jsonl`` (``edge_f1`` of 36 held-out hints every ``train.sample_every`` steps):
the step at which F1 first passes halfway from its first to its last value is reported.
**Cost**: sampling seconds per image and step of the ControlNet cells over the base's.

Writes ``controlnet.{json,md}``, ``controlnet.png`` (F1 against training step) and
``controlnet_samples.png`` (hints, base, ControlNet); ``--quick`` writes ``controlnet_quick*``
with an untrained ControlNet on n = 4, S = 2 (a smoke test whose numbers mean nothing).

    python benchmarks/controlnet.py          # make bench-controlnet
    python benchmarks/controlnet.py --quick --out-dir /tmp/controlnet
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

import common as bench
from difflab.data import load_dataset
from difflab.data.hints import canny_hint, edge_f1, make_hint
from difflab.diffusion import Conditioning
from difflab.io.checkpoint import load_checkpoint_meta
from difflab.metrics.evaluate import evaluate_samples
from difflab.models.controlnet import ControlNetConfig, build_controlnet
from difflab.pipelines import DiffusionPipeline, load_pipeline, model_reference
from difflab.pipelines.control import controlled_pipeline

NAME = "controlnet"
DEFAULT_BASE = Path("weights/mnist_cond.safetensors")
DEFAULT_CONTROLNET = Path("weights/controlnet_mnist_canny.safetensors")
DEFAULT_RUN = Path("runs/controlnet_mnist_canny")
DEFAULT_DIT_CONTROLNET = Path("weights/controlnet_mnist_dit_scribble.safetensors")
DEFAULT_DIT_RUN = Path("runs/controlnet_mnist_dit_scribble")
DEFAULT_ABLATION_RUN = Path("runs/controlnet_mnist_canny_gaussian")
GOAL_F1 = 0.7
GOAL_F1_RATIO = 3.0
GOAL_FD_RATIO = 1.3
SAMPLE_COLUMNS = 12


def parse_args(argv: Sequence[str] | None) -> Any:
    parser = bench.bench_parser(__doc__, "untrained ControlNet, n = 4, S = 2: a smoke test")
    parser.add_argument("--n", type=int, default=200, help="held-out test digits (default 200)")
    parser.add_argument("--steps", type=int, default=20, help="DDIM steps (default 20)")
    parser.add_argument("--batch", type=int, default=100, help="images per sampling batch")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--base", type=Path, default=DEFAULT_BASE)
    parser.add_argument("--controlnet", type=Path, default=DEFAULT_CONTROLNET)
    parser.add_argument(
        "--run",
        type=Path,
        default=DEFAULT_RUN,
        help="training run whose metrics.jsonl holds the curve",
    )
    parser.add_argument(
        "--dit-controlnet",
        type=Path,
        default=DEFAULT_DIT_CONTROLNET,
        help="a DiT ControlNet (its base and hint kind read from it); skipped when missing",
    )
    parser.add_argument("--dit-run", type=Path, default=DEFAULT_DIT_RUN)
    parser.add_argument(
        "--ablation-run",
        type=Path,
        default=DEFAULT_ABLATION_RUN,
        help="the --run config trained with model.zero_init=false (Gaussian joining layers)",
    )
    args = bench.parse(parser, argv)
    if args.quick:
        args.n, args.steps, args.batch = 4, 2, 4
    return args


def pipelines(args: Any) -> tuple[DiffusionPipeline, DiffusionPipeline, str]:
    """(base, ControlNet, where the ControlNet came from)."""
    base = load_pipeline(args.base)
    if args.quick:  # an untrained ControlNet (zero convolutions: the base's samples)
        control = build_controlnet(base.net, ControlNetConfig(base_arch="unet"))
        return (
            base,
            controlled_pipeline(load_pipeline(args.base), [control], "untrained"),
            "untrained",
        )
    return base, load_pipeline(args.controlnet), str(args.controlnet)


def held_out(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(labels, Canny hints) of the first ``n`` MNIST test digits."""
    test = load_dataset("mnist", split="test", limit=n)
    return test.labels, canny_hint(test.images)


def run_cell(pipe: DiffusionPipeline, cond: Conditioning, args: Any) -> tuple[torch.Tensor, float]:
    """(images, sampling seconds) of one cell: ``--n`` images in batches of ``--batch``."""
    tick = time.perf_counter()
    images = pipe.generate(args.n, cond, steps=args.steps, seed=args.seed, batch_size=args.batch)
    return images.clamp(-1, 1), time.perf_counter() - tick


def scores(
    images: torch.Tensor, labels: torch.Tensor, hints: torch.Tensor, reference: Any
) -> dict[str, Any]:
    edges = canny_hint(images)
    metrics = evaluate_samples(images, reference, labels=labels)
    return {
        "edge_f1": float(edge_f1(edges, hints).mean()),
        "edge_f1_exact": float(edge_f1(edges, hints, tolerance=0).mean()),
        "label_accuracy": metrics["label_accuracy"],
        "fd": metrics["fd"],
        "metric": metrics["metric"],
    }


def convergence(run: Path) -> dict[str, Any] | None:
    """F1 against step from a training run's metrics, and the step F1 passes halfway."""
    path = run / "metrics.jsonl"
    if not path.is_file():
        return None
    points = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    curve = [(p["step"], p["edge_f1"]) for p in points if "edge_f1" in p]
    if len(curve) < 2:
        return None
    first, last = curve[0][1], curve[-1][1]
    halfway = first + (last - first) / 2
    jump = next((step for step, f1 in curve if f1 >= halfway), None)
    rises = [(b[1] - a[1], b[0]) for a, b in itertools.pairwise(curve)]
    steepest = max(rises)[1]
    return {"run": str(run), "curve": curve, "halfway_step": jump, "steepest_step": steepest}


def step_costs(
    base: DiffusionPipeline,
    control: DiffusionPipeline,
    hints: torch.Tensor,
    labels: torch.Tensor,
    args: Any,
) -> dict[str, Any]:
    """Seconds of one denoiser call (sampling) and of one training step (forward, backward and an
    AdamW update): the ControlNet (base locked, branch trained) against the base alone (fully
    fine-tuned), timed interleaved so that load drift hits both alike."""
    batch = min(len(hints), 32)
    x = base.noise(batch, seed=0)
    t = torch.full((batch,), base.schedule.num_timesteps // 2)
    with_hint = Conditioning(labels=labels[:batch], control=hints[:batch])
    only_labels = Conditioning(labels=labels[:batch])
    base_denoiser, control_denoiser = base.denoiser(), control.denoiser()

    def sample_base() -> None:
        with torch.no_grad():
            base_denoiser(x, t, only_labels)

    def sample_control() -> None:
        with torch.no_grad():
            control_denoiser(x, t, with_hint)

    net = control.net
    branch = torch.optim.AdamW(net.controls.parameters(), lr=1e-6)
    full = torch.optim.AdamW(base.net.parameters(), lr=1e-6)

    def train_step(
        module: torch.nn.Module, optimizer: torch.optim.Optimizer, cond: Conditioning
    ) -> None:
        optimizer.zero_grad()
        module(x, t, cond).square().mean().backward()
        optimizer.step()

    net.base.requires_grad_(False)
    base.net.requires_grad_(True)
    repeats = 2 if args.quick else 5
    timings = bench.interleaved_timings(
        {
            "sample_base": sample_base,
            "sample_control": sample_control,
            "train_full": lambda: train_step(base.net, full, only_labels),
            "train_branch": lambda: train_step(net, branch, with_hint),
        },
        warmup=1,
        repeats=repeats,
    )
    seconds = {name: timing.median for name, timing in timings.items()}
    return {
        "batch": batch,
        "seconds": seconds,
        "sampling_ratio": seconds["sample_control"] / seconds["sample_base"],
        "training_images_per_s": {
            "control_branch": batch / seconds["train_branch"],
            "full_fine_tune": batch / seconds["train_full"],
        },
    }


def dit_cells(args: Any, labels: torch.Tensor) -> dict[str, tuple[DiffusionPipeline, Conditioning]]:
    """The DiT base given labels, and its ControlNet given labels + its own kind of hint (made
    from the same test digits; F1 is still against their Canny edges)."""
    control = load_pipeline(args.dit_controlnet)
    kind = load_checkpoint_meta(args.dit_controlnet).get("hint", "canny")
    images = load_dataset("mnist", split="test", limit=args.n).images
    hint = make_hint(kind, images)
    cells = {
        "DiT base (label only)": (control_base(control), Conditioning(labels=labels)),
        f"DiT ControlNet (label + {kind})": (control, Conditioning(labels=labels, control=hint)),
    }
    return cells


def control_base(control: DiffusionPipeline) -> DiffusionPipeline:
    """The locked base of a ControlNet pipeline, as a pipeline of its own."""
    return DiffusionPipeline(
        control.net.base, control.schedule, control.description, control.autoencoder
    )


def measure(args: Any) -> dict[str, Any]:
    base, control, source = pipelines(args)
    labels, hints = held_out(args.n)
    reference = model_reference(base)
    cells = {
        "base (label only)": (base, Conditioning(labels=labels)),
        "ControlNet (label + hint)": (control, Conditioning(labels=labels, control=hints)),
        "ControlNet (hint only)": (control, Conditioning(control=hints)),
    }
    dit = None if args.quick or not args.dit_controlnet.is_file() else dit_cells(args, labels)
    if dit is not None:
        cells.update(dit)
    rows, samples = [], {"hints": hints[:SAMPLE_COLUMNS].tolist()}
    for name, (pipe, cond) in cells.items():
        generated, seconds = run_cell(pipe, cond, args)
        row = {"cell": name, **scores(generated, labels, hints, reference), "seconds": seconds}
        row["seconds_per_image_step"] = seconds / (args.n * args.steps)
        rows.append(row)
        samples[name] = generated[:SAMPLE_COLUMNS].tolist()
        print(
            f"{name}: F1 {row['edge_f1']:.3f}, accuracy {row['label_accuracy']:.3f}, FD {row['fd']:.2f}"
        )
    base_row, control_row = rows[0], rows[1]
    dit_goals = None
    if dit is not None:
        dit_base, dit_control = rows[3], rows[4]
        dit_goals = {
            "f1": dit_control["edge_f1"] >= GOAL_F1,
            "f1_ratio": dit_control["edge_f1"] >= GOAL_F1_RATIO * dit_base["edge_f1"],
            "fd_ratio": dit_control["fd"] <= GOAL_FD_RATIO * dit_base["fd"],
        }
    cost = step_costs(load_pipeline(args.base), control, hints, labels, args)  # its own base copy
    goals = {
        "f1": control_row["edge_f1"] >= GOAL_F1,
        "f1_ratio": control_row["edge_f1"] >= GOAL_F1_RATIO * base_row["edge_f1"],
        "fd_ratio": control_row["fd"] <= GOAL_FD_RATIO * base_row["fd"],
    }
    return {
        "machine": bench.machine_info(),
        "quick": args.quick,
        "n": args.n,
        "steps": args.steps,
        "seed": args.seed,
        "controlnet": source,
        "base": str(args.base),
        "rows": rows,
        "goals": goals,
        "dit_goals": dit_goals,
        "dit_controlnet": None if dit is None else str(args.dit_controlnet),
        "dit_convergence": None if dit is None else convergence(args.dit_run),
        "f1_ratio": control_row["edge_f1"] / max(base_row["edge_f1"], 1e-12),
        "fd_ratio": control_row["fd"] / base_row["fd"],
        "sampling_cost_ratio": control_row["seconds"] / base_row["seconds"],
        "cost": cost,
        "other_digit_f1": {  # each hint against the next test digit's edges: the metric's floor
            "edge_f1": float(edge_f1(hints.roll(1, dims=0), hints).mean()),
            "edge_f1_exact": float(edge_f1(hints.roll(1, dims=0), hints, tolerance=0).mean()),
        },
        "convergence": None if args.quick else convergence(args.run),
        "ablation": None if args.quick else convergence(args.ablation_run),
        "samples": samples,
    }


def render(report: dict[str, Any]) -> str:
    table = bench.markdown_table(
        [
            "cell",
            "edge F1 (±1 px)",
            "edge F1 (exact)",
            "label accuracy",
            report["rows"][0]["metric"],
            "s / image / step",
        ],
        [
            [
                r["cell"],
                r["edge_f1"],
                r["edge_f1_exact"],
                r["label_accuracy"],
                r["fd"],
                r["seconds_per_image_step"],
            ]
            for r in report["rows"]
        ],
    )
    goals = report["goals"]
    goal_lines = [
        f"- F1 >= {GOAL_F1}: {bench.passfail(goals['f1'])} ({report['rows'][1]['edge_f1']:.3f})",
        f"- F1 >= {GOAL_F1_RATIO:g}x the base's: {bench.passfail(goals['f1_ratio'])} "
        f"({report['f1_ratio']:.2f}x)",
        f"- FD <= {GOAL_FD_RATIO:g}x the base's: {bench.passfail(goals['fd_ratio'])} "
        f"({report['fd_ratio']:.2f}x)",
        f"- sampling cost of control: {report['cost']['sampling_ratio']:.2f}x the base's per "
        f"denoiser call at batch {report['cost']['batch']} (expected 1.3-1.5x; the whole cells "
        f"above took {report['sampling_cost_ratio']:.2f}x)",
        f"- another real test digit's edges (each hint against the next digit's) score F1 "
        f"{report['other_digit_f1']['edge_f1']:.3f} (exact {report['other_digit_f1']['edge_f1_exact']:.3f}): "
        "what a sample unrelated to the hint scores",
        f"- training: {report['cost']['training_images_per_s']['control_branch']:.1f} images/s for "
        "the control branch (base locked) against "
        f"{report['cost']['training_images_per_s']['full_fine_tune']:.1f} for a full fine-tune of "
        "the base",
    ]
    dit_goals = report.get("dit_goals")
    if dit_goals is not None:
        dit_base, dit_control = report["rows"][3], report["rows"][4]
        goal_lines += [
            f"- DiT ControlNet ({report['dit_controlnet']}): F1 >= {GOAL_F1}: "
            f"{bench.passfail(dit_goals['f1'])} ({dit_control['edge_f1']:.3f}); F1 >= "
            f"{GOAL_F1_RATIO:g}x the DiT base's: {bench.passfail(dit_goals['f1_ratio'])} "
            f"({dit_control['edge_f1'] / dit_base['edge_f1']:.2f}x); FD <= {GOAL_FD_RATIO:g}x: "
            f"{bench.passfail(dit_goals['fd_ratio'])} ({dit_control['fd'] / dit_base['fd']:.2f}x)",
        ]
    curve_lines = ["No training run's metrics were given (--run)."]
    for curve in (report["convergence"], report.get("dit_convergence")):
        if curve is None:
            continue
        if curve_lines[0].startswith("No training"):
            curve_lines = []
        points = ", ".join(f"{step}: {f1:.3f}" for step, f1 in curve["curve"])
        curve_lines += [
            f"Edge F1 of 36 held-out hints by training step ({curve['run']}): {points}. "
            f"F1 passes halfway from its first to its last value at step {curve['halfway_step']}; "
            f"the steepest rise ends at step {curve['steepest_step']}.",
        ]
    header = (
        f"# ControlNet on MNIST{' (quick: numbers mean nothing)' if report['quick'] else ''}\n\n"
        f"{report['n']} held-out test digits, Canny hints, DDIM {report['steps']} steps, "
        f"ControlNet {report['controlnet']} on {report['base']}.\n\n"
        f"Machine: {bench.machine_line(report['machine'])}"
    )
    ablation = report.get("ablation")
    ablation_lines = ["Not run (no --ablation-run metrics)."]
    if ablation is not None and report["convergence"] is not None:
        zero = dict(report["convergence"]["curve"])
        rows = [[step, zero.get(step), f1] for step, f1 in ablation["curve"] if step in zero]
        ablation_lines = [
            "The same config with Gaussian instead of zero-initialised joining layers "
            f"(model.zero_init=false, {ablation['run']}), edge F1 of the same 36 held-out hints "
            "at equal training steps (equal images):",
            "",
            bench.markdown_table(["step", "zero convolutions", "Gaussian init"], rows),
        ]
    return bench.sections(
        header,
        table,
        goal_lines,
        "## Sudden convergence",
        curve_lines,
        "## Ablation: zero convolutions",
        ablation_lines,
    )


def figures(report: dict[str, Any], out_dir: Path) -> list[Path]:
    stem = bench.stem_of(NAME, report["quick"])
    samples = report["samples"]
    rows = [torch.tensor(samples[key]) for key in samples]
    written = [bench.image_rows_figure(rows, list(samples), out_dir / f"{stem}_samples.png")]
    plt = bench.pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for curve in (report["convergence"], report.get("dit_convergence"), report.get("ablation")):
        if curve is not None:
            steps, f1 = zip(*curve["curve"], strict=True)
            ax.plot(steps, f1, marker="o", label=Path(curve["run"]).name)
    ax.axhline(report["rows"][0]["edge_f1"], color="gray", linestyle=":", label="U-Net base")
    ax.legend(fontsize=8)
    ax.set_xlabel("training step")
    ax.set_ylabel("edge F1 (±1 px)")
    ax.set_title("ControlNet on MNIST: edge F1 of held-out hints")
    written.append(bench.save_figure(fig, out_dir / f"{stem}.png"))
    return written


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    return bench.publish(args, NAME, lambda: measure(args), render, figures)


if __name__ == "__main__":
    raise SystemExit(main())
