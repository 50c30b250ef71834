"""What every benchmark script shares: the command line, machine facts, timing, planning and
progress, bf16 autocast, JSON and markdown, plots, and the speed race against diffusers.

A benchmark is a thin script: it measures through the library, writes one JSON file
(:func:`publish`, which adds the run's ``provenance``: the git commit and the SHA-256 of every
shipped checkpoint the measurement opened), and renders its markdown (and plots) from that JSON alone, so that
``--render-only`` redoes the report of an earlier run without measuring anything. Timings use
``time.perf_counter`` around whole calls; a benchmark chooses its own warm-up and repeat counts.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import hashlib
import importlib.metadata
import json
import math
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from difflab.diffusion import Conditioning, NoiseSchedule, denoising_loss
from difflab.io.atomic import write_bytes_atomic
from difflab.io.weights import weights_dir
from difflab.pipelines import DiffusionPipeline, evaluate_pipeline

RESULTS_DIR = Path(__file__).resolve().parent / "results"
REPO = RESULTS_DIR.parents[1]
NUM_TIMESTEPS = 1000  # the speed races' schedule: linear betas, T = 1000, as the shipped models
LIBRARIES = ("difflab", "diffusers")


# ----------------------------------------------------------------------------- command line


def bench_parser(doc: str | None, quick: str) -> argparse.ArgumentParser:
    """An argument parser with the flags every benchmark takes.

    ``--quick`` (a smoke test of every code path in seconds; its numbers mean nothing; outputs
    named ``*_quick``), ``--out-dir``, ``--threads`` and ``--render-only``.
    """
    parser = argparse.ArgumentParser(
        description=(doc or "").split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help=quick)
    parser.add_argument("--out-dir", type=Path, default=RESULTS_DIR, help="default: %(default)s")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    parser.add_argument(
        "--render-only",
        action="store_true",
        help="re-render the markdown (and plots) from the JSON in --out-dir; measure nothing",
    )
    return parser


def output_name(text: str) -> str:
    """``--name``'s type: the stem of a report's files, letters, digits, '_' and '-' only."""
    if not re.fullmatch(r"[A-Za-z0-9_-]+", text):
        raise argparse.ArgumentTypeError(f"{text!r}: use letters, digits, '_' and '-' only")
    return text


def add_name_argument(parser: argparse.ArgumentParser, default: str) -> None:
    """``--name NAME``: write ``NAME.{json,md}`` and NAME-prefixed figures, so a run on other
    models or cells does not overwrite the default report."""
    parser.add_argument(
        "--name",
        type=output_name,
        default=default,
        help="stem of the outputs (default: %(default)s)",
    )


def parse(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse ``argv`` and apply ``--threads``."""
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    return args


def comma_list(text: str | None) -> tuple[str, ...]:
    """``"a, b,"`` -> ``("a", "b")``; None -> ``()``."""
    return tuple(part.strip() for part in (text or "").split(",") if part.strip())


def stem_of(name: str, quick: bool) -> str:
    """The file stem of a run's outputs: ``name`` or ``name_quick``."""
    return name + ("_quick" if quick else "")


Renderer = Callable[[dict[str, Any]], str]
Figures = Callable[[dict[str, Any], Path], list[Path]]


def publish(
    args: argparse.Namespace,
    name: str,
    measure: Callable[[], dict[str, Any]],
    render: Renderer,
    figures: Figures | None = None,
) -> int:
    """The standard end of a benchmark: JSON, then markdown and figures rendered from it.

    Without ``--render-only`` ``measure()`` runs and its report is written to
    ``OUT_DIR/STEM.json``; either way the report is read back from that file, and
    ``render(report)`` -> ``STEM.md`` and ``figures(report, OUT_DIR)`` see only what the JSON holds.
    Returns the exit status (1 when ``--render-only`` finds no JSON).
    """
    path = args.out_dir / f"{stem_of(name, args.quick)}.json"
    if args.render_only and not path.is_file():
        print(f"error: --render-only needs {path}; run the benchmark first (or name --out-dir).")
        return 1
    if not args.render_only:
        with recording_weights() as opened:
            report = measure()
        if isinstance(report, dict):
            report = {**report, "provenance": provenance(opened)}
        print(f"wrote {write_json(path, report)}")
    report = read_json(path)
    written = [write_text(path.with_suffix(".md"), render(report))]
    written += figures(report, args.out_dir) if figures else []
    for out in written:
        print(f"wrote {out}")
    return 0


