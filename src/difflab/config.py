"""Typed experiment configs: YAML files plus ``key=value`` overrides, checked key by key.

An unknown key or a value of the wrong type is a :class:`DifflabError` that names the key (and
suggests the closest known one). Every section is a dataclass; defaults live there and nowhere else.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from difflab.errors import DifflabError
from difflab.io.validation import check_number, check_tree, quote

MAX_CONFIG_BYTES = 1_000_000  # a config file is a page of settings, not data
MAX_LIST_ITEMS = 64  # channel multipliers, attention resolutions: a handful each
LR_DECAYS = ("constant", "cosine")  # train.lr_decay: the learning rate after its warm-up
MAX_TIMESTEPS = 100_000  # T: the schedule tables are (T,) and every sampler may walk them


@dataclass(frozen=True)
class Range:
    """The values a numeric config field accepts: ``low``/``high`` bounds, each closed unless
    ``*_open``; checked by :func:`check_ranges` when a config section is built."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def holds(self, value: float) -> bool:
        above = self.low is None or (value > self.low if self.low_open else value >= self.low)
        below = self.high is None or (value < self.high if self.high_open else value <= self.high)
        return above and below  # False for NaN

    def describe(self) -> str:
        if self.low is not None and self.high is not None:
            left, right = "(" if self.low_open else "[", ")" if self.high_open else "]"
            return f"lie in {left}{self.low:g}, {self.high:g}{right}"
        if self.low is not None:
            if self.low_open:
                return f"be greater than {self.low:g}"
            return "be 0 or more" if self.low == 0 else f"be at least {self.low:g}"
        assert self.high is not None
        return f"be less than {self.high:g}" if self.high_open else f"be at most {self.high:g}"


def ranged(default: Any, low: float | None = None, high: float | None = None, **open_: bool) -> Any:
    """A dataclass field with a :class:`Range` (``low_open=True``/``high_open=True`` exclude ends)."""
    return field(default=default, metadata={"range": Range(low, high, **open_)})


def check_ranges(config: Any, section: str) -> None:
    """Refuse any field of dataclass ``config`` outside its :class:`Range`, naming ``section.key``."""
    for spec in dataclasses.fields(config):
        bounds = spec.metadata.get("range")
        value = getattr(config, spec.name)
        if bounds is None or value is None or isinstance(value, bool):
            continue
        if not isinstance(value, (int, float)) or not bounds.holds(value):
            raise DifflabError(
                f"{section}.{spec.name} must {bounds.describe()}, got {quote(value)}."
            )


@dataclass
class DataConfig:
    """Which images to train on (see :func:`difflab.data.load_dataset`)."""

    name: str = "mnist"
    data_dir: str | None = None
    image_size: int | None = ranged(None, 1)
    channels: int | None = None
    pad_to_32: bool = False
    limit: int | None = ranged(None, 1)
    streaming: bool = False  # folders and emoji: read batches from a uint8 store on disk

    def __post_init__(self) -> None:
        check_ranges(self, "data")


@dataclass
class DiffusionConfig:
    """The noise schedule a model is trained with."""

    schedule: str = "linear"
    num_timesteps: int = ranged(1000, 1, MAX_TIMESTEPS)
    beta_start: float | None = ranged(None, 0, 1, low_open=True, high_open=True)
    beta_end: float | None = ranged(None, 0, 1, low_open=True, high_open=True)

    def __post_init__(self) -> None:
        check_ranges(self, "diffusion")


