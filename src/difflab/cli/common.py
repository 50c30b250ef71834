"""Argument groups and parsing helpers shared by the sub-commands."""

from __future__ import annotations

import argparse
import contextlib
import math
import sys
from collections.abc import Iterator

import torch

from difflab.diffusion import SPACING_NAMES
from difflab.errors import DifflabError
from difflab.io.device import DEVICE_CHOICES, bf16_enabled, cpu_has_native_bf16
from difflab.io.validation import check_number, quote
from difflab.pipelines import PRECISIONS, DiffusionPipeline, load_noisy_classifier
from difflab.samplers import DEFAULT_SAMPLER, DEFAULT_STEPS, SAMPLER_NAMES, SAMPLERS, Guidance

DEFAULT_CLASSIFIER_SCALE = 1.0
SAMPLE_DEFAULTS: tuple[str, int] = (DEFAULT_SAMPLER, DEFAULT_STEPS)
"""``difflab sample``'s sampler and steps, ``generate()``'s (see ``DEFAULT_SAMPLER``). ``eval``
keeps DDIM-50, the setting of every FD in the README."""
SAMPLING_PRECISIONS: tuple[str, ...] = ("auto", *PRECISIONS)
"""``--precision`` of sample and eval: ``auto`` is bf16 where the device computes it natively."""


def add_sampling_arguments(
    parser: argparse.ArgumentParser,
    *,
    with_sampler: bool = True,
    defaults: tuple[str, int] = ("ddim", 50),
) -> None:
    """``--sampler --eta --sigma-hat --clip-x0 --dynamic-threshold --precision`` (with a sampler),
    ``--steps --spacing --seed``; ``defaults`` = (sampler, steps)."""
    default_sampler, default_steps = defaults
    if with_sampler:
        parser.add_argument(
            "--sampler",
            choices=SAMPLER_NAMES,
            default=default_sampler,
            help=f"default {default_sampler}; "
            + "; ".join(f"{spec.name}: {spec.summary}" for spec in SAMPLERS.values()),
        )
        parser.add_argument(
            "--eta", type=float, default=0.0, help="DDIM noise level: 0 deterministic, 1 DDPM-like"
        )
        parser.add_argument(
            "--sigma-hat",
            action="store_true",
            help="the DDIM paper's larger-variance sigma-hat variant",
        )
        parser.add_argument(
            "--clip-x0",
            action="store_true",
            help="clamp the (guided) predicted x0 to [-1, 1] at every step (static thresholding)",
        )
        parser.add_argument(
            "--dynamic-threshold",
            type=float,
            default=None,
            metavar="P",
            help="Imagen's dynamic thresholding of the guided x0 at percentile P (e.g. 0.995)",
        )
        parser.add_argument(
            "--precision",
            choices=SAMPLING_PRECISIONS,
            default="auto",
            help="auto (default: bf16 autocast where the device computes bf16 natively, i.e. "
            "a bf16 GPU or a CPU with AVX-512 BF16 / AMX, else fp32), fp32, bf16 or fp64",
        )
    parser.add_argument(
        "--steps",
        type=int,
        default=default_steps,
        help=f"number of sampling steps S (default {default_steps})",
    )
    parser.add_argument(
        "--spacing",
        choices=SPACING_NAMES,
        default=None if with_sampler else "uniform",
        help="timestep sub-sequence (default: the sampler's own, uniform for ddim and ddpm, "
        "karras for the others; trailing for a v- or x0-predicting model on the cosine schedule)"
        if with_sampler
        else "timestep sub-sequence (default uniform)",
    )
    parser.add_argument("--seed", type=int, default=0)