# ----------------------------------------------------------------------------- provenance

_opened_weights: list[set[Path]] = []  # one set per recording_weights() in progress


def _note_opened_weights(event: str, args: tuple[Any, ...]) -> None:
    """Audit hook: remember every shipped checkpoint a recording measurement opens."""
    if event != "open" or not _opened_weights or not isinstance(args[0], str | Path):
        return
    path = Path(os.path.realpath(args[0]))
    if path.parent == weights_dir().resolve():
        for opened in _opened_weights:
            opened.add(path)


sys.addaudithook(_note_opened_weights)


@contextlib.contextmanager
def recording_weights() -> Iterator[set[Path]]:
    """Collect the shipped checkpoints (``weights/*``) opened inside the block, by any code."""
    opened: set[Path] = set()
    _opened_weights.append(opened)
    try:
        yield opened
    finally:
        _opened_weights.remove(opened)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def git_commit() -> dict[str, Any]:
    """``{"commit": HEAD, "uncommitted_changes": bool}`` of the checkout (code under src/,
    benchmarks/, configs/); ``commit`` is None outside a git checkout."""

    def git(*argv: str) -> str | None:
        try:
            done = subprocess.run(
                ["git", "-C", str(REPO), *argv], capture_output=True, text=True, timeout=30
            )
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    changes = git("status", "--porcelain", "--", "src", "benchmarks", "configs")
    return {"commit": commit, "uncommitted_changes": bool(changes) if commit else None}


def provenance(weights: Iterable[Path]) -> dict[str, Any]:
    """What a result ran on: the commit and the SHA-256 of each shipped checkpoint it opened
    (``tests/benchmarks/test_provenance.py`` checks these against the files in ``weights/``)."""
    return {
        **git_commit(),
        "weights": {path.name: sha256_of(path) for path in sorted(weights)},
    }


