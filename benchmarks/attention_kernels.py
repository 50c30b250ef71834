"""Attention kernels on this CPU: why ``difflab.nn.packed_attention`` picks the path it picks.

For the token counts of difflab's models (16, 49 and 196 tokens: DiT /7, /4 and /2 on MNIST, the
U-Net's 7x7 and 14x14 maps), batch 128, 4 heads of width 64, three ways to attend:

* ``fused fp32``: ``scaled_dot_product_attention`` in float32 (PyTorch's fused CPU kernel);
* ``fused bf16``: the same kernel on bf16 inputs (what bf16 autocast gives a model that calls it,
  e.g. diffusers' attention processors);
* ``packed bf16``: :func:`difflab.nn.packed_attention` on bf16 inputs (two batched matmuls and a
  softmax in bf16).

Each is timed forward only (no grad) and forward + backward, interleaved, median of
``--repeats``; and its error against a float64 reference (RMS and max over all outputs, inputs
N(0, 4)). Writes ``benchmarks/results/attention_kernels.{json,md}``.

    python benchmarks/attention_kernels.py --threads 1     # about a minute
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from common import (
    RESULTS_DIR,
    interleaved_timings,
    machine_info,
    markdown_table,
    write_json,
    write_text,
)
from difflab.nn import packed_attention

NAME = "attention_kernels"
BATCH, HEADS, HEAD_DIM = 128, 4, 64
TOKENS = (16, 49, 196)


def fused(qkv: torch.Tensor) -> torch.Tensor:
    """``scaled_dot_product_attention`` on views of packed (B, T, 3, heads, d) inputs."""
    q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, heads, T, d)
    return F.scaled_dot_product_attention(q, k, v).transpose(1, 2)  # (B, T, heads, d)


KERNELS: dict[str, tuple[Callable[[torch.Tensor], torch.Tensor], torch.dtype]] = {
    "fused fp32": (fused, torch.float32),
    "fused bf16": (fused, torch.bfloat16),
    "packed bf16": (packed_attention, torch.bfloat16),
}


def errors(qkv: torch.Tensor) -> dict[str, dict[str, float]]:
    """RMS and max absolute error of each kernel against float64."""
    reference = fused(qkv.double())
    out = {}
    for name, (kernel, dtype) in KERNELS.items():
        with torch.no_grad():
            error = (kernel(qkv.to(dtype)).double() - reference).abs()
        out[name] = {"rms": float(error.pow(2).mean().sqrt()), "max": float(error.max())}
    return out


def timings(qkv: torch.Tensor, repeats: int) -> dict[str, dict[str, float]]:
    """Median seconds per call of each kernel, forward and forward + backward."""
    inputs = {name: qkv.to(dtype).requires_grad_() for name, (_, dtype) in KERNELS.items()}

    def forward(name: str) -> Callable[[], Any]:
        def run() -> None:
            with torch.no_grad():
                KERNELS[name][0](inputs[name])

        return run

    def training(name: str) -> Callable[[], Any]:
        def run() -> None:
            inputs[name].grad = None
            KERNELS[name][0](inputs[name]).float().sum().backward()

        return run

    out: dict[str, dict[str, float]] = {name: {} for name in KERNELS}
    for mode, make in (("forward", forward), ("forward+backward", training)):
        timed = interleaved_timings(
            {name: make(name) for name in KERNELS}, warmup=1, repeats=repeats
        )
        for name, timing in timed.items():
            out[name][mode] = timing.median
    return out


def run(tokens: Sequence[int], repeats: int) -> dict[str, Any]:
    generator = torch.Generator().manual_seed(0)
    cases = []
    for T in tokens:
        qkv = 2 * torch.randn(BATCH, T, 3, HEADS, HEAD_DIM, generator=generator)
        cases.append({"tokens": T, "seconds": timings(qkv, repeats), "error": errors(qkv)})
        fastest = min(
            cases[-1]["seconds"], key=lambda n: cases[-1]["seconds"][n]["forward+backward"]
        )
        print(f"[{NAME}] {T} tokens: fastest forward+backward {fastest}")
    return {
        "name": NAME,
        "machine": machine_info(),
        "shape": {"batch": BATCH, "heads": HEADS, "head_dim": HEAD_DIM},
        "repeats": repeats,
        "cases": cases,
    }


def markdown(report: dict[str, Any]) -> str:
    rows = []
    for case in report["cases"]:
        for name in KERNELS:
            seconds, error = case["seconds"][name], case["error"][name]
            rows.append(
                [
                    case["tokens"],
                    name,
                    seconds["forward"] * 1e3,
                    seconds["forward+backward"] * 1e3,
                    error["rms"],
                    error["max"],
                ]
            )
    machine = report["machine"]
    shape = report["shape"]
    return "\n".join(
        [
            "# Attention kernels on the CPU",
            "",
            f"Batch {shape['batch']}, {shape['heads']} heads of width {shape['head_dim']}; median "
            f"of {report['repeats']} interleaved runs; error against float64 on N(0, 4) inputs.",
            "",
            markdown_table(
                ["tokens", "kernel", "forward ms", "fwd+bwd ms", "RMS error", "max error"], rows
            ),
            "",
            f"Machine: {machine['cpu_model']}, {machine['torch_threads']} torch threads, "
            f"torch {machine['torch']}, {machine['date']}.",
        ]
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--threads", type=int, help="torch threads")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="16 tokens, one repeat")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    report = run((16,) if args.quick else TOKENS, 1 if args.quick else args.repeats)
    stem = NAME + ("_quick" if args.quick else "")
    for path in (
        write_json(RESULTS_DIR / f"{stem}.json", report),
        write_text(RESULTS_DIR / f"{stem}.md", markdown(report)),
    ):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