def resolve_precision(name: str, device: torch.device, *, report: bool = True) -> str:
    """The precision a sampling command runs in: ``auto`` -> bf16 where bf16 is native on
    ``device`` (:func:`difflab.io.device.bf16_enabled`), else fp32, said once on stderr; an explicit
    bf16 on a CPU that emulates it gets a one-line warning. ``report=False`` prints nothing (the
    other ranks of a distributed run)."""
    if name not in SAMPLING_PRECISIONS:
        raise DifflabError(
            f"unknown precision {name!r}; choose one of {', '.join(SAMPLING_PRECISIONS)}."
        )
    emulated = device.type == "cpu" and not cpu_has_native_bf16()
    chosen = ("bf16" if bf16_enabled("auto", device) else "fp32") if name == "auto" else name
    if report and name == "auto":
        why = "emulated on this CPU" if emulated else f"native on {device.type}"
        if device.type == "cuda" and chosen == "fp32":
            why = "not supported by this GPU"
        note(f"precision: auto -> {chosen} (bf16 is {why})")
    elif report and chosen == "bf16" and emulated:
        note(
            "warning: bf16 is emulated on this CPU (no AVX-512 BF16 or AMX), about 10x slower "
            "than fp32; use --precision auto or fp32"
        )
    return chosen


_held_notes: list[str] | None = None  # set while a command runs (held_notes)


def note(text: str) -> None:
    """A line for stderr that is not an error: printed at once outside a command; while one runs
    (:func:`held_notes`), kept until it succeeds, so that a failing command says only its one
    sentence."""
    if _held_notes is None:
        print(text, file=sys.stderr)
    else:
        _held_notes.append(text)


@contextlib.contextmanager
def held_notes() -> Iterator[None]:
    """Hold :func:`note` lines while a command runs; print them when it returns, drop them when
    it raises."""
    global _held_notes
    outer, _held_notes = _held_notes, []
    try:
        yield
        for line in _held_notes:
            print(line, file=sys.stderr)
    finally:
        _held_notes = outer


def sampler_spacing(
    args: argparse.Namespace, pipeline: DiffusionPipeline, guidance: Guidance | None = None
) -> str:
    """``--spacing``, or what the chosen sampler calls for on this model under this guidance
    (``auto_spacing``)."""
    return args.spacing or pipeline.auto_spacing(args.sampler, guidance)


def add_device_argument(parser: argparse.ArgumentParser) -> None:
    """``--device auto|cpu|cuda`` (auto: a CUDA GPU when there is one)."""
    parser.add_argument(
        "--device",
        choices=DEVICE_CHOICES,
        default="auto",
        help="auto (a CUDA GPU when there is one), cpu or cuda",
    )


