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

Also an ablation: difflab without channels_last. Writes ``benchmarks/results/lpips_speed.json``
and ``.md``. ``--quick`` runs only the 64×64 cases with one repetition (a smoke test);
``--threads 1`` gives steadier numbers on a machine shared with other jobs (with 2 threads,
every small op waits for a busy core at its OpenMP barrier).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # for tests.metrics.test_lpips_reference (the reference harness)

from tests.metrics.test_lpips_reference import reference_lpips  # noqa: E402

from difflab.io.atomic import write_bytes_atomic  # noqa: E402
from difflab.metrics.lpips import LPIPS, unit_normalize  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
BATCH = 32


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

    def __init__(self, n: int = 1536) -> None:
        self.a, self.b, self.n = torch.randn(n, n), torch.randn(n, n), n
        self.best = 0.0

    def __call__(self) -> None:
        start = time.perf_counter()
        self.a @ self.b
        self.best = max(self.best, 2 * self.n**3 / (time.perf_counter() - start) / 1e9)


def step_fn(
    metric: torch.nn.Module, x0: torch.Tensor, x1: torch.Tensor, backward: bool
) -> Callable:
    def step() -> None:
        if backward:
            x = x1.detach().requires_grad_(True)
            metric(x0, x).sum().backward()
        else:
            with torch.no_grad():
                metric(x0, x1)

    return step


def count_flops(step: Callable[[], None]) -> int:
    counter = FlopCounterMode(display=False)
    with counter:
        step()
    return counter.get_total_flops()


def seconds_per_step(
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
            start = time.perf_counter()
            step()
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="64×64 only, one repetition")
    parser.add_argument("--reps", type=int, default=3, help="timed repetitions per case")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads (default: torch's choice)"
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    reps = 1 if args.quick else args.reps
    sizes = (64,) if args.quick else (64, 256)

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
            x0 = torch.rand(BATCH, 3, size, size) * 2 - 1
            x1 = (x0 + 0.2 * torch.randn_like(x0)).clamp(-1, 1)
            for backward in (False, True):
                mode = "forward+backward" if backward else "forward"
                flops = count_flops(step_fn(ours, x0, x1, backward))
                row = {"net": net, "size": size, "batch": BATCH, "mode": mode, "gflop": flops / 1e9}
                impls = {"difflab": ours, "reference": reference}
                if nchw is not None and not backward:
                    impls["difflab_nchw"] = nchw
                steps = {name: step_fn(m, x0, x1, backward) for name, m in impls.items()}
                for name, seconds in seconds_per_step(steps, reps, peak).items():
                    row[f"{name}_pairs_per_s"] = BATCH / seconds
                    row[f"{name}_gflops"] = flops / seconds / 1e9
                row["speedup_vs_reference"] = (
                    row["difflab_pairs_per_s"] / row["reference_pairs_per_s"]
                )
                rows.append(row)
                print(
                    f"{net:4s} {size:3d}² {mode:16s} difflab {row['difflab_pairs_per_s']:7.1f} "
                    f"pairs/s ({row['difflab_gflops']:5.0f} GFLOP/s)"
                    f"  reference {row['reference_pairs_per_s']:7.1f}  ×"
                    f"{row['speedup_vs_reference']:.2f}"
                    + (
                        f"  (no channels_last: {row['difflab_nchw_pairs_per_s']:.1f})"
                        if "difflab_nchw_pairs_per_s" in row
                        else ""
                    )
                )

    for row in rows:  # share of the best matmul rate seen during the whole run
        row["share_of_peak"] = row["difflab_gflops"] / peak.best
    meta = {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "machine": platform.machine(),
        "processor": platform.processor() or platform.platform(),
        "matmul_peak_gflops": peak.best,
        "reps": reps,
        "quick": args.quick,
    }
    name = "lpips_speed_quick" if args.quick else "lpips_speed"
    payload = json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n"
    write_bytes_atomic(RESULTS / f"{name}.json", payload.encode())
    lines = [
        f"fp32 matmul peak {peak.best:.0f} GFLOP/s, {meta['threads']} threads, torch {meta['torch']}; "
        f"batch {BATCH} pairs.",
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
    ablation = [r for r in rows if "difflab_nchw_pairs_per_s" in r]
    if ablation:
        lines += ["", "channels_last ablation (alex, forward): " + ", ".join(
            f"{r['size']}²: {r['difflab_pairs_per_s']:.1f} vs {r['difflab_nchw_pairs_per_s']:.1f} "
            "pairs/s without" for r in ablation
        )]  # fmt: skip
    write_bytes_atomic(RESULTS / f"{name}.md", ("\n".join(lines) + "\n").encode())
    print(f"results in {RESULTS / (name + '.json')} and .md")


if __name__ == "__main__":
    main()