# ----------------------------------------------------------------------------- machine


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (or ``platform.processor()`` elsewhere)."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def cpu_flags() -> list[str]:
    """The vector-ISA flags relevant to matmul speed (AVX2, AVX-512, AMX, BF16)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    flags = next((ln for ln in text.splitlines() if ln.startswith("flags")), "").split()
    wanted = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_tile")
    return [f for f in wanted if f in flags]


def bf16_support(flags: Sequence[str]) -> dict[str, Any]:
    """What the CPU offers bf16 matmuls: AVX2 only (emulated), AVX-512 BF16, or AMX tiles."""
    capability = getattr(torch.backends.cpu, "get_cpu_capability", lambda: None)()
    return {
        "avx2": "avx2" in flags,
        "avx512_bf16": "avx512_bf16" in flags,
        "amx": "amx_bf16" in flags,
        "torch_cpu_capability": capability,
    }


def package_version(name: str) -> str | None:
    """Installed version of a distribution, or None."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def machine_info(packages: Sequence[str] = ()) -> dict[str, Any]:
    """CPU (model, ISA flags, bf16 support), cores and threads, versions, load and date."""
    flags = cpu_flags()
    return {
        "cpu_model": cpu_model(),
        "cpu_flags": flags,
        "bf16": bf16_support(flags),
        "logical_cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        **{name: package_version(name) for name in packages},
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


def machine_line(machine: dict[str, Any]) -> str:
    """``"AMD EPYC, 2 CPUs, 1 torch thread(s), torch 2.13.0+cpu, diffusers 0.42.1; DATE."``"""
    extra = "".join(
        f", {name} {machine[name]}"
        for name in ("diffusers", "vector-quantize-pytorch")
        if machine.get(name)
    )
    return (
        f"{machine['cpu_model']}, {machine['logical_cpus']} CPUs, {machine['torch_threads']} torch "
        f"thread(s), torch {machine['torch']}{extra}; {machine['date']}."
    )


# ----------------------------------------------------------------------------- timing


@dataclass(frozen=True)
class Timing:
    """Summary of repeated wall-clock measurements of one call, in seconds per call."""

    median: float
    mean: float
    std: float
    min: float
    max: float
    repeats: int
    samples: tuple[float, ...]

    @classmethod
    def from_samples(cls, samples: Sequence[float]) -> Timing:
        """Summarise raw per-call durations (at least one)."""
        values = tuple(float(s) for s in samples)
        if not values:
            raise ValueError("a Timing needs at least one sample.")
        return cls(
            median=statistics.median(values),
            mean=statistics.fmean(values),
            std=statistics.stdev(values) if len(values) > 1 else 0.0,
            min=min(values),
            max=max(values),
            repeats=len(values),
            samples=values,
        )

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form (samples as a list)."""
        return {**asdict(self), "samples": list(self.samples)}

    def stats(self) -> dict[str, float]:
        """Seconds per call: median, mean, std, min, max."""
        return {k: getattr(self, k) for k in ("median", "mean", "std", "min", "max")}

    def rates(self, items: float) -> dict[str, float]:
        """``items`` per second of each call, summarised (median, mean, std, min, max)."""
        rates = [items / s for s in self.samples]
        return {
            "median": items / self.median,
            "mean": statistics.fmean(rates),
            "std": statistics.stdev(rates) if len(rates) > 1 else 0.0,
            "min": min(rates),
            "max": max(rates),
        }


def time_once(fn: Callable[[], Any], sync: Callable[[], None] = lambda: None) -> float:
    """Seconds taken by one call of ``fn`` (``sync`` ends it, e.g. a CUDA synchronisation)."""
    start = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - start


def timed(
    fn: Callable[[], Any],
    *,
    warmup: int,
    repeats: int,
    sync: Callable[[], None] = lambda: None,
) -> Timing:
    """Seconds per call of ``fn`` over ``repeats`` calls after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    sync()
    return Timing.from_samples([time_once(fn, sync) for _ in range(repeats)])


def best_seconds(fn: Callable[[], Any], repeats: int = 2) -> float:
    """The fastest of ``repeats`` calls after one warm-up call (a rate for planning)."""
    return timed(fn, warmup=1, repeats=repeats).min


def interleaved_timings(
    fns: dict[str, Callable[[], Any]], *, warmup: int, repeats: int
) -> dict[str, Timing]:
    """Time several callables, alternating between them so that load drift hits all alike.

    Each callable is first called ``warmup`` times (untimed); then ``repeats`` rounds follow, each
    timing every callable once in turn (the order rotates from round to round).

    Returns:
        ``{name: Timing}`` of seconds per call.
    """
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    names = list(fns)
    samples: dict[str, list[float]] = {name: [] for name in names}
    for round_index in range(repeats):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            samples[name].append(time_once(fns[name]))
    return {name: Timing.from_samples(values) for name, values in samples.items()}


def repeated(fn: Callable[[], Any], times: int) -> Callable[[], None]:
    """A callable that calls ``fn`` ``times`` times (to time work too short to time alone)."""

    def run() -> None:
        for _ in range(times):
            fn()

    return run


def format_spread(value: float, spread: float, digits: int = 1) -> str:
    """``"123.4 ± 5.6"``."""
    return f"{value:.{digits}f} ± {spread:.{digits}f}"


def clock(seconds: float) -> str:
    """``"1:02:03"`` or ``"2:03"``."""
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


@dataclass(frozen=True)
class Task:
    """One piece of a planned run.

    Attributes:
        part: the line of the plan it counts in (``"table1"``, ``"figures"``, ...).
        label: its name in the progress lines.
        evaluations: image-network evaluations it takes (one network call on one image = 1).
        seconds: its predicted duration (evaluations over a measured rate, plus overheads).
        run: does the work; returns a JSON-ready row (``wall_seconds`` is added when absent).
        message: the progress line's text for that row.
    """

    part: str
    label: str
    evaluations: int
    seconds: float
    run: Callable[[], dict[str, Any]]
    message: Callable[[dict[str, Any]], str] = lambda row: "done"


def plan_parts(tasks: Sequence[Task]) -> dict[str, dict[str, float]]:
    """``{part: {"evaluations", "seconds", "tasks"}}`` in the order the parts first appear."""
    parts: dict[str, dict[str, float]] = {}
    for task in tasks:
        part = parts.setdefault(task.part, {"evaluations": 0, "seconds": 0.0, "tasks": 0})
        part["evaluations"] += task.evaluations
        part["seconds"] += task.seconds
        part["tasks"] += 1
    return parts


def print_plan(tasks: Sequence[Task]) -> float:
    """Print each part's tasks, evaluations and predicted minutes; returns the predicted seconds."""
    for name, part in plan_parts(tasks).items():
        print(
            f"  {name:<15} {part['tasks']:>4} tasks {part['evaluations']:>12,} evaluations  ≈ "
            f"{part['seconds'] / 60:6.1f} min"
        )
    total = sum(task.seconds for task in tasks)
    print(f"  {'total':<49} ≈ {total / 60:6.1f} min", flush=True)
    return total


def run_tasks(tasks: Sequence[Task]) -> dict[str, list[dict[str, Any]]]:
    """Run the tasks in order, printing one line per task: its message and time, the elapsed
    time and the estimated total (the elapsed time scaled by the share of predicted work done).

    Returns:
        The rows of each part, in order.
    """
    start, predicted, done = time.perf_counter(), sum(t.seconds for t in tasks), 0.0
    rows: dict[str, list[dict[str, Any]]] = {}
    for index, task in enumerate(tasks, 1):
        tick = time.perf_counter()
        row = task.run()
        row.setdefault("wall_seconds", time.perf_counter() - tick)
        rows.setdefault(task.part, []).append(row)
        done += task.seconds
        elapsed = time.perf_counter() - start
        print(
            f"[{index:>2}/{len(tasks)}] {task.label}: {task.message(row)} "
            f"({row['wall_seconds']:.1f} s) | elapsed {clock(elapsed)}, estimated total "
            f"{clock(elapsed * predicted / max(done, 1e-9))}",
            flush=True,
        )
    return rows


# ----------------------------------------------------------------------------- FLOPs, profiles


def count_flops(fn: Callable[[], Any]) -> int:
    """FLOPs of one call of ``fn`` as counted by ``torch.utils.flop_counter.FlopCounterMode``.

    Only matmuls, convolutions and the SDPA kernels that PyTorch has formulas for are counted;
    element-wise work and normalisation are not (they are memory-bound, not FLOP-bound).
    """
    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def matmul_gflops(
    dtype: torch.dtype, size: int = 2048, *, warmup: int = 2, repeats: int = 5
) -> dict[str, Any]:
    """Achieved GFLOP/s of a square ``size x size`` matmul in ``dtype``: a practical peak.

    Returns:
        ``{"dtype", "size", "gflops" (median), "timing"}``.
    """
    generator = torch.Generator().manual_seed(0)
    a, b = (torch.randn(size, size, generator=generator).to(dtype) for _ in range(2))
    timing = timed(lambda: torch.mm(a, b), warmup=warmup, repeats=repeats)
    return {
        "dtype": str(dtype).removeprefix("torch."),
        "size": size,
        "gflops": 2 * size**3 / timing.median / 1e9,
        "timing": timing.as_dict(),
    }


def profile_ops(fn: Callable[[], Any], repeats: int = 1) -> list[dict[str, Any]]:
    """Run ``fn`` ``repeats`` times under ``torch.profiler``; every op with self CPU time.

    Returns:
        rows of ``{"op", "self_cpu_ms", "self_cpu_share", "cpu_total_ms", "calls"}`` per call of
        ``fn``, largest self time first; the share is of the whole profiled self CPU time.
    """
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for _ in range(repeats):
            fn()
    events = [e for e in prof.key_averages() if e.self_cpu_time_total > 0]
    total = sum(e.self_cpu_time_total for e in events) or 1.0
    events.sort(key=lambda e: e.self_cpu_time_total, reverse=True)
    return [
        {
            "op": e.key,
            "self_cpu_ms": e.self_cpu_time_total / 1e3 / repeats,
            "self_cpu_share": e.self_cpu_time_total / total,
            "cpu_total_ms": e.cpu_time_total / 1e3 / repeats,
            "calls": e.count / repeats,
        }
        for e in events
    ]


def share_by_category(
    rows: Sequence[dict[str, Any]], categories: dict[str, Sequence[str]]
) -> dict[str, float]:
    """Sum ``self_cpu_share`` of profiler rows by category (first matching substring wins)."""
    shares = dict.fromkeys([*categories, "other"], 0.0)
    for row in rows:
        category = next(
            (c for c, keys in categories.items() if any(k in row["op"] for k in keys)), "other"
        )
        shares[category] += row["self_cpu_share"]
    return shares


# ----------------------------------------------------------------------------- models


def autocast(precision: str | bool) -> contextlib.AbstractContextManager[Any]:
    """bf16 CPU autocast for ``"bf16"`` (or True), nothing for ``"fp32"`` (or False)."""
    enabled = precision in ("bf16", True)
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=enabled)


