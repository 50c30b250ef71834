"""``difflab generate PROMPT ...`` (Imagen's cascade) and ``difflab train-imagen CONFIG``.

``generate`` runs a text-to-image cascade (the shipped colour-digits base + super-resolution
stages by default) with per-stage steps, guidance and the super-resolution stages' augmentation
level, and writes one PNG (a grid when several images are asked for). ``train-imagen`` trains one
stage from a ``configs/imagen_*.yaml`` file.
"""

from __future__ import annotations

import argparse
import dataclasses
import warnings
from pathlib import Path

from difflab.errors import DifflabError
from difflab.io.images import save_grid
from difflab.models.frozen_text import PromptTruncated
from difflab.pipelines.cascade import (
    DEFAULT_GUIDANCE_SCALE,
    DEFAULT_THRESHOLD,
    SHIPPED_CASCADE,
    CascadePipeline,
    StageSettings,
)
from difflab.training.imagen_loop import load_imagen_stage_config, train_imagen_stage

THRESHOLD_CHOICES = {"none": None, "static": "static", "dynamic": "dynamic"}


def register(subparsers: argparse._SubParsersAction) -> None:
    gen = subparsers.add_parser(
        "generate", help="text to image with an Imagen cascade (the shipped colour digits)"
    )
    gen.add_argument(
        "prompt", nargs="?", default=None, help='e.g. "a red 7 on a yellow background"'
    )
    gen.add_argument("--prompt-file", default=None, help="a UTF-8 text file, one prompt per line")
    gen.add_argument("--n", type=int, default=1, help="images per prompt")
    gen.add_argument("--guidance-scale", type=float, default=DEFAULT_GUIDANCE_SCALE, metavar="W",
                     help="classifier-free weight w of every stage (1 = conditional; default "
                          "%(default)s, the measured best)")  # fmt: skip
    threshold = next(k for k, v in THRESHOLD_CHOICES.items() if v == DEFAULT_THRESHOLD)
    gen.add_argument("--threshold", choices=tuple(THRESHOLD_CHOICES), default=threshold,
                     help="x0 thresholding: Imagen's dynamic, static clipping, or none "
                          "(default %(default)s, the measured best)")  # fmt: skip
    gen.add_argument("--steps", type=int, default=50, help="sampler steps of the base stage")
    gen.add_argument("--sr-steps", type=int, default=25, help="sampler steps of each SR stage")
    gen.add_argument("--sr-guidance-scale", type=float, default=None, metavar="W",
                     help="w of the super-resolution stages (default: --guidance-scale)")  # fmt: skip
    gen.add_argument("--noise-level", type=float, default=0.1, metavar="A",
                     help="noise-conditioning augmentation level a in [0, 1] of the SR inputs")  # fmt: skip
    gen.add_argument("--sampler", default="ddim", help="sampler of every stage")
    gen.add_argument("--stages", default=",".join(SHIPPED_CASCADE),
                     help="checkpoints of the cascade, base first, comma-separated")  # fmt: skip
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--out", default="img.png", help="PNG to write")
    gen.set_defaults(handler=run_generate)
    train = subparsers.add_parser("train-imagen", help="train one Imagen stage from a config")
    train.add_argument("config", help="e.g. configs/imagen_base16.yaml")
    train.add_argument("--quiet", action="store_true", help="no progress lines")
    train.set_defaults(handler=run_train)


def read_prompts(args: argparse.Namespace) -> list[str]:
    """The prompt, or the lines of --prompt-file (UTF-8); an empty prompt is the null prompt."""
    if (args.prompt is None) == (args.prompt_file is None):
        raise DifflabError("give a prompt or --prompt-file FILE (one of them).")
    if args.prompt is not None:
        return [args.prompt]
    path = Path(args.prompt_file)
    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as error:
        raise DifflabError(f"cannot read prompt file {path} ({error.strerror}).") from None
    except UnicodeDecodeError as error:
        raise DifflabError(
            f"prompt file {path} is not UTF-8 (bad byte at offset {error.start}); save it as UTF-8."
        ) from None
    prompts = text.splitlines()
    if not prompts:
        raise DifflabError(f"prompt file {path} has no lines; write one prompt per line.")
    return prompts


def run_generate(args: argparse.Namespace) -> int:
    prompts = read_prompts(args)
    if args.n < 1:
        raise DifflabError(f"--n must be at least 1, got {args.n}.")
    prompts = [p for p in prompts for _ in range(args.n)]
    base = StageSettings(
        steps=args.steps, sampler=args.sampler, guidance_scale=args.guidance_scale,
        threshold=THRESHOLD_CHOICES[args.threshold],
    )  # fmt: skip
    sr_scale = args.guidance_scale if args.sr_guidance_scale is None else args.sr_guidance_scale
    sr = dataclasses.replace(
        base, steps=args.sr_steps, guidance_scale=sr_scale, noise_level=args.noise_level
    )
    cascade = CascadePipeline.load([s for s in args.stages.split(",") if s])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", PromptTruncated)
        images = cascade.generate(
            prompts, [base] + [sr] * (len(cascade.stages) - 1), seed=args.seed
        )
    for warning in caught:
        print(f"warning: {warning.message}")
    if any(not p.strip() for p in prompts):
        print(
            "note: an empty prompt is the null embedding: those images are unconditional samples."
        )
    path = save_grid(images, args.out)
    size = images.shape[-1]
    print(f"wrote {path}: {len(prompts)} image(s) of {size}x{size} ({len(cascade.stages)} stages)")
    return 0


def run_train(args: argparse.Namespace) -> int:
    path = train_imagen_stage(load_imagen_stage_config(args.config), progress=not args.quiet)
    print(f"trained Imagen stage: {path}")
    return 0
