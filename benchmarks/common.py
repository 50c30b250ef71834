"""Shared helpers for the benchmark scripts: timing, FLOPs, peak matmul, profiles, reports.

Every helper is small and side-effect free except the ``write_*`` functions. Timings use
``time.perf_counter`` around whole calls; a benchmark chooses its own warm-up and repeat counts.
"""

from __future__ import annotations

import datetime as _dt
import importlib.metadata
import json
import math
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

RESULTS_DIR = Path(__file__).resolve().parent / "results"


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
        std = statistics.stdev(values) if len(values) > 1 else 0.0
        return cls(
            median=statistics.median(values),
            mean=statistics.fmean(values),
            std=std,
            min=min(values),
            max=max(values),
            repeats=len(values),
            samples=values,
        )

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form (samples as a list)."""
        out = asdict(self)
        out["samples"] = list(self.samples)
        return out


def time_once(fn: Callable[[], Any]) -> float:
    """Seconds taken by one call of ``fn``."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


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


def format_spread(value: float, spread: float, digits: int = 1) -> str:
    """``"123.4 ± 5.6"``."""
    return f"{value:.{digits}f} ± {spread:.{digits}f}"


# ----------------------------------------------------------------------------- FLOPs and peak


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
    a = torch.randn(size, size, generator=generator).to(dtype)
    b = torch.randn(size, size, generator=generator).to(dtype)
    timing = interleaved_timings({"mm": lambda: torch.mm(a, b)}, warmup=warmup, repeats=repeats)[
        "mm"
    ]
    flops = 2 * size**3
    return {
        "dtype": str(dtype).removeprefix("torch."),
        "size": size,
        "gflops": flops / timing.median / 1e9,
        "timing": timing.as_dict(),
    }


# ----------------------------------------------------------------------------- profiling


def profile_ops(fn: Callable[[], Any], repeats: int = 1) -> list[dict[str, Any]]:
    """Run ``fn`` ``repeats`` times under ``torch.profiler``; every op with self CPU time.

    Times and call counts are per call of ``fn`` (averaged over the repeats).

    Returns:
        rows of ``{"op", "self_cpu_ms", "self_cpu_share", "cpu_total_ms", "calls"}``, largest
        self time first; ``self_cpu_share`` is the fraction of the whole profiled self CPU time.
    """
    activities = [torch.profiler.ProfilerActivity.CPU]
    with torch.profiler.profile(activities=activities) as prof:
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
    """Sum ``self_cpu_share`` of profiler rows by category.

    An op belongs to the first category one of whose substrings occurs in its name; the rest go
    to ``"other"``.
    """
    shares = dict.fromkeys([*categories, "other"], 0.0)
    for row in rows:
        name = row["op"]
        category = next(
            (c for c, keys in categories.items() if any(k in name for k in keys)), "other"
        )
        shares[category] += row["self_cpu_share"]
    return shares


# ----------------------------------------------------------------------------- machine


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (or ``platform.processor()`` elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
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


def package_version(name: str) -> str | None:
    """Installed version of a distribution, or None."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def machine_info(packages: Sequence[str] = ()) -> dict[str, Any]:
    """CPU, core and thread counts, Python/torch (and ``packages``) versions, and the date."""
    return {
        "cpu_model": cpu_model(),
        "cpu_flags": cpu_flags(),
        "logical_cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        **{name: package_version(name) for name in packages},
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


# ----------------------------------------------------------------------------- writing


def write_json(path: Path, data: Any) -> Path:
    """Write ``data`` as indented JSON (non-finite floats become null); returns the path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_finite(data), indent=2) + "\n")
    return path


def _finite(value: Any) -> Any:
    """``value`` with NaN/inf floats replaced by None, recursively (strict JSON)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub-flavoured markdown table; numeric columns are right-aligned."""

    def numeric(column: int) -> bool:
        return all(isinstance(row[column], int | float) for row in rows) and bool(rows)

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


def write_text(path: Path, text: str) -> Path:
    """Write ``text`` (newline-terminated); returns the path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text if text.endswith("\n") else text + "\n")
    return path


def write_ratio_chart(
    path: Path, labels: Sequence[str], ratios: Sequence[float], *, title: str, goal: float
) -> Path:
    """Horizontal bar chart of speed ratios with lines at 1 (parity) and ``goal``; PNG via Agg."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 0.55 * len(labels) + 1.6))
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
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