def parameter_count(module: nn.Module) -> int:
    """Number of parameters of ``module``."""
    return sum(p.numel() for p in module.parameters())


SCORE_KEYS = ("metric", "fd", "precision", "recall", "label_accuracy", "n", "sample_seconds")


def score(pipeline: DiffusionPipeline, **options: Any) -> dict[str, Any]:
    """The metrics of ``evaluate_pipeline(pipeline, **options)`` (:data:`SCORE_KEYS`)."""
    result = evaluate_pipeline(pipeline, **options)
    return {key: result[key] for key in SCORE_KEYS}


def denoiser_rate(pipeline: DiffusionPipeline, batch: int, cond: Conditioning) -> float:
    """Images per second through one call of the pipeline's denoiser in its precision (the best
    of two calls after a warm-up): the rate a plan predicts sampling time from."""
    x = pipeline.noise(batch, seed=0)
    t = torch.full((batch,), pipeline.schedule.num_timesteps // 2)
    denoiser = pipeline.denoiser()
    with torch.no_grad(), autocast(pipeline.precision):
        return batch / best_seconds(lambda: denoiser(x, t, cond))


def race_pipeline(net: nn.Module, precision: str) -> DiffusionPipeline:
    """A freshly built network as a pipeline (linear betas, T = 1000) in ``precision``."""
    schedule = NoiseSchedule.from_name("linear", NUM_TIMESTEPS)
    return DiffusionPipeline.from_network(net, schedule, precision=precision)


# ----------------------------------------------------------------------------- speed races


def phase(name: str) -> torch.profiler.record_function:
    """A profiler label for one phase of a training step (costs microseconds when not profiling)."""
    return torch.profiler.record_function("phase: " + name)


def race_train_steps(
    ours: nn.Module,
    theirs: nn.Module,
    x0: torch.Tensor,
    labels: torch.Tensor | None,
    precision: str,
    seed: int = 0,
) -> dict[str, Callable[[], float]]:
    """One training step per call for each library: eps loss at random t, backward, AdamW.

    difflab: ``denoising_loss`` (dropping 10 % of the labels of a class-conditional net, as its
    training loop does); diffusers: ``DDPMScheduler.add_noise``, the net's ``.sample``, MSE (its
    DiT drops labels itself in training mode). Each step is labelled by :func:`phase`.
    """
    from diffusers import DDPMScheduler

    schedule = NoiseSchedule.from_name("linear", NUM_TIMESTEPS)
    scheduler = DDPMScheduler(num_train_timesteps=NUM_TIMESTEPS, beta_schedule="linear")
    generator = torch.Generator().manual_seed(seed)
    extra = {} if labels is None else {"class_labels": labels}

    def difflab_loss() -> torch.Tensor:
        cond = Conditioning()
        if labels is not None:
            cond = Conditioning(labels=labels).drop(
                torch.rand(labels.shape, generator=generator) < 0.1
            )
        with autocast(precision):
            return denoising_loss(ours, schedule, x0, cond, generator=generator)

    def diffusers_loss() -> torch.Tensor:
        t = torch.randint(0, NUM_TIMESTEPS, (x0.shape[0],), generator=generator)
        noise = torch.randn(x0.shape, generator=generator)
        with autocast(precision):
            output = theirs(scheduler.add_noise(x0, noise, t), t, **extra).sample
        return F.mse_loss(output.float(), noise)

    def stepper(net: nn.Module, loss_fn: Callable[[], torch.Tensor]) -> Callable[[], float]:
        net.train()
        optimizer = torch.optim.AdamW(net.parameters(), lr=1e-4)

        def step() -> float:
            optimizer.zero_grad(set_to_none=True)
            with phase("forward + loss"):
                loss = loss_fn()
            with phase("backward"):
                loss.backward()
            with phase("optimizer"):
                optimizer.step()
            return float(loss.detach())

        return step

    return {"difflab": stepper(ours, difflab_loss), "diffusers": stepper(theirs, diffusers_loss)}


def race_samplers(
    ours: nn.Module,
    theirs: nn.Module,
    n: int,
    steps: int,
    labels: torch.Tensor | None,
    precision: str,
    seed: int = 0,
) -> dict[str, Callable[[], torch.Tensor]]:
    """One DDIM run (eta = 0, the same x_T) per call for each library.

    difflab: ``DiffusionPipeline.generate`` in ``precision``; diffusers: ``DDIMScheduler`` (no
    clipping, as difflab's plain Denoiser) stepping the net's ``.sample`` under the same autocast.
    """
    from diffusers import DDIMScheduler

    scheduler = DDIMScheduler(
        num_train_timesteps=NUM_TIMESTEPS, beta_schedule="linear", clip_sample=False
    )
    pipeline = race_pipeline(ours, precision)
    theirs.eval()
    x_T = pipeline.noise(n, seed)
    cond = None if labels is None else Conditioning(labels=labels)
    extra = {} if labels is None else {"class_labels": labels}

    def difflab_run() -> torch.Tensor:
        return pipeline.generate(n, cond, seed=seed, steps=steps, spacing="uniform", eta=0.0)

    @torch.no_grad()
    def diffusers_run() -> torch.Tensor:
        with autocast(precision):
            scheduler.set_timesteps(steps)
            x = x_T
            for t in scheduler.timesteps:
                eps = theirs(x, t.expand(len(x)), **extra).sample
                x = scheduler.step(eps.float(), t, x, eta=0.0).prev_sample
            return x

    return {"difflab": difflab_run, "diffusers": diffusers_run}


# ----------------------------------------------------------------------------- JSON, markdown


def write_json(path: Path, data: Any) -> Path:
    """Write ``data`` as indented JSON (non-finite floats become null), atomically."""
    write_bytes_atomic(path, (json.dumps(_finite(data), indent=2) + "\n").encode())
    return path


def read_json(path: Path) -> Any:
    """The JSON at ``path``."""
    return json.loads(Path(path).read_text())


def _finite(value: Any) -> Any:
    """``value`` with NaN/inf floats replaced by None, recursively (strict JSON)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def write_text(path: Path, text: str) -> Path:
    """Write ``text`` (newline-terminated), atomically; returns the path."""
    write_bytes_atomic(path, (text if text.endswith("\n") else text + "\n").encode())
    return path


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub-flavoured markdown table; numeric columns are right-aligned."""

    def numeric(column: int) -> bool:
        return bool(rows) and all(isinstance(row[column], int | float) for row in rows)

    align = ["---:" if numeric(i) else "---" for i in range(len(headers))]
    lines = [
        "| " + " | ".join(headers) + " |",
        "| " + " | ".join(align) + " |",
        *("| " + " | ".join(_cell(c) for c in row) + " |" for row in rows),
    ]
    return "\n".join(lines)


def _cell(value: Any) -> str:
    """Markdown text of one table cell (pipes escaped, floats to 3 significant-ish digits)."""
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
    return str(value).replace("|", "\\|")


def fmt(value: float | None, digits: int = 3, missing: str = "—") -> str:
    """A number with ``digits`` decimals, or ``missing`` for None."""
    return missing if value is None else f"{value:.{digits}f}"


def passfail(value: bool | None) -> str:
    """``"PASS"``, ``"FAIL"`` or ``"n/a"`` (None: not measured)."""
    return "n/a" if value is None else ("PASS" if value else "FAIL")


def sections(*parts: str | Iterable[str]) -> str:
    """Markdown blocks joined by blank lines; a block may be a list of lines (one per line)."""
    blocks = [part if isinstance(part, str) else "\n".join(part) for part in parts]
    return "\n\n".join(block for block in blocks if block)


# ----------------------------------------------------------------------------- plots


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: Path, dpi: int = 120) -> Path:
    """Save ``fig`` as a PNG at ``path`` and close it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    pyplot().close(fig)
    return path


def image_rows_figure(
    rows: Sequence[torch.Tensor], labels: Sequence[str], path: Path, title: str = ""
) -> Path:
    """One PNG: each tensor (k, C, H, W) in [-1, 1] a labelled row of images."""
    from difflab.io.images import make_grid

    plt = pyplot()
    width = max(len(r) for r in rows)
    fig, axes = plt.subplots(
        len(rows), 1, figsize=(0.75 * width + 1.2, 0.8 * len(rows) + 0.6), squeeze=False
    )
    for ax, images, label in zip(axes[:, 0], rows, labels, strict=True):
        grid = make_grid(images, nrow=len(images))  # (H', W', C) uint8
        ax.imshow(grid[..., 0] if grid.shape[-1] == 1 else grid, cmap="gray", vmin=0, vmax=255)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_ylabel(label, rotation=0, ha="right", va="center", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    return save_figure(fig, path)


def write_ratio_chart(
    path: Path, labels: Sequence[str], ratios: Sequence[float], *, title: str, goal: float
) -> Path:
    """Horizontal bar chart of speed ratios with lines at 1 (parity) and ``goal``."""
    fig, ax = pyplot().subplots(figsize=(7.5, 0.55 * len(labels) + 1.6))
    colours = ["tab:green" if r >= goal else "tab:blue" if r >= 1 else "tab:red" for r in ratios]
    bars = ax.barh(list(labels), list(ratios), color=colours)
    ax.bar_label(bars, labels=[f"{r:.2f}×" for r in ratios], padding=3)
    ax.axvline(1.0, color="black", linewidth=1, label="parity")
    ax.axvline(goal, color="tab:green", linestyle="--", linewidth=1, label=f"goal {goal:g}×")
    ax.invert_yaxis()
    ax.set_xlim(0, max([*ratios, goal]) * 1.25)
    ax.set_xlabel("speed ratio (> 1: first is faster)")
    ax.set_title(title)
    ax.legend(loc="lower right", fontsize="small")
    return save_figure(fig, path)
