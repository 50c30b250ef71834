"""Argument groups and parsing helpers shared by the sub-commands."""

from __future__ import annotations

import argparse

import torch

from difflab.diffusion import SPACING_NAMES
from difflab.errors import DifflabError
from difflab.samplers import SAMPLER_NAMES


def add_sampling_arguments(parser: argparse.ArgumentParser, *, with_sampler: bool = True) -> None:
    if with_sampler:
        parser.add_argument(
            "--sampler",
            choices=SAMPLER_NAMES,
            default="ddim",
            help="ddim (any eta) or ddpm ancestral",
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
            "--clip-x0", action="store_true", help="clamp predicted x0 to [-1, 1] at every step"
        )
    parser.add_argument(
        "--steps", type=int, default=50, help="number of sampling steps S (default 50)"
    )
    parser.add_argument(
        "--spacing", choices=SPACING_NAMES, default="uniform", help="timestep sub-sequence"
    )
    parser.add_argument("--seed", type=int, default=0)


def parse_labels(text: str | None, n: int, num_classes: int) -> torch.Tensor | None:
    """``"3"`` -> n copies of 3; ``"0,1,2"`` -> cycled to n; ``"all"`` -> each class in turn."""
    if text is None:
        return None
    if text == "all":
        if not num_classes:
            raise DifflabError(
                "--labels all needs a class-conditional model; this one is unconditional."
            )
        return torch.arange(n) % num_classes
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise DifflabError(
            f"--labels {text!r} must be integers separated by commas, or 'all'."
        ) from None
    if not values:
        raise DifflabError("--labels is empty; give e.g. --labels 0,1,2.")
    return torch.tensor(values).repeat(n // len(values) + 1)[:n]