def parse_labels(text: str | None, n: int, num_classes: int) -> torch.Tensor | None:
    """``"3"`` -> n copies of 3; ``"0,1,2"`` -> cycled to n; ``"all"`` -> one row per class.

    ``"all"`` gives ``ceil(n / num_classes)`` images of class 0, then as many of class 1, and so
    on (so possibly a few more than ``n``): laid out ``ceil(n / num_classes)`` to a row, each row
    of the grid is one class.
    """
    if text is None:
        return None
    if text == "all":
        if not num_classes:
            raise DifflabError(
                "--labels all needs a class-conditional model; this one is unconditional."
            )
        per_class = math.ceil(n / num_classes)
        return torch.arange(num_classes).repeat_interleave(per_class)  # (num_classes * per_class,)
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise DifflabError(
            f"--labels {quote(text)} must be integers separated by commas, or 'all'."
        ) from None
    if not values:
        raise DifflabError("--labels is empty; give e.g. --labels 0,1,2.")
    for value in values:
        check_number(value, "--labels")
    return torch.tensor(values).repeat(n // len(values) + 1)[:n]


def add_caption_argument(parser: argparse.ArgumentParser) -> None:
    """``--caption TEXT``, repeatable: the captions of a model trained on captions."""
    parser.add_argument(
        "--caption",
        dest="captions",
        action="append",
        default=None,
        metavar="TEXT",
        help="caption for every image of a model trained on captions; give it several times to "
        "cycle captions over the images ('' = no caption, unconditional)",
    )


def parse_captions(captions: list[str] | None, n: int) -> list[str] | None:
    """The ``--caption`` values cycled to ``n`` captions (None when none was given)."""
    if not captions:
        return None
    return [captions[i % len(captions)] for i in range(n)]


def caption_warnings(pipeline: DiffusionPipeline, captions: list[str]) -> list[str]:
    """Lines that tell of caption words the model never saw and of captions cut short."""
    encoder = pipeline.text_encoder
    if encoder is None:
        return []
    tokenizer = encoder.tokenizer
    lines = []
    unknown = tokenizer.unknown_words(captions)
    if unknown:
        lines.append(
            f"warning: {len(unknown)} caption word(s) are not in the model's vocabulary of "
            f"{len(tokenizer.words)} words and are read as unknown: {', '.join(unknown)}"
        )
    cut = tokenizer.truncated(set(captions))
    if cut:
        lines.append(
            f"warning: {cut} caption(s) have more than {tokenizer.max_length} words; the model "
            "reads only the first ones"
        )
    return lines


def add_guidance_arguments(parser: argparse.ArgumentParser) -> None:
    """``--classifier CKPT --classifier-scale S`` and ``--guidance-scale W``."""
    parser.add_argument(
        "--classifier",
        default=None,
        metavar="CKPT",
        help="noisy classifier for classifier guidance (from `difflab train "
        "configs/mnist_classifier.yaml`); sample needs --label or --labels, eval asks for "
        "the classes in turn",
    )
    parser.add_argument(
        "--classifier-scale",
        type=float,
        default=None,
        metavar="S",
        help=f"classifier scale s >= 0 (default {DEFAULT_CLASSIFIER_SCALE:g} with --classifier)",
    )
    parser.add_argument(
        "--guidance-scale",
        type=float,
        default=None,
        metavar="W",
        help="classifier-free guidance weight w >= 0 (0 unconditional, 1 conditional, >1 "
        "guided); needs a class-conditional model trained with label dropout",
    )


def guidance_from_args(args: argparse.Namespace, pipeline: DiffusionPipeline) -> Guidance | None:
    """The wrappers the arguments ask for (None for none); loads and checks the classifier."""
    if args.classifier_scale is not None and args.classifier is None:
        raise DifflabError("--classifier-scale needs --classifier CKPT (a noisy classifier).")
    for flag, value in (
        ("--classifier-scale", args.classifier_scale),
        ("--guidance-scale", args.guidance_scale),
    ):
        if value is not None and not (math.isfinite(value) and value >= 0):
            raise DifflabError(f"{flag} must be a finite number >= 0, got {value}.")
    threshold = _threshold_from_args(args)
    if args.classifier is None and args.guidance_scale is None and threshold is None:
        return None
    classifier = None
    if args.classifier is not None:
        classifier = load_noisy_classifier(args.classifier, pipeline.device, pipeline=pipeline)
    scale = DEFAULT_CLASSIFIER_SCALE if args.classifier_scale is None else args.classifier_scale
    percentile = args.dynamic_threshold if args.dynamic_threshold is not None else 1.0
    return Guidance(classifier, scale, args.guidance_scale, threshold, percentile)


def _threshold_from_args(args: argparse.Namespace) -> str | None:
    """``"static"`` for --clip-x0, ``"dynamic"`` for --dynamic-threshold P, else None."""
    if args.clip_x0 and args.dynamic_threshold is not None:
        raise DifflabError("give either --clip-x0 or --dynamic-threshold, not both.")
    if args.dynamic_threshold is not None:
        p = args.dynamic_threshold
        if not (math.isfinite(p) and 0 < p <= 1):
            raise DifflabError(f"--dynamic-threshold must lie in (0, 1], e.g. 0.995; got {p}.")
        return "dynamic"
    return "static" if args.clip_x0 else None