@dataclass
class TrainConfig:
    """Optimisation and bookkeeping. Steps count optimizer updates (after gradient accumulation)."""

    steps: int = ranged(10000, 1)
    batch_size: int = ranged(128, 1)
    grad_accum: int = ranged(1, 1)
    lr: float = ranged(2e-4, 0, low_open=True)
    warmup_steps: int = ranged(0, 0)
    lr_decay: str = "constant"  # after warm-up: constant, or cosine to lr_floor * lr at `steps`
    lr_floor: float = ranged(0.1, 0, 1)  # the cosine's end as a fraction of lr (lr_decay: cosine)
    weight_decay: float = ranged(0.0, 0)
    grad_clip: float = ranged(1.0, 0)
    ema_decay: float = ranged(0.999, 0, 1, high_open=True)
    ema_warmup: bool = True  # decay min(ema_decay, (1 + n) / (10 + n)) after n updates (TF's EMA)
    min_snr_gamma: float | None = ranged(None, 0, low_open=True)  # Min-SNR-γ weights (5); None: off
    label_dropout: float = ranged(0.0, 0, 1, high_open=True)
    vlb_weight: float = ranged(0.0, 0)  # λ of L_hybrid (Improved DDPM; 0.001), model.learn_sigma
    bf16: str | bool = False  # true, false or "auto" (on where bf16 is native: io.device)
    channels_last: bool = False
    compile: bool = False
    skip_nonfinite: int = ranged(0, 0)
    seed: int = ranged(0, 0)
    log_every: int = ranged(50, 1)
    sample_every: int = ranged(1000, 1)
    sample_steps: int = ranged(50, 1)
    checkpoint_every: int = ranged(1000, 1)
    out_dir: str = "runs/experiment"

    def __post_init__(self) -> None:
        if self.lr_decay not in LR_DECAYS:
            raise DifflabError(
                f"train.lr_decay must be one of {', '.join(LR_DECAYS)}, got {quote(self.lr_decay)}."
            )
        if self.bf16 not in (True, False, "auto"):
            raise DifflabError(f"train.bf16 must be true, false or auto, got {quote(self.bf16)}.")
        check_ranges(self, "train")
        if not str(self.out_dir).strip():
            raise DifflabError(
                "train.out_dir is empty; name the run's own folder, e.g. train.out_dir=runs/mine "
                "(difflab never trains into the current folder by accident)."
            )


@dataclass
class ExperimentConfig:
    """One experiment. ``model`` holds ``preset`` plus any field of that architecture's config.

    ``autoencoder`` is the checkpoint of a trained autoencoder whose codes or latents the model
    works on (the VQ-VAE of a ``kind: vqvae_prior`` run).
    """

    kind: str = "diffusion"
    autoencoder: str | None = None
    data: DataConfig = field(default_factory=DataConfig)
    model: dict[str, Any] = field(default_factory=lambda: {"preset": "unet-mnist"})
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def model_preset(self, example: str) -> tuple[str, dict[str, Any]]:
        """(``model.preset``, the other ``model`` entries as overrides); no preset is an error."""
        values = dict(self.model)
        preset = values.pop("preset", None)
        if preset is None:
            raise DifflabError(
                f"config section 'model' needs a 'preset' (e.g. {example}); see "
                "`difflab info --presets`."
            )
        return preset, values


def _closest(key: str, known: list[str]) -> str:
    match = difflib.get_close_matches(key, known, n=1)
    return f" (did you mean {match[0]!r}?)" if match else ""


def check_value(value: Any, annotation: Any, where: str) -> Any:
    """Return ``value`` converted to ``annotation`` (int, float, bool, str, tuple[int, ...], X | None).

    The rules every config and checkpoint description obeys: numbers are finite, integers are
    counts, sizes or seeds (0 to 2**63 - 1), lists hold at most :data:`MAX_LIST_ITEMS` items.
    """
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        last_error: DifflabError | None = None
        for option in (a for a in args if a is not type(None)):
            try:
                return check_value(value, option, where)
            except DifflabError as error:
                last_error = error
        assert last_error is not None
        raise last_error
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise DifflabError(f"{where} must be a list, got {quote(value)}.")
        if len(value) > MAX_LIST_ITEMS:
            raise DifflabError(f"{where} has {len(value)} items; at most {MAX_LIST_ITEMS}.")
        return tuple(check_value(v, args[0], f"{where}[{i}]") for i, v in enumerate(value))
    if annotation is Any or annotation is typing.Any:
        return value
    if annotation is bool:
        if isinstance(value, bool):
            return value
        raise DifflabError(f"{where} must be true or false, got {quote(value)}.")
    if annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            check_number(value, where)
            if value < 0:
                raise DifflabError(f"{where} must be 0 or more, got {value}.")
            return value
        raise DifflabError(f"{where} must be an integer, got {quote(value)}.")
    if annotation is float:
        number = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            # an integer beyond float's range (float() would raise) stands for an infinity; NaN
            # keeps its name (copysign(inf, nan) would report it as -inf)
            huge = isinstance(value, int) and abs(value) >= 1e308
            number = math.copysign(math.inf, value) if huge else float(value)
        elif isinstance(value, str):  # YAML 1.1 reads "1e-4" (no dot) as a string
            with contextlib.suppress(ValueError):
                number = float(value)
        if number is None:
            raise DifflabError(f"{where} must be a number, got {quote(value)}.")
        check_number(number, where)
        return number
    if annotation is str:
        if isinstance(value, str):
            return value
        raise DifflabError(f"{where} must be a string, got {quote(value)}.")
    raise DifflabError(f"{where}: values of type {annotation} cannot be set from a config.")


