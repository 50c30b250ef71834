"""The JSON the web API reads and writes, as pydantic models, and its one-sentence errors."""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from difflab.diffusion import SPACING_NAMES
from difflab.errors import DifflabError
from difflab.samplers import (
    DEFAULT_SAMPLER,
    DEFAULT_STEPS,
    SAMPLER_NAMES,
    SAMPLERS,
    THRESHOLDS,
    check_eta,
)
from difflab.web.limits import ServeLimits

MAX_SEED = 2**31 - 1
MAX_PROMPT_CHARS = 500


class RequestRefused(Exception):
    """A request the server will not run: an HTTP status and one sentence for the user."""

    def __init__(self, status: int, sentence: str) -> None:
        super().__init__(sentence)
        self.status = status
        self.sentence = sentence


class GenerateRequest(BaseModel):
    """``POST /api/generate``: what to sample. Unknown keys and wrong types are refused (422).

    ``hint`` is a ``data:image/...;base64,`` URL of the sketch (white strokes on black), given
    only to a model that reads a control image; ``control_scale`` multiplies its effect.
    ``prompt`` is the text of a text-to-image model (an Imagen cascade or stage, a caption model);
    empty or absent is the null prompt (unconditional samples). ``threshold`` (``static`` or
    ``dynamic``, Imagen's) bounds each step's predicted x0; ``noise_level`` is the augmentation a
    cascade's super-resolution stages apply to their low-resolution input.
    """

    model_config = ConfigDict(extra="forbid", strict=True)

    model: str = Field(min_length=1, max_length=1000)
    n: int = Field(1, ge=1)
    steps: int = Field(DEFAULT_STEPS, ge=1)
    sampler: str = DEFAULT_SAMPLER
    spacing: str | None = None  # None: the model's (DiffusionPipeline.auto_spacing)
    eta: float = Field(0.0, ge=0, allow_inf_nan=False)
    seed: int = Field(0, ge=0, le=MAX_SEED)
    label: int | None = Field(None, ge=0)
    guidance_scale: float | None = Field(None, ge=0, allow_inf_nan=False)
    control_scale: float = Field(1.0, ge=0, allow_inf_nan=False)
    hint: str | None = None
    prompt: str | None = Field(None, max_length=MAX_PROMPT_CHARS)
    threshold: str | None = None
    noise_level: float = Field(0.1, ge=0, le=1, allow_inf_nan=False)

    def check_limits(self, limits: ServeLimits) -> None:
        """A :class:`RequestRefused` (422) for n, steps or a sampler the server does not allow."""
        if self.n > limits.max_n:
            raise RequestRefused(
                422, f"n = {self.n} is over this server's limit of {limits.max_n} images."
            )
        if self.steps > limits.max_steps:
            raise RequestRefused(
                422, f"steps = {self.steps} is over this server's limit of {limits.max_steps}."
            )
        if self.sampler not in SAMPLER_NAMES:
            raise RequestRefused(
                422, f"unknown sampler {self.sampler!r}; choose one of {', '.join(SAMPLER_NAMES)}."
            )
        try:
            check_eta(SAMPLERS[self.sampler], self.eta)
        except DifflabError as error:
            raise RequestRefused(422, str(error)) from None
        if self.spacing is not None and self.spacing not in SPACING_NAMES:
            raise RequestRefused(
                422, f"unknown spacing {self.spacing!r}; choose one of {', '.join(SPACING_NAMES)}."
            )
        if self.threshold is not None and self.threshold not in THRESHOLDS:
            raise RequestRefused(
                422, f"unknown threshold {self.threshold!r}; choose one of {', '.join(THRESHOLDS)}."
            )
        if self.prompt is not None and any(unicodedata.category(c) == "Cc" for c in self.prompt):
            raise RequestRefused(
                422,
                "the prompt holds control characters (a line break, a tab); type one line of text.",
            )

    @property
    def prompt_text(self) -> str:
        """The prompt with its outer spaces removed; "" is the null prompt."""
        return (self.prompt or "").strip()


class EdgesRequest(BaseModel):
    """``POST /api/edges``: an uploaded image (data URL) whose edges become the sketch."""

    model_config = ConfigDict(extra="forbid", strict=True)

    model: str = Field(min_length=1, max_length=1000)
    image: str


def validation_sentence(errors: Sequence[dict[str, Any]]) -> str:
    """One sentence for pydantic's error list: the first problem, where it is."""
    if not errors:
        return "the request is malformed."
    first = errors[0]
    if first.get("type") == "json_invalid":
        return "the request body is not valid JSON; send one JSON object."
    where = ".".join(str(part) for part in first.get("loc", ()) if part != "body")
    message = str(first.get("msg", "is invalid")).rstrip(".")
    message = message[:1].lower() + message[1:]
    if not where:
        return f"the request body is wrong: {message}; send one JSON object."
    return f"{where}: {message}."
