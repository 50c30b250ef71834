"""DiT on MNIST: the scaling study, the speed race with diffusers, and DiT vs the U-Net (issue 7).

Peebles & Xie, "Scalable Diffusion Models with Transformers" (ICCV 2023), reproduced in shape:

1. **Scaling** (the paper's Table 4 / Figure 6 shape): class-conditional DiTs of two widths x two
   patch sizes (``dit-mnist-{s,b}-{7,4}``; ``--with-patch-2`` adds ``-2``) are trained through
   difflab's own training loop (``configs/dit_mnist.yaml``: bf16, label dropout 0.1) on the same
   number of images, then scored by ``evaluate_pipeline`` (DDIM, ``--sample-steps``, bf16, one
   seed) by FD-MNIST, without guidance (w = 1) and with classifier-free guidance
   (w = ``--guidance-scale``). Goal: FD falls as forward GFLOPs rise, whether they come from width
   or from smaller patches; each pair is a pass/fail line. The paper's ImageNet-256 FIDs (400K
   steps, no guidance) are printed beside ours with their Gflops (a multiply-add counted once;
   ours count it twice).
2. **Speed**: training images/s (one step: loss, backward, AdamW) and DDIM sampling time of
   difflab's ``DiT`` vs diffusers' ``DiTTransformer2DModel`` at the same config (width, depth,
   heads, patch, MLP ratio 4, exact GELU on both, 10 classes), timed interleaved in one run, in
   fp32 and bf16 autocast; FLOPs per step (``difflab.models.count_flops``, which counts the fused
   CPU attention kernels) give the achieved GFLOP/s and its share of a bf16 matmul's GFLOP/s in
   the same run. Goals: >= 1.5x diffusers, >= 40 % of the bf16 matmul for the largest config.
   diffusers' DiT has its own timestep/label embedding in every block, so it has more
   parameters and FLOPs; both counts are reported, and the ratio is of images/s.
3. **DiT vs U-Net at matched GFLOPs**: ``unet-mnist`` and the DiT preset nearest to it in GFLOPs,
   trained on the same number of images with the same recipe except the learning rate (each
   backbone's own: the U-Net's from configs/mnist.yaml); FD (w = 1, CFG, and w = 1 with x0
   clamped to [-1, 1]) and wall times.
4. **The shipped checkpoint** ``weights/dit_mnist_s4.safetensors``: FD-MNIST, precision, recall
   and label accuracy with and without guidance, sampled as in part 1.

The inputs of part 2 are synthetic (random images); parts 1 and 3 train on MNIST. Runs are kept
in ``runs/dit_scaling/<label>`` and reused when complete (resumed when not); each model's scores
are kept beside its run (``scores.json``). A run of some parts (``--parts speed``) keeps the other
parts of the earlier result file, each with the machine and settings it ran with; ``--models``
lets two processes share parts 1 and 3. ``--plan-only`` prints the models, their GFLOPs and the
training FLOPs of the plan, and stops.

    python benchmarks/dit_scaling.py                      # make bench-dit (hours on 2 cores)
    python benchmarks/dit_scaling.py --parts speed        # only the diffusers comparison
    python benchmarks/dit_scaling.py --quick              # smoke test: tiny models, a few steps

Writes ``dit_scaling.{json,md,png}``; ``--quick`` writes ``dit_scaling_quick.*`` (its numbers
measure nothing) and keeps its runs in a temporary folder.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

import common as bench
from difflab.config import load_config
from difflab.models import DiTConfig, build_model, count_flops, forward_gflops, model_config
from difflab.pipelines import evaluate_pipeline, load_pipeline
from difflab.samplers import Guidance
from difflab.training.loop import train

NAME = "dit_scaling"
CONFIG = bench.REPO / "configs" / "dit_mnist.yaml"
RUNS_DIR = bench.REPO / "runs" / "dit_scaling"
PARTS = ("scaling", "speed", "unet", "shipped")
PART_KEYS: dict[str, tuple[str, ...]] = {
    "scaling": ("scaling",),
    "speed": ("speed", "bf16_matmul"),
    "unet": ("unet_vs_dit",),
    "shipped": ("shipped",),
}  # the report keys each part writes
SHIPPED = bench.REPO / "weights" / "dit_mnist_s4.safetensors"
PRECISIONS = ("fp32", "bf16")
NUM_CLASSES = 10
SPEED_GOAL = 1.5  # difflab >= 1.5x diffusers
PEAK_GOAL = 0.40  # >= 40 % of the bf16 matmul GFLOP/s
UNET_PRESET = "unet-mnist"

# The paper's Table 4 (ImageNet 256x256, FID-50K after 400K steps, no guidance) and its Gflops
# (a multiply-add counted once). The Gflops agree with ours / 2 to 0.5 % (tests/models/test_dit.py
# checks eight of them); the FIDs were transcribed by hand: check them against the paper's Table 4
# before quoting them.
PAPER_TABLE4: dict[str, tuple[float, float]] = {  # model: (Gflops, FID-50K)
    "S/8": (0.36, 153.60), "S/4": (1.41, 100.41), "S/2": (6.06, 68.40),
    "B/8": (1.42, 122.74), "B/4": (5.56, 68.38), "B/2": (23.01, 43.47),
    "L/8": (5.01, 118.87), "L/4": (19.70, 45.64), "L/2": (80.71, 23.33),
    "XL/8": (7.39, 106.41), "XL/4": (29.05, 43.01), "XL/2": (118.64, 19.47),
}  # fmt: skip


@dataclass(frozen=True)
class Model:
    """One network of the study: a label for tables, a preset, overrides of its fields and of
    the training recipe (``train.*`` keys of configs/dit_mnist.yaml)."""

    label: str
    preset: str
    overrides: dict[str, Any] = field(default_factory=dict)
    width: str = ""  # "S" / "B": the series of the scaling plot
    patch: int = 0
    train_overrides: dict[str, Any] = field(default_factory=dict)

    def config(self) -> tuple[str, Any]:
        """(architecture, config) at MNIST's size, class-conditional."""
        values = dict(image_size=28, in_channels=1, out_channels=1, num_classes=NUM_CLASSES)
        return model_config(self.preset, **{**values, **self.overrides})