def dataclass_from_dict(cls: type, values: dict[str, Any], where: str) -> Any:
    """Build dataclass ``cls`` from a mapping, rejecting unknown keys and wrong types by name."""
    if not isinstance(values, dict):
        raise DifflabError(f"{where} must be a mapping of keys to values, got {quote(values)}.")
    hints = typing.get_type_hints(cls)
    known = [f.name for f in dataclasses.fields(cls) if f.init]
    kwargs: dict[str, Any] = {}
    for key, value in values.items():
        name = f"{where}.{key}" if where else str(key)
        if key not in known:
            raise DifflabError(
                f"unknown config key {quote(name)}{_closest(str(key), known)}; known keys: "
                f"{', '.join(known)}."
            )
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            kwargs[key] = dataclass_from_dict(hint, value, name)
        elif typing.get_origin(hint) is dict:
            if not isinstance(value, dict):
                raise DifflabError(f"{name} must be a mapping, got {quote(value)}.")
            kwargs[key] = dict(value)
        else:
            kwargs[key] = check_value(value, hint, name)
    return cls(**kwargs)


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"train.lr=1e-3"`` -> (["train", "lr"], 0.001); the value is read as YAML."""
    if "=" not in text:
        raise DifflabError(
            f"override {quote(text)} must look like section.key=value, e.g. train.steps=500."
        )
    key, raw = text.split("=", 1)
    if not key or any(not part for part in key.split(".")):
        raise DifflabError(
            f"override {quote(text)} has an empty key; write it like train.steps=500."
        )
    value = _parse_yaml(raw, f"override {quote(key)}") if raw.strip() else ""
    return key.split("."), value


def _parse_yaml(text: str, where: str) -> Any:
    """``text`` read as YAML and bounded (:func:`check_tree`); text that is not YAML stays text."""
    if len(text) > MAX_CONFIG_BYTES:
        raise DifflabError(
            f"{where} is {len(text):,} characters long; at most {MAX_CONFIG_BYTES:,}."
        )
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    except RecursionError:
        raise DifflabError(f"{where} is nested too deeply; give a plain value.") from None
    check_tree(value, where)
    return value


def load_config(path: str | Path | None, overrides: list[str] = ()) -> ExperimentConfig:  # type: ignore[assignment]
    """Read a YAML experiment file (or start from defaults) and apply ``key=value`` overrides."""
    raw: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise DifflabError(
                f"config file {path} does not exist; pass a YAML file such as configs/mnist.yaml."
            )
        size = path.stat().st_size
        if size > MAX_CONFIG_BYTES:
            raise DifflabError(
                f"config file {path} is {size:,} bytes; a config is at most {MAX_CONFIG_BYTES:,} "
                "bytes of settings."
            )
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
        except RecursionError:
            raise DifflabError(
                f"config file {path} is nested too deeply; give sections of plain values."
            ) from None
        except (yaml.YAMLError, UnicodeDecodeError) as error:
            mark = getattr(error, "problem_mark", None)
            line = f" at line {mark.line + 1}" if mark is not None else ""
            raise DifflabError(
                f"config file {path} is not valid YAML{line}; fix the syntax and retry."
            ) from None
        if loaded is None:
            raise DifflabError(
                f"config file {path} is empty; give a YAML file with sections such as those of "
                "configs/mnist.yaml."
            )
        if not isinstance(loaded, dict):
            raise DifflabError(
                f"config file {path} must hold a mapping of sections (data, model, diffusion, train)."
            )
        check_tree(loaded, f"config file {path}")
        raw = loaded
    for text in overrides:
        keys, value = parse_override(text)
        node = raw
        for part in keys[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise DifflabError(f"override {quote(text)}: {quote(part)} is not a section.")
            node = child
        node[keys[-1]] = value
    return dataclass_from_dict(ExperimentConfig, raw, "")


def config_to_dict(config: Any) -> dict[str, Any]:
    """A JSON-ready dict of a (nested) config dataclass; tuples become lists."""
    return json_ready(dataclasses.asdict(config))


def json_ready(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    return value
