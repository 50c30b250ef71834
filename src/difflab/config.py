"""Typed experiment configs: YAML files plus ``key=value`` overrides, checked key by key.

An unknown key or a value of the wrong type is a :class:`DifflabError` that names the key (and
suggests the closest known one). Every section is a dataclass; defaults live there and nowhere else.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from difflab.errors import DifflabError


@dataclass
class DataConfig:
    """Which images to train on (see :func:`difflab.data.load_dataset`)."""

    name: str = "mnist"
    data_dir: str | None = None
    image_size: int | None = None
    channels: int | None = None
    pad_to_32: bool = False
    limit: int | None = None
    streaming: bool = False  # folders and emoji: read batches from a uint8 store on disk


@dataclass
class DiffusionConfig:
    """The noise schedule a model is trained with."""

    schedule: str = "linear"
    num_timesteps: int = 1000
    beta_start: float | None = None
    beta_end: float | None = None


@dataclass
class TrainConfig:
    """Optimisation and bookkeeping. Steps count optimizer updates (after gradient accumulation)."""

    steps: int = 10000
    batch_size: int = 128
    grad_accum: int = 1
    lr: float = 2e-4
    warmup_steps: int = 0
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    label_dropout: float = 0.0
    bf16: str | bool = False  # true, false or "auto" (on where bf16 is native: io.device)
    channels_last: bool = False
    compile: bool = False
    skip_nonfinite: int = 0
    seed: int = 0
    log_every: int = 50
    sample_every: int = 1000
    sample_steps: int = 50
    checkpoint_every: int = 1000
    out_dir: str = "runs/experiment"

    def __post_init__(self) -> None:
        if self.bf16 not in (True, False, "auto"):
            raise DifflabError(f"train.bf16 must be true, false or auto, got {self.bf16!r}.")


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
    """Return ``value`` converted to ``annotation`` (int, float, bool, str, tuple[int, ...], X | None)."""
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
            raise DifflabError(f"{where} must be a list, got {value!r}.")
        return tuple(check_value(v, args[0], f"{where}[{i}]") for i, v in enumerate(value))
    if annotation is Any or annotation is typing.Any:
        return value
    if annotation is bool:
        if isinstance(value, bool):
            return value
        raise DifflabError(f"{where} must be true or false, got {value!r}.")
    if annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise DifflabError(f"{where} must be an integer, got {value!r}.")
    if annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "1e-4" (no dot) as a string
            with contextlib.suppress(ValueError):
                return float(value)
        raise DifflabError(f"{where} must be a number, got {value!r}.")
    if annotation is str:
        if isinstance(value, str):
            return value
        raise DifflabError(f"{where} must be a string, got {value!r}.")
    raise DifflabError(f"{where}: values of type {annotation} cannot be set from a config.")


def dataclass_from_dict(cls: type, values: dict[str, Any], where: str) -> Any:
    """Build dataclass ``cls`` from a mapping, rejecting unknown keys and wrong types by name."""
    if not isinstance(values, dict):
        raise DifflabError(f"{where} must be a mapping of keys to values, got {values!r}.")
    hints = typing.get_type_hints(cls)
    known = [f.name for f in dataclasses.fields(cls) if f.init]
    kwargs: dict[str, Any] = {}
    for key, value in values.items():
        name = f"{where}.{key}" if where else str(key)
        if key not in known:
            raise DifflabError(
                f"unknown config key {name!r}{_closest(str(key), known)}; known keys: {', '.join(known)}."
            )
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            kwargs[key] = dataclass_from_dict(hint, value, name)
        elif typing.get_origin(hint) is dict:
            if not isinstance(value, dict):
                raise DifflabError(f"{name} must be a mapping, got {value!r}.")
            kwargs[key] = dict(value)
        else:
            kwargs[key] = check_value(value, hint, name)
    return cls(**kwargs)


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"train.lr=1e-3"`` -> (["train", "lr"], 0.001); the value is read as YAML."""
    if "=" not in text:
        raise DifflabError(
            f"override {text!r} must look like section.key=value, e.g. train.steps=500."
        )
    key, raw = text.split("=", 1)
    if not key or any(not part for part in key.split(".")):
        raise DifflabError(f"override {text!r} has an empty key; write it like train.steps=500.")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def load_config(path: str | Path | None, overrides: list[str] = ()) -> ExperimentConfig:  # type: ignore[assignment]
    """Read a YAML experiment file (or start from defaults) and apply ``key=value`` overrides."""
    raw: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise DifflabError(
                f"config file {path} does not exist; pass a YAML file such as configs/mnist.yaml."
            )
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
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
        raw = loaded
    for text in overrides:
        keys, value = parse_override(text)
        node = raw
        for part in keys[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise DifflabError(f"override {text!r}: {part!r} is not a section.")
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
