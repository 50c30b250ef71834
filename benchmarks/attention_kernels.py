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
N(0, 4)). Writes ``attention_kernels.{json,md}`` (``--quick``: 16 tokens, batch 16, one repeat).

    python benchmarks/attention_kernels.py --threads 1     # about a minute; make bench-attention
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F

import common as bench
from difflab.nn import packed_attention

NAME = "attention_kernels"
BATCH, HEADS, HEAD_DIM = 128, 4, 64
TOKENS = (16, 49, 196)
MODES = ("forward", "forward+backward")


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

    def call(name: str, mode: str) -> Callable[[], Any]:
        kernel, x = KERNELS[name][0], inputs[name]

        def run() -> None:
            if mode == "forward":
                with torch.no_grad():
                    kernel(x)
            else:
                x.grad = None
                kernel(x).float().sum().backward()

        return run

    out: dict[str, dict[str, float]] = {name: {} for name in KERNELS}
    for mode in MODES:
        timed = bench.interleaved_timings(
            {n: call(n, mode) for n in KERNELS}, warmup=1, repeats=repeats
        )
        for name, timing in timed.items():
            out[name][mode] = timing.median
    return out


def measure(tokens: Sequence[int], batch: int, repeats: int) -> dict[str, Any]:
    """Timings and errors of every kernel at every token count."""
    generator = torch.Generator().manual_seed(0)
    cases = []
    for T in tokens:
        qkv = 2 * torch.randn(batch, T, 3, HEADS, HEAD_DIM, generator=generator)
        seconds = timings(qkv, repeats)
        cases.append({"tokens": T, "seconds": seconds, "error": errors(qkv)})
        fastest = min(seconds, key=lambda n: seconds[n]["forward+backward"])
        print(f"[{NAME}] {T} tokens: fastest forward+backward {fastest}")
    return {
        "name": NAME,
        "machine": bench.machine_info(),
        "shape": {"batch": batch, "heads": HEADS, "head_dim": HEAD_DIM},
        "repeats": repeats,
        "cases": cases,
    }


def render_markdown(report: dict[str, Any]) -> str:
    """The table of every kernel and token count, from the JSON alone."""
    rows = [
        [
            case["tokens"],
            name,
            *(case["seconds"][name][m] * 1e3 for m in MODES),
            case["error"][name]["rms"],
            case["error"][name]["max"],
        ]
        for case in report["cases"]
        for name in case["seconds"]
    ]
    shape = report["shape"]
    headers = ["tokens", "kernel", "forward ms", "fwd+bwd ms", "RMS error", "max error"]
    return bench.sections(
        "# Attention kernels on the CPU",
        f"Batch {shape['batch']}, {shape['heads']} heads of width {shape['head_dim']}; median "
        f"of {report['repeats']} interleaved runs; error against float64 on N(0, 4) inputs.",
        bench.markdown_table(headers, rows),
        f"Machine: {bench.machine_line(report['machine'])}",
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = bench.bench_parser(__doc__, "16 tokens, batch 16, one repeat")
    parser.add_argument("--repeats", type=int, default=5)
    args = bench.parse(parser, argv)
    tokens, batch, repeats = ((16,), 16, 1) if args.quick else (TOKENS, BATCH, args.repeats)
    return bench.publish(args, NAME, lambda: measure(tokens, batch, repeats), render_markdown)


if __name__ == "__main__":
    raise SystemExit(main())
