"""LPIPS speed: difflab against the reference implementation's own code, on this machine.

For AlexNet and VGG16 at 64×64 and 256×256, batch 32 image pairs, forward (``torch.no_grad``)
and forward+backward (gradient w.r.t. one input, as in a perceptual loss):

* **pairs/s** — distances per second (best of ``--reps`` rounds in which the implementations
  take turns) (each pair is two images through the backbone);
* **GFLOP/s** — convolution and matmul FLOPs counted with ``torch.utils.flop_counter`` divided by
  the time, and their **share of the fp32 matmul peak** measured here in the same run;
* **reference** — the official ``lpips`` package's ``LPIPS.forward`` (two backbone passes, NCHW),
  run with the same weights through a stand-in ``torchvision.models``
  (``tests/metrics/test_lpips_reference.py``; the real torchvision is never imported).

Also an ablation: difflab without channels_last. Writes ``lpips_speed.{json,md}``. ``--quick``
runs only the 64×64 cases, batch 4, one repetition (a smoke test); ``--threads 1`` gives steadier
numbers on a machine shared with other jobs.
"""

from __future__ import annotations

import platform
import sys
from collections.abc import Callable, Sequence
from typing import Any

import torch

import common as bench
from difflab.metrics.lpips import LPIPS, unit_normalize

NAME = "lpips_speed"
BATCH = 32
PEAK_SIZE = 1536


class NCHWLPIPS(LPIPS):
    """difflab's LPIPS without the channels_last conversion (the ablation)."""

    def normalized_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        scaled = torch.addcmul(self.input_offset, x, self.input_gain)
        return [unit_normalize(tap) for tap in self.backbone(scaled)]


class MatmulPeak:
    """Best fp32 GFLOP/s of an n×n matmul (2 n³ FLOPs) observed during the whole run.

    The machine is shared, so the peak is probed in every timing round, beside the cases, and
    the best rate seen is the reference for "share of peak".
    """

    def __init__(self, n: int = PEAK_SIZE) -> None:
        self.a, self.b, self.n = torch.randn(n, n), torch.randn(n, n), n
        self.best = 0.0

    def __call__(self) -> None:
        seconds = bench.time_once(lambda: self.a @ self.b)
        self.best = max(self.best, 2 * self.n**3 / seconds / 1e9)


def step_fn(
    metric: torch.nn.Module, x0: torch.Tensor, x1: torch.Tensor, backward: bool
) -> Callable[[], None]:
    """One LPIPS call on the batch (with a backward pass to ``x1`` when ``backward``)."""

    def step() -> None:
        if backward:
            metric(x0, x1.detach().requires_grad_(True)).sum().backward()
        else:
            with torch.no_grad():
                metric(x0, x1)

    return step


def best_seconds_each(
    steps: dict[str, Callable[[], None]], reps: int, peak: MatmulPeak
) -> dict[str, float]:
    """Best time of each step over ``reps`` rounds after one warm-up; the steps (and a matmul
    probe) take turns in every round, so a load change on the machine hits all of them alike."""
    for step in steps.values():
        step()
    best = dict.fromkeys(steps, float("inf"))
    for _ in range(reps):
        peak()
        for name, step in steps.items():
            best[name] = min(best[name], bench.time_once(step))
    return best


def measure(sizes: Sequence[int], batch: int, reps: int, quick: bool) -> dict[str, Any]:
    """Every (net, size, mode) row, timed against the reference implementation."""
    sys.path.insert(0, str(bench.REPO))  # the reference harness lives in the tests
    from tests.metrics.test_lpips_reference import reference_lpips

    torch.manual_seed(0)
    peak = MatmulPeak()
    for _ in range(5):
        peak()
    print(f"fp32 matmul: {peak.best:.0f} GFLOP/s on {torch.get_num_threads()} threads (so far)")
    rows = []
    for net in ("alex", "vgg"):
        ours, reference = LPIPS(net), reference_lpips(net)
        nchw = NCHWLPIPS(net) if net == "alex" else None
        for size in sizes:
            x0 = torch.rand(batch, 3, size, size) * 2 - 1
            x1 = (x0 + 0.2 * torch.randn_like(x0)).clamp(-1, 1)
            for backward in (False, True):
                mode = "forward+backward" if backward else "forward"
                flops = bench.count_flops(step_fn(ours, x0, x1, backward))
                row: dict[str, Any] = {"net": net, "size": size, "batch": batch, "mode": mode}
                row["gflop"] = flops / 1e9
                impls = {"difflab": ours, "reference": reference}
                if nchw is not None and not backward:
                    impls["difflab_nchw"] = nchw
                steps = {name: step_fn(m, x0, x1, backward) for name, m in impls.items()}
                for name, seconds in best_seconds_each(steps, reps, peak).items():
                    row[f"{name}_pairs_per_s"] = batch / seconds
                    row[f"{name}_gflops"] = flops / seconds / 1e9
                row["speedup_vs_reference"] = (
                    row["difflab_pairs_per_s"] / row["reference_pairs_per_s"]
                )
                rows.append(row)
                print(
                    f"{net:4s} {size:3d}² {mode:16s} difflab {row['difflab_pairs_per_s']:7.1f} "
                    f"pairs/s ({row['difflab_gflops']:5.0f} GFLOP/s)  reference "
                    f"{row['reference_pairs_per_s']:7.1f}  ×{row['speedup_vs_reference']:.2f}"
                )
    for row in rows:  # share of the best matmul rate seen during the whole run
        row["share_of_peak"] = row["difflab_gflops"] / peak.best
    machine = bench.machine_info(["lpips"])
    meta = {"torch": torch.__version__, "threads": torch.get_num_threads()}
    meta |= {
        "machine": platform.machine(),
        "processor": platform.processor() or machine["platform"],
    }
    meta |= {"matmul_peak_gflops": peak.best, "reps": reps, "quick": quick}
    return {"meta": meta, "rows": rows, "machine": machine}


def render_markdown(report: dict[str, Any]) -> str:
    """The table of every row, and the channels_last ablation, from the JSON alone."""
    meta, rows = report["meta"], report["rows"]
    lines = [
        f"fp32 matmul peak {meta['matmul_peak_gflops']:.0f} GFLOP/s, {meta['threads']} threads, "
        f"torch {meta['torch']}; batch {rows[0]['batch']} pairs.",
        "",
        "| net | size | mode | difflab pairs/s | GFLOP/s | share of peak | reference pairs/s | speed-up |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['net']} | {r['size']}² | {r['mode']} | {r['difflab_pairs_per_s']:.1f} | "
            f"{r['difflab_gflops']:.0f} | {100 * r['share_of_peak']:.0f} % | "
            f"{r['reference_pairs_per_s']:.1f} | ×{r['speedup_vs_reference']:.2f} |"
        )
    ablation = [
        f"{r['size']}²: {r['difflab_pairs_per_s']:.1f} vs {r['difflab_nchw_pairs_per_s']:.1f} "
        "pairs/s without"
        for r in rows
        if "difflab_nchw_pairs_per_s" in r
    ]
    if ablation:
        lines += ["", "channels_last ablation (alex, forward): " + ", ".join(ablation)]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = bench.bench_parser(__doc__, "64×64 only, batch 4, one repetition")
    parser.add_argument("--reps", type=int, default=3, help="timed repetitions per case")
    args = bench.parse(parser, argv)
    sizes, batch, reps = ((64,), 4, 1) if args.quick else ((64, 256), BATCH, args.reps)
    return bench.publish(
        args, NAME, lambda: measure(sizes, batch, reps, args.quick), render_markdown
    )


if __name__ == "__main__":
    raise SystemExit(main())