def dit(name: str) -> Model:
    """``"B/4"`` -> the preset dit-mnist-b-4."""
    width, patch = name.split("/")
    return Model(name, f"dit-mnist-{width.lower()}-{patch}", width=width, patch=int(patch))


def unet_model(preset: str) -> Model:
    """The U-Net of part 3, trained at the learning rate of its own recipe (configs/mnist.yaml):
    the DiT recipe's large rate is tuned for transformers, and the comparison is of backbones."""
    return Model(
        "U-Net",
        preset,
        train_overrides={"lr": load_config(bench.REPO / "configs" / "mnist.yaml").train.lr},
    )


def tiny_dit(width: int, patch: int) -> Model:
    overrides = dict(hidden_size=width, patch_size=patch)
    return Model(f"w{width}/{patch}", "dit-tiny", overrides, str(width), patch)


@dataclass(frozen=True)
class Settings:
    """How much work one run does."""

    quick: bool = False
    parts: tuple[str, ...] = PARTS
    scaling: tuple[Model, ...] = tuple(dit(n) for n in ("S/7", "S/4", "B/7", "B/4"))
    unet_candidates: tuple[Model, ...] = tuple(
        dit(n) for n in ("S/7", "S/4", "S/2", "B/7", "B/4", "B/2")
    )
    unet: Model = field(default_factory=lambda: unet_model(UNET_PRESET))
    speed: tuple[Model, ...] = tuple(dit(n) for n in ("S/4", "B/4", "B/2"))
    only: tuple[str, ...] = ()  # labels parts 1 and 3 are limited to (--models); () = all
    # training (parts 1 and 3): the same number of images for every model
    train_images: int = 384_000
    batch_size: int = 128
    data_limit: int | None = None
    # evaluation: FD-MNIST of n samples (classes 0..9 in turn), DDIM with S steps, seed 0
    sample_n: int = 2000
    sample_steps: int = 50
    sample_batch: int = 250
    guidance_scale: float = 2.0
    # speed (part 2)
    speed_batch: int = 128
    speed_steps_per_repeat: int = 2
    speed_warmup: int = 1
    speed_repeats: int = 5
    speed_sample_n: int = 64
    speed_sample_steps: int = 50
    speed_sampling_repeats: int = 3
    matmul_size: int = 2048
    seed: int = 0

    @classmethod
    def quick_run(cls, parts: tuple[str, ...]) -> Settings:
        """A smoke test of every code path: tiny DiTs, a few steps, a few samples."""
        tiny = (tiny_dit(32, 7), tiny_dit(32, 4), tiny_dit(64, 7))
        return cls(
            quick=True,
            parts=parts,
            scaling=tiny,
            unet_candidates=tiny,
            unet=unet_model("unet-tiny"),
            speed=(tiny_dit(32, 7),),
            train_images=32,
            batch_size=16,
            data_limit=64,
            sample_n=12,
            sample_steps=2,
            sample_batch=12,
            speed_batch=4,
            speed_steps_per_repeat=1,
            speed_repeats=1,
            speed_sample_n=2,
            speed_sample_steps=2,
            speed_sampling_repeats=1,
            matmul_size=256,
        )

    @property
    def train_steps(self) -> int:
        return max(1, self.train_images // self.batch_size)


def model_facts(model: Model) -> dict[str, Any]:
    """Preset, config, parameters and forward GFLOPs (one image) of a study model."""
    arch, config = model.config()
    with torch.device("meta"):
        parameters = bench.parameter_count(build_model(arch, config))
    return {
        "label": model.label,
        "preset": model.preset,
        "arch": arch,
        "config": dataclasses.asdict(config),
        "parameters": parameters,
        "gflops": forward_gflops(arch, config),
    }


# ----------------------------------------------------------------------------- parts 1, 3, 4


def train_model(model: Model, settings: Settings, runs_dir: Path) -> dict[str, Any]:
    """Train ``model`` with configs/dit_mnist.yaml for ``settings.train_steps`` steps (or reuse).

    Returns ``{"checkpoint", "train_seconds", "train_images_per_second", "reused", ...}``; the
    timing of a run is stored beside it (``benchmark.json``) so that a reused run still reports it.
    """
    out_dir = runs_dir / model.label.replace("/", "-")
    record, steps = out_dir / "benchmark.json", settings.train_steps
    if record.exists() and bench.read_json(record).get("steps") == steps:
        return {**bench.read_json(record), "reused": True}
    overrides = [
        f"model.preset={model.preset}",
        f"train.steps={steps}",
        f"train.batch_size={settings.batch_size}",
        f"train.out_dir={out_dir}",
        f"train.seed={settings.seed}",
        f"train.sample_every={steps}",
        f"train.checkpoint_every={max(1, steps // 10)}",
        f"train.log_every={max(1, steps // 20)}",
        f"train.sample_steps={settings.sample_steps}",
        *(f"model.{key}={json.dumps(value)}" for key, value in model.overrides.items()),
        *(f"train.{key}={json.dumps(value)}" for key, value in model.train_overrides.items()),
    ]
    if settings.data_limit is not None:
        overrides.append(f"data.limit={settings.data_limit}")
    if settings.quick:
        overrides.append("train.warmup_steps=0")
    resume = (out_dir / "checkpoints" / "last.safetensors").exists()
    start = time.perf_counter()
    checkpoint = train(load_config(CONFIG, overrides), resume=resume, progress=not settings.quick)
    seconds = time.perf_counter() - start
    done = {
        "checkpoint": str(checkpoint),
        "steps": steps,
        "images": steps * settings.batch_size,
        "train_seconds": seconds,
        "train_images_per_second": None if resume else settings.train_images / seconds,
        "resumed": resume,
    }
    bench.write_json(record, done)
    return {**done, "reused": False}


def score(
    checkpoint: str | Path, settings: Settings, guidance_scale: float, clip_x0: bool = False
) -> dict[str, Any]:
    """FD-MNIST (+ precision, recall, label accuracy) of ``sample_n`` DDIM samples in bf16 at
    classifier-free weight w (1: none), optionally with x0 clamped to [-1, 1] at every step."""
    guidance = Guidance(
        guidance_scale=None if guidance_scale == 1 else guidance_scale,
        threshold="static" if clip_x0 else None,
    )
    result = evaluate_pipeline(
        load_pipeline(checkpoint, precision="bf16"),
        n=settings.sample_n,
        steps=settings.sample_steps,
        seed=settings.seed,
        batch_size=settings.sample_batch,
        guidance=guidance if guidance.wrappers else None,
    )
    keys = ("fd", "precision", "recall", "label_accuracy", "n", "sample_seconds")
    return {"guidance_scale": guidance_scale, "clip_x0": clip_x0, **{k: result[k] for k in keys}}


def stored_score(
    checkpoint: str, settings: Settings, guidance_scale: float, clip_x0: bool = False
) -> dict[str, Any]:
    """:func:`score` of a finished run, kept in ``scores.json`` beside it.

    The key holds everything the score depends on (training steps, n, DDIM steps, w, seed), so a
    rerun of the report, or a run of another part that evaluates the same model, samples nothing.
    """
    store = Path(checkpoint).parent / "scores.json"
    scores = bench.read_json(store) if store.exists() else {}
    key = (
        f"train_steps={settings.train_steps},n={settings.sample_n},"
        f"sample_steps={settings.sample_steps},w={guidance_scale:g},seed={settings.seed}"
        + (",clip_x0" if clip_x0 else "")
    )
    if key not in scores:
        scores[key] = score(checkpoint, settings, guidance_scale, clip_x0)
        bench.write_json(store, scores)
    return scores[key]


def study(
    models: Sequence[Model], settings: Settings, runs_dir: Path, clip_x0: bool = False
) -> list[dict[str, Any]]:
    """Train (or reuse) and score each model, with and without guidance (and, with ``clip_x0``,
    also without guidance but with x0 clamped: key ``"w=1 clip"``)."""
    rows = []
    for model in models:
        if settings.only and model.label not in settings.only:
            continue
        print(f"[{NAME}] {model.label} ({model.preset}): {settings.train_steps} training steps")
        run = train_model(model, settings, runs_dir)
        if run["reused"]:
            print(f"[{NAME}] {model.label}: reused the finished run {run['checkpoint']}")
        scores = {
            f"w={w:g}": stored_score(run["checkpoint"], settings, w)
            for w in (1.0, settings.guidance_scale)
        }
        if clip_x0:
            scores["w=1 clip"] = stored_score(run["checkpoint"], settings, 1.0, clip_x0=True)
        print(
            f"[{NAME}] {model.label}: "
            + ", ".join(f"FD {k} {v['fd']:.2f}" for k, v in scores.items())
        )
        row = {**model_facts(model), "width": model.width, "patch": model.patch, **run}
        rows.append({**row, "train_overrides": model.train_overrides, "scores": scores})
    return rows


def scaling_checks(rows: list[dict[str, Any]], guidance_scale: float) -> list[dict[str, Any]]:
    """Pass/fail per pair of models that differ in one factor: more GFLOPs -> lower FD."""
    checks = []
    for key in ("w=1", f"w={guidance_scale:g}"):
        for a in rows:
            for b in rows:
                same_width = a["width"] == b["width"] and a["patch"] > b["patch"]
                same_patch = a["patch"] == b["patch"] and a["gflops"] < b["gflops"]
                if a is b or not (same_width or same_patch):
                    continue
                fd_a, fd_b = a["scores"][key]["fd"], b["scores"][key]["fd"]
                checks.append(
                    {
                        "guidance": key,
                        "factor": "smaller patches" if same_width else "width",
                        "from": a["label"],
                        "to": b["label"],
                        "gflops": [a["gflops"], b["gflops"]],
                        "fd": [fd_a, fd_b],
                        "passed": fd_b < fd_a,
                    }
                )
    return checks


def matched_dit(settings: Settings) -> Model:
    """The DiT candidate nearest to the U-Net in forward GFLOPs (by log ratio)."""
    target = model_facts(settings.unet)["gflops"]
    return min(
        settings.unet_candidates, key=lambda m: abs(math.log(model_facts(m)["gflops"] / target))
    )


# ----------------------------------------------------------------------------- part 2: speed


def diffusers_twin(config: DiTConfig) -> nn.Module:
    """diffusers' ``DiTTransformer2DModel`` with the width, depth, heads and patch of ``config``."""
    from diffusers import DiTTransformer2DModel

    return DiTTransformer2DModel(
        num_attention_heads=config.num_heads,
        attention_head_dim=config.hidden_size // config.num_heads,
        in_channels=config.in_channels,
        out_channels=config.out_channels,
        num_layers=config.depth,
        sample_size=config.image_size,
        patch_size=config.patch_size,
        activation_fn="gelu",  # exact GELU, as difflab's DiT
        num_embeds_ada_norm=config.num_classes,
    )


def speed(model: Model, settings: Settings, peak_gflops: float) -> dict[str, Any]:
    """Training images/s (fp32, bf16) and bf16 DDIM seconds of both libraries for one config."""
    arch, config = model.config()
    torch.manual_seed(settings.seed)
    ours, theirs = build_model(arch, config), diffusers_twin(config)
    generator = torch.Generator().manual_seed(settings.seed)
    size, batch = config.image_size, settings.speed_batch
    x0 = torch.rand((batch, config.in_channels, size, size), generator=generator) * 2 - 1
    labels = torch.randint(0, NUM_CLASSES, (batch,), generator=generator)
    flops = {
        lib: count_flops(step) / batch
        for lib, step in bench.race_train_steps(ours, theirs, x0, labels, "fp32").items()
    }
    parameters = {
        "difflab": bench.parameter_count(ours),
        "diffusers": bench.parameter_count(theirs),
    }
    result: dict[str, Any] = {
        "label": model.label,
        "preset": model.preset,
        "parameters": parameters,
    }
    result |= {"training": {}, "train_flops_per_image": flops}
    images = batch * settings.speed_steps_per_repeat
    for precision in PRECISIONS:
        steps = bench.race_train_steps(ours, theirs, x0, labels, precision)
        timings = bench.interleaved_timings(
            {
                lib: bench.repeated(step, settings.speed_steps_per_repeat)
                for lib, step in steps.items()
            },
            warmup=settings.speed_warmup,
            repeats=settings.speed_repeats,
        )
        rates = {lib: timing.rates(images) for lib, timing in timings.items()}
        achieved = {lib: flops[lib] * rates[lib]["median"] / 1e9 for lib in rates}
        result["training"][precision] = {
            "images_per_second": rates,
            "ratio": rates["difflab"]["median"] / rates["diffusers"]["median"],
            "achieved_gflops": achieved,
            "share_of_bf16_matmul": {lib: g / peak_gflops for lib, g in achieved.items()},
        }
    n, steps = settings.speed_sample_n, settings.speed_sample_steps
    sample_labels = torch.arange(n) % NUM_CLASSES
    runs = bench.race_samplers(ours, theirs, n, steps, sample_labels, "bf16", settings.seed)
    timings = bench.interleaved_timings(runs, warmup=1, repeats=settings.speed_sampling_repeats)
    result["sampling_bf16"] = {
        "images": n,
        "steps": steps,
        "seconds": {lib: t.median for lib, t in timings.items()},
        "ratio": timings["diffusers"].median / timings["difflab"].median,
    }
    return result


# ----------------------------------------------------------------------------- the report


def measure(settings: Settings, runs_dir: Path) -> dict[str, Any]:
    """The report of the parts in ``settings.parts``; ``report["runs"][part]`` records the
    machine, settings and training recipe each part ran with."""
    models = ("scaling", "unet_candidates", "unet", "speed", "only")
    about = {
        "machine": bench.machine_info(("diffusers",)),
        "settings": {k: v for k, v in dataclasses.asdict(settings).items() if k not in models},
        "recipe": dataclasses.asdict(load_config(CONFIG).train),
    }
    report: dict[str, Any] = {
        "name": NAME,
        "quick": settings.quick,
        "paper_table4": {k: {"gflops": g, "fid_400k": f} for k, (g, f) in PAPER_TABLE4.items()},
        "runs": dict.fromkeys(settings.parts, about),
    }
    if "scaling" in settings.parts:
        rows = study(settings.scaling, settings, runs_dir)
        report["scaling"] = {"rows": rows, "checks": scaling_checks(rows, settings.guidance_scale)}
    if "speed" in settings.parts:
        report["bf16_matmul"] = bench.matmul_gflops(torch.bfloat16, settings.matmul_size)
        peak = report["bf16_matmul"]["gflops"]
        report["speed"] = [speed(m, settings, peak) for m in settings.speed]
    if "unet" in settings.parts:
        pair = (settings.unet, matched_dit(settings))
        report["unet_vs_dit"] = study(pair, settings, runs_dir, clip_x0=True)
    if "shipped" in settings.parts:
        ws = (1.0, settings.guidance_scale)
        scores = {f"w={w:g}": score(SHIPPED, settings, w) for w in ws}
        report["shipped"] = {"checkpoint": str(SHIPPED.relative_to(bench.REPO)), "scores": scores}
    return report


def merge_earlier_parts(report: dict[str, Any], path: Path) -> dict[str, Any]:
    """``report`` plus the parts it did not run, taken from the earlier report at ``path``, so
    ``--parts speed`` reruns one part without dropping the others from the result files."""
    if not path.is_file():
        return report
    earlier = bench.read_json(path)
    merged = {**report, "runs": dict(report["runs"])}
    for part, keys in PART_KEYS.items():
        if part in report["runs"] or part not in earlier.get("runs", {}):
            continue
        if all(key in earlier for key in keys):
            merged.update({key: earlier[key] for key in keys})
            merged["runs"][part] = earlier["runs"][part]
    return merged


def training_line(about: dict[str, Any]) -> str:
    """How parts 1 and 3 trained and scored their models."""
    s, recipe = about["settings"], about["recipe"]
    steps = max(1, s["train_images"] // s["batch_size"])
    return (
        f"Training: {steps * s['batch_size']} images per model ({steps} steps of "
        f"{s['batch_size']}), configs/dit_mnist.yaml (lr {recipe['lr']:g}, warm-up "
        f"{recipe['warmup_steps']}, EMA {recipe['ema_decay']:g}, bf16). Scores: FD-MNIST, "
        f"precision/recall and label accuracy of {s['sample_n']} samples (classes in "
        f"turn), DDIM-{s['sample_steps']}, EMA weights, seed {s['seed']}."
    )


def guidance_key(report: dict[str, Any], part: str) -> str:
    """``"w=2"``: the key of a part's guided scores."""
    return f"w={report['runs'][part]['settings']['guidance_scale']:g}"


def scaling_markdown(report: dict[str, Any]) -> str:
    """Part 1: FD and label accuracy per model, the pass/fail pairs, the paper's Table 4."""
    rows, w = report["scaling"]["rows"], guidance_key(report, "scaling")
    headers = ["model", "preset", "params (M)", "GFLOPs", "FD w=1", f"FD {w}", "acc w=1"]
    headers.append(f"acc {w}")
    body = [
        [r["label"], r["preset"], r["parameters"] / 1e6, r["gflops"]]
        + [r["scores"][k][m] for m in ("fd", "label_accuracy") for k in ("w=1", w)]
        for r in rows
    ]
    checks = [
        f"- {'PASS' if c['passed'] else 'FAIL'} ({c['guidance']}, {c['factor']}): "
        f"{c['from']} -> {c['to']}: FD {c['fd'][0]:.2f} -> {c['fd'][1]:.2f}"
        for c in report["scaling"]["checks"]
    ]
    paper = [[k, v["gflops"], v["fid_400k"]] for k, v in report["paper_table4"].items()]
    return bench.sections(
        "## Scaling: FD-MNIST vs forward GFLOPs",
        training_line(report["runs"]["scaling"]),
        bench.markdown_table(headers, body),
        checks,
        "The paper (ImageNet 256, FID-50K at 400K steps, no guidance; Gflops count a "
        "multiply-add once, ours twice):",
        bench.markdown_table(["DiT", "Gflops (paper)", "FID (paper)"], paper),
    )


def speed_markdown(report: dict[str, Any]) -> str:
    """Part 2: training images/s and DDIM seconds of both libraries, per model."""
    rows = []
    for s in report["speed"]:
        for precision, t in s["training"].items():
            ips = t["images_per_second"]
            rows.append(
                [
                    s["label"],
                    f"train {precision} (img/s)",
                    ips["difflab"]["median"],
                    ips["diffusers"]["median"],
                    t["ratio"],
                    t["share_of_bf16_matmul"]["difflab"],
                ]
            )
        samp = s["sampling_bf16"]
        measure = f"DDIM-{samp['steps']} x {samp['images']} bf16 (s)"
        seconds = samp["seconds"]
        rows.append(
            [s["label"], measure, seconds["difflab"], seconds["diffusers"], samp["ratio"], ""]
        )
    headers = ["model", "measure", "difflab", "diffusers", "ratio", "difflab share of peak"]
    return bench.sections(
        f"## Speed vs diffusers DiTTransformer2DModel (goal >= {SPEED_GOAL}x, >= "
        f"{PEAK_GOAL:.0%} of the bf16 matmul: {report['bf16_matmul']['gflops']:.0f} GFLOP/s)",
        bench.markdown_table(headers, rows),
    )


def unet_markdown(report: dict[str, Any]) -> str:
    """Part 3: the U-Net beside the DiT nearest to it in GFLOPs."""
    w, recipe_lr = guidance_key(report, "unet"), report["runs"]["unet"]["recipe"]["lr"]
    headers = ["model", "preset", "GFLOPs", "lr", "FD w=1", f"FD {w}", "FD w=1, x0 clamped"]
    headers += ["acc w=1", "train s", "sample s (w=1)"]
    body = [
        [
            r["label"],
            r["preset"],
            r["gflops"],
            r.get("train_overrides", {}).get("lr", recipe_lr),
            r["scores"]["w=1"]["fd"],
            r["scores"][w]["fd"],
            r["scores"].get("w=1 clip", {}).get("fd", ""),
            r["scores"]["w=1"]["label_accuracy"],
            r["train_seconds"],
            r["scores"]["w=1"]["sample_seconds"],
        ]
        for r in report["unet_vs_dit"]
    ]
    return bench.sections(
        "## DiT vs U-Net at matched GFLOPs",
        training_line(report["runs"]["unet"]),
        bench.markdown_table(headers, body),
        "x0 clamped: DDIM with the predicted x0 clamped to [-1, 1] at every step (static "
        "thresholding, `--clip-x0`), which keeps a trajectory whose early x0 estimate "
        "overshoots from saturating to a white square. train s: wall time of the run, with the "
        "threads of the machine line below (another run may have shared the machine).",
    )


def shipped_markdown(report: dict[str, Any]) -> str:
    """Part 4: the shipped checkpoint's scores with and without guidance."""
    keys = ("fd", "precision", "recall", "label_accuracy", "sample_seconds")
    body = [[w, *(v[k] for k in keys)] for w, v in report["shipped"]["scores"].items()]
    headers = ["w", "FD-MNIST", "precision", "recall", "label accuracy", "sample s"]
    return bench.sections(
        f"## The shipped checkpoint {report['shipped']['checkpoint']}",
        bench.markdown_table(headers, body),
    )


def render_markdown(report: dict[str, Any]) -> str:
    """The report of every part the JSON holds, from the JSON alone."""
    parts = {
        "scaling": scaling_markdown,
        "speed": speed_markdown,
        "unet_vs_dit": unet_markdown,
        "shipped": shipped_markdown,
    }
    runs = ["Where and when each part ran:"]
    for part, about in report["runs"].items():
        m = about["machine"]
        runs.append(
            f"- {part}: {m['cpu_model']}, {m['torch_threads']} torch threads, torch {m['torch']}, "
            f"diffusers {m.get('diffusers')}, {m['date']}."
        )
    return bench.sections(
        f"# DiT on MNIST{' (quick: numbers measure nothing)' if report['quick'] else ''}",
        *(render(report) for key, render in parts.items() if key in report),
        runs,
    )


def figures(report: dict[str, Any], out_dir: Path) -> list[Path]:
    """FD vs GFLOPs (ours, w = 1 and CFG) beside the paper's FID vs Gflops (log x)."""
    if "scaling" not in report:
        return []
    from matplotlib.ticker import NullFormatter

    rows = report["scaling"]["rows"]
    order = ["S", "B", "L", "XL"]  # the paper's, for matching colours; others (tiny) after
    widths = sorted(
        {r["width"] for r in rows},
        key=lambda w: (w not in order, order.index(w) if w in order else 0, w),
    )
    fig, axes = bench.pyplot().subplots(1, 3, figsize=(14, 4.2))
    for ax, key in zip(axes[:2], ("w=1", guidance_key(report, "scaling")), strict=True):
        for colour, width in enumerate(widths):
            series = sorted((r for r in rows if r["width"] == width), key=lambda r: r["gflops"])
            gflops, fd = [r["gflops"] for r in series], [r["scores"][key]["fd"] for r in series]
            ax.plot(gflops, fd, marker="o", color=f"C{colour}", label=f"width {width}")
            for r, x, y in zip(series, gflops, fd, strict=True):
                ax.annotate(r["label"], (x, y), fontsize=8)
        ax.set_xscale("log")
        ticks = sorted(r["gflops"] for r in rows)
        ax.set_xticks(ticks, [f"{g:.2g}" for g in ticks])  # the models' own GFLOPs
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set(xlabel="forward GFLOPs per image (multiply-add = 2)", ylabel="FD-MNIST")
        ax.set_title(f"difflab DiT on MNIST, {key}")
        ax.legend(fontsize="small")
    paper = report["paper_table4"]
    for size in order:
        points = [
            (paper[f"{size}/{p}"]["gflops"], paper[f"{size}/{p}"]["fid_400k"]) for p in (8, 4, 2)
        ]
        axes[2].plot(*zip(*points, strict=True), marker="o", label=f"DiT-{size}")
    axes[2].set_xscale("log")
    axes[2].set(xlabel="Gflops (multiply-add = 1)", ylabel="FID-50K")
    axes[2].set_title("paper: ImageNet 256, 400K steps")
    axes[2].legend(fontsize="small")
    return [
        bench.save_figure(fig, out_dir / f"{bench.stem_of(NAME, report['quick'])}.png", dpi=110)
    ]


# ----------------------------------------------------------------------------- main


def plan(settings: Settings) -> str:
    """The models of the run with their GFLOPs and the training FLOPs they will take."""
    lines = [f"{NAME} plan ({'quick' if settings.quick else 'full'}): parts {settings.parts}"]
    models: list[Model] = list(settings.scaling) if "scaling" in settings.parts else []
    models += [settings.unet, matched_dit(settings)] if "unet" in settings.parts else []
    for model in {m.label: m for m in models}.values():
        facts = model_facts(model)
        # training ~ 3 forward passes per image (forward + backward), sampling 3 per step (CFG: 2)
        train_tflops = 3 * facts["gflops"] * settings.train_steps * settings.batch_size / 1e3
        sample_tflops = 3 * facts["gflops"] * settings.sample_n * settings.sample_steps / 1e3
        lines.append(
            f"  {model.label:8s} {model.preset:16s} {facts['parameters'] / 1e6:6.2f} M params "
            f"{facts['gflops']:7.3f} GFLOPs  train {train_tflops:8.1f} TFLOP  "
            f"sample+eval {sample_tflops:7.1f} TFLOP"
        )
    if "speed" in settings.parts:
        lines.append(f"  speed vs diffusers: {', '.join(m.label for m in settings.speed)}")
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = bench.bench_parser(__doc__, "smoke test (tiny models, few steps)")
    parser.add_argument("--parts", default=",".join(PARTS), help=f"comma list of {PARTS}")
    parser.add_argument("--with-patch-2", action="store_true", help="add S/2 and B/2 to part 1")
    parser.add_argument("--train-images", type=int, help="training images per model")
    parser.add_argument("--n", type=int, help="samples per FD")
    parser.add_argument("--speed-models", help="part-2 models, e.g. S/4,B/4 (default S/4,B/4,B/2)")
    parser.add_argument(
        "--models",
        help="comma list of the labels parts 1 and 3 train and score, e.g. S/7,B/4 or U-Net "
        "(default all); lets two processes share the work, a later full run reuses it",
    )
    parser.add_argument("--sample-steps", type=int, help="DDIM steps for the FD samples")
    parser.add_argument("--guidance-scale", type=float, help="classifier-free weight w")
    parser.add_argument("--plan-only", action="store_true", help="print the plan and stop")
    return bench.parse(parser, argv)


def make_settings(args: argparse.Namespace) -> Settings:
    parts = bench.comma_list(args.parts)
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        raise SystemExit(f"unknown part {unknown[0]!r}; choose from {', '.join(PARTS)}.")
    settings = Settings.quick_run(parts) if args.quick else Settings(parts=parts)
    changes: dict[str, Any] = {"only": bench.comma_list(args.models)}
    if args.with_patch_2 and not args.quick:
        changes["scaling"] = (*settings.scaling, dit("S/2"), dit("B/2"))
    elif not args.quick:
        # without /2 models in part 1, part 3 picks its DiT among those part 1 trains (and reuses
        # that run) instead of training a /2 model only for the comparison
        changes["unet_candidates"] = settings.scaling
    if args.speed_models and not args.quick:
        changes["speed"] = tuple(dit(name) for name in bench.comma_list(args.speed_models))
    given = {"train_images": args.train_images, "sample_n": args.n}
    given |= {"sample_steps": args.sample_steps, "guidance_scale": args.guidance_scale}
    changes |= {name: value for name, value in given.items() if value is not None}
    return dataclasses.replace(settings, **changes)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    settings = make_settings(args)
    if not args.render_only:
        print(plan(settings))
    if args.plan_only:
        return 0

    def report() -> dict[str, Any]:
        earlier = args.out_dir / f"{bench.stem_of(NAME, settings.quick)}.json"
        if not settings.quick:
            return merge_earlier_parts(measure(settings, RUNS_DIR), earlier)
        with tempfile.TemporaryDirectory(prefix="dit_scaling_quick_") as runs:
            return merge_earlier_parts(measure(settings, Path(runs)), earlier)

    return bench.publish(args, NAME, report, render_markdown, figures)


if __name__ == "__main__":
    raise SystemExit(main())
