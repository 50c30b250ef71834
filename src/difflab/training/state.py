"""Opening a run, and saving and restoring everything it needs to continue bit for bit.

Shared by every training loop (diffusion models, noisy classifiers): each loop's run is a
:class:`ResumableRun` with a few fields of its own, opened by :func:`open_run` (output folder
checks, run-folder lock, device, resume, data-parallel wrapping). The state file holds the
weights (``model.*``), the EMA weights (``ema.*``), the optimizer moments (``optim.<index>.*``) and
both RNG states; its JSON records the data-stream position with the identity (size and content
hash) of the data it indexes, the EMA update count, the skipped-batch count and the optimizer's
param groups. Everything read back is checked against the run being resumed before it is used.

One process owns a run folder at a time (:mod:`difflab.io.lock`, taken by :func:`open_run` and
given back by :func:`close_run` or when the process ends); only after the config, the folder and
the data have passed their checks are a killed writer's temporaries removed and metric lines
written after the last checkpoint dropped.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import torch

from difflab.config import config_to_dict
from difflab.errors import DifflabError
from difflab.io.atomic import (
    check_output_folder,
    remove_temporaries,
    write_bytes_atomic,
)
from difflab.io.checkpoint import (
    load_checkpoint,
    load_weights_strict,
    save_checkpoint,
    split_prefix,
    with_prefix,
)
from difflab.io.lock import lock_folder, release_folder
from difflab.io.process_group import SINGLE, Distributed, check_same_config, on_main, rank_seed
from difflab.io.validation import quote
from difflab.models.registry import ARCHITECTURES, config_from_dict
from difflab.training.data_order import BatchStream, check_same_data, dataset_identity
from difflab.training.distributed import data_parallel
from difflab.training.ema import EMA
from difflab.training.progress import JsonlLog

STATE_FILE = "checkpoints/last.safetensors"
MODEL_FILE = "model.safetensors"
MODEL_SECTIONS = ("arch", "model", "diffusion")  # what must match for a run to resume


@dataclasses.dataclass(kw_only=True)
class ResumableRun:
    """Everything a training run holds in memory; ``step`` counts optimizer updates.

    ``net`` holds the weights; forward passes go through ``model``, which is ``net`` itself, ``net``
    wrapped for data-parallel training, or ``net`` compiled (:func:`open_run`
    sets it). ``skipped`` counts the batches dropped for a non-finite loss (``train.skip_nonfinite``).
    """

    config: Any  # an ExperimentConfig
    dataset: Any  # an ImageDataset
    net: torch.nn.Module
    ema: EMA
    optimizer: torch.optim.Optimizer
    stream: BatchStream
    generator: torch.Generator
    step: int = 0
    skipped: int = 0
    train_seconds: float = 0.0  # wall-clock seconds of the optimizer updates, over every resume
    train_cpu_seconds: float = 0.0  # this process's CPU seconds (core-seconds) of the same
    device: torch.device = dataclasses.field(default_factory=lambda: torch.device("cpu"))
    group: Distributed = SINGLE
    model: torch.nn.Module | None = None
    data_identity: dict[str, Any] | None = None  # dataset_identity(dataset), computed once

    def forward_module(self) -> torch.nn.Module:
        """What forward passes go through (``model`` once set, else ``net``)."""
        return self.net if self.model is None else self.model

    def identity(self) -> dict[str, Any]:
        """Size and content hash of the training data (hashed on first use)."""
        if self.data_identity is None:
            self.data_identity = dataset_identity(self.dataset)
        return self.data_identity


def save_run_state(
    run: ResumableRun, out_dir: Path, meta: dict[str, Any], model_meta: dict[str, Any]
) -> None:
    """Write ``out_dir/checkpoints/last.safetensors`` (everything) and ``out_dir/model.safetensors`` (EMA)."""
    optimizer_state = run.optimizer.state_dict()
    tensors = {
        **with_prefix(run.net.state_dict(), "model"),
        **with_prefix(run.ema.state_dict(), "ema"),
    }
    for index, state in optimizer_state["state"].items():
        tensors.update(with_prefix(state, f"optim.{index}"))
    tensors["rng.torch"] = torch.get_rng_state()
    tensors["rng.train"] = run.generator.get_state()
    state_meta = {
        **meta,
        "state": {
            **run.stream.state(),
            "data": run.identity(),
            "ema_updates": run.ema.num_updates,
            "skipped": run.skipped,
            "param_groups": optimizer_state["param_groups"],
        },
    }
    save_checkpoint(out_dir / STATE_FILE, tensors, state_meta)
    save_checkpoint(out_dir / MODEL_FILE, with_prefix(run.ema.state_dict(), "model"), model_meta)


def _comparable(meta: dict[str, Any], section: str) -> Any:
    """A section of a run's JSON in a form equal for equal configs: a model config is rebuilt, so
    fields a run of an older version did not store take the values that version used."""
    value = meta.get(section)
    if section == "model" and isinstance(value, dict) and meta.get("arch") in ARCHITECTURES:
        return config_to_dict(config_from_dict(meta["arch"], value))
    return value


def restore_run_state(
    run: ResumableRun, path: Path, kind: str, current_meta: dict[str, Any]
) -> dict[str, Any]:
    """Put model, EMA, optimizer, data order, RNG states and step back as ``path`` recorded them.

    Returns the state file's JSON, for a loop that checks more of it.
    """
    tensors, meta = load_checkpoint(path, kind=kind)
    for section in MODEL_SECTIONS:
        if _comparable(meta, section) != _comparable(current_meta, section):
            raise DifflabError(
                f"{path} was trained with a different {section} config than the one given; "
                "resume with the same config or use a new train.out_dir."
            )
    load_weights_strict(run.net, split_prefix(tensors, "model"), path)
    load_weights_strict(run.ema.module, split_prefix(tensors, "ema"), path)
    state = checked_state(meta, path)
    if "data" in state:  # runs of older versions did not record their data
        check_same_data(state["data"], run.identity(), path)
    train = run.config.train
    try:
        stream = BatchStream(
            len(run.dataset), train.batch_size, train.seed, state["epoch"], state["position"]
        )
    except ValueError as error:
        raise DifflabError(
            f"{path}: {error}; the data changed since this checkpoint or the file is damaged: "
            "resume with the same data or use a new train.out_dir."
        ) from None
    optim_state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in split_prefix(tensors, "optim").items():
        index, name = key.split(".", 1)
        if not index.isdigit():
            raise _damaged(path, f"optimizer tensor {quote(key)}")
        optim_state.setdefault(int(index), {})[name] = value
    check_param_groups(state["param_groups"], run.optimizer, path)
    check_rng_states(tensors, run.generator, path)
    try:
        run.optimizer.load_state_dict({"state": optim_state, "param_groups": state["param_groups"]})
    except (ValueError, KeyError, TypeError, RuntimeError) as error:
        raise _damaged(path, f"optimizer state ({quote(str(error))})") from None
    torch.set_rng_state(tensors["rng.torch"])
    run.generator.set_state(tensors["rng.train"])
    run.ema.num_updates = state["ema_updates"]
    run.skipped = state.get("skipped", 0)
    run.stream = stream
    run.step = meta["step"]
    run.train_seconds = float(meta.get("train_seconds", 0.0))  # absent before they were recorded
    run.train_cpu_seconds = float(meta.get("train_cpu_seconds", 0.0))
    return meta


STATE_COUNTS = ("epoch", "position", "ema_updates", "skipped")


def _damaged(path: Path, what: str) -> DifflabError:
    return DifflabError(
        f"{path} holds a damaged {what}; restore the file from a good copy or start a new "
        "train.out_dir."
    )


def checked_state(meta: dict[str, Any], path: Path) -> dict[str, Any]:
    """The ``state`` entry of a state file's JSON, its counters checked (integers >= 0)."""
    state = meta.get("state")
    if not isinstance(state, dict) or "param_groups" not in state or "step" not in meta:
        raise _damaged(path, "resume state (its JSON lacks 'state', 'param_groups' or 'step')")
    for key in STATE_COUNTS:
        value = state.get(key, 0)
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 2**63:
            raise _damaged(path, f"resume state ({key} is {quote(value)})")
    return state


def check_param_groups(groups: Any, optimizer: torch.optim.Optimizer, path: Path) -> None:
    """Stored param groups must have the live optimizer's layout: as many groups, the same keys,
    the same parameter indices and values of the same types (finite numbers)."""
    live = optimizer.state_dict()["param_groups"]
    if not isinstance(groups, list) or len(groups) != len(live):
        raise _damaged(path, f"optimizer state (param_groups is {quote(groups)})")
    for stored, mine in zip(groups, live, strict=True):
        if not isinstance(stored, dict) or "params" not in stored:
            raise _damaged(path, f"optimizer state (a param group is {quote(stored)})")
        if stored["params"] != mine["params"]:
            raise _damaged(path, "optimizer state (its parameter indices differ from the model's)")
        for key, value in stored.items():
            if key in mine and key != "params" and not _same_kind(value, mine[key]):
                raise _damaged(path, f"optimizer state ({key} is {quote(value)})")


def _same_kind(value: Any, expected: Any) -> bool:
    """Whether a stored param-group value can stand for the live one: a finite number for a
    number, a list for a tuple (JSON has no tuples), else the same type."""
    if isinstance(expected, (int, float)) and not isinstance(expected, bool):
        return (
            isinstance(value, (int, float))
            and not isinstance(value, bool)
            and -math.inf < value < math.inf
        )
    if isinstance(expected, tuple):
        return isinstance(value, list) and len(value) == len(expected)
    return type(value) is type(expected)


def check_rng_states(
    tensors: dict[str, torch.Tensor], generator: torch.Generator, path: Path
) -> None:
    """Both stored RNG states exist and have the shape and dtype of live ones."""
    for key, live in (("rng.torch", torch.get_rng_state()), ("rng.train", generator.get_state())):
        stored = tensors.get(key)
        if stored is None or stored.dtype != live.dtype or stored.shape != live.shape:
            raise _damaged(path, f"random number generator state ({key!r})")


def resume_path(out_dir: Path, resume: bool) -> Path | None:
    """The state file to continue from, or ``None`` for a fresh run; refuses to mix the two."""
    state_path = out_dir / STATE_FILE
    if resume and not state_path.exists():
        raise DifflabError(
            f"nothing to resume: {state_path} does not exist; start without --resume."
        )
    if not resume and state_path.exists():
        raise DifflabError(
            f"{out_dir} already holds a run; pass --resume to continue it or choose another train.out_dir."
        )
    return state_path if resume else None


def check_output_dir(out_dir: Path) -> Path | None:
    """Fail before training if the output folder cannot be written; else make it.

    Returns the outermost folder this call created (``None`` when ``out_dir`` existed), so that a
    run that fails before writing anything can take it away again (:func:`remove_empty_folders`).
    """
    check_output_folder(out_dir, "train.out_dir")  # a file, under a file, unwritable: refused
    created = next((p for p in reversed([out_dir, *out_dir.parents]) if not p.exists()), None)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise DifflabError(
            f"cannot make the output folder {out_dir} ({error.strerror}); choose a writable "
            "train.out_dir."
        ) from None
    return created


def remove_empty_folders(top: Path) -> None:
    """Remove ``top`` and the folders below it, as far as they hold no file."""
    for folder, _, _ in sorted(os.walk(top, topdown=False), key=lambda e: -len(e[0])):
        with contextlib.suppress(OSError):
            os.rmdir(folder)


def trim_log(path: Path, step: int) -> str | None:
    """Drop metric lines written after the checkpoint a run resumes from, and lines that are not
    whole JSON records (a write cut short by a full disk or a kill); returns a note saying how
    many of those were dropped (None when none)."""
    if not path.exists():
        return None
    kept, malformed = [], 0
    for line in path.read_bytes().decode("utf-8", errors="replace").splitlines():
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            recorded_step = record.get("step", 0) if isinstance(record, dict) else None
        except (json.JSONDecodeError, RecursionError):
            recorded_step = None
        if not isinstance(recorded_step, int):
            malformed += 1
        elif recorded_step <= step:
            kept.append(line)
    write_bytes_atomic(path, "".join(line + "\n" for line in kept).encode())
    if not malformed:
        return None
    return (
        f"note: dropped {malformed} malformed line(s) of {path} (a write cut short); the "
        "other metrics are kept."
    )


RunT = TypeVar("RunT", bound=ResumableRun)


def open_run(
    config: Any,
    resume: bool,
    build: Callable[[Any], RunT],
    restore: Callable[[RunT, Path], None],
    *,
    device: torch.device | None = None,
    group: Distributed = SINGLE,
) -> tuple[RunT, JsonlLog | None]:
    """Check ``train.out_dir``, build the run, restore it when resuming, and ready it to train.

    Every rank must be given the same config (checked first). Rank 0 checks the folder for writing
    and for a run it would overwrite before any data is loaded; on resume every rank reads the same
    state file, and metric lines written after that checkpoint are dropped so the log continues
    where the state does. Returns the run and, on rank 0, its metrics log (``None`` elsewhere).
    """
    device = device or torch.device("cpu")
    check_same_config(group, config_to_dict(config))
    train = config.train
    group.shard(train.batch_size)  # a global batch that does not split is refused before any work
    out_dir = Path(config.train.out_dir)

    def check_folder() -> tuple[Path | None, Path | None]:
        created = check_output_dir(out_dir)
        try:
            lock_folder(out_dir)
            state = resume_path(out_dir, resume)
        except BaseException:
            close_run(out_dir, created)
            raise
        return state, created

    state_path, created = on_main(group, check_folder)
    try:
        run = build(config)
        run.device, run.group = device, group
        for module in (run.net, run.ema.module):  # before restoring: optimizer state follows
            module.to(device)
            if train.channels_last:
                module.to(memory_format=torch.channels_last)
        if state_path is not None:
            restore(run, state_path)
    except BaseException:  # bad data or a bad state file: leave the folder as it was
        if group.is_main:
            close_run(out_dir, created)
        raise
    steps = group.gather(run.step)
    if len(set(steps)) > 1:
        raise DifflabError(
            f"the ranks resumed from different steps ({steps}); train.out_dir must be one folder "
            "that every machine sees (a shared file system)."
        )
    if group.rank:  # rank 0 keeps the resumed RNG stream; the others draw their own dropout masks
        torch.manual_seed(rank_seed(train.seed, group.rank, run.step))
    model = data_parallel(run.net, group, device)
    run.model = torch.compile(model) if train.compile else model
    log = None
    if group.is_main:  # every input passed its checks: clear what a killed run left
        remove_temporaries(out_dir)  # a killed writer's temporaries; its files before are whole
        log = JsonlLog(out_dir / "metrics.jsonl")
        note = trim_log(log.path, run.step)  # lines written after the last checkpoint
        if note:
            print(note, file=sys.stderr)
    return run, log


def close_run(out_dir: Path, created: Path | None = None) -> None:
    """Give the run folder's lock back; with ``created``, also remove the folders this run made
    as far as they are empty (a run that failed before writing anything)."""
    release_folder(out_dir)
    if created is not None:
        remove_empty_folders(created)


def run_meta(run: ResumableRun, kind: str, arch: str) -> dict[str, Any]:
    """The JSON that describes a run's model (stored in every checkpoint it writes)."""
    return {
        "kind": kind,
        "arch": arch,
        "model": config_to_dict(run.net.config),
        "diffusion": config_to_dict(run.config.diffusion),
        "data": {
            "name": run.dataset.name,
            "image_size": run.dataset.image_size,
            "channels": run.dataset.channels,
            "class_names": list(run.dataset.class_names),
        },
        "experiment": config_to_dict(run.config),
        "step": run.step,
        "train_seconds": round(run.train_seconds, 3),
        "train_cpu_seconds": round(run.train_cpu_seconds, 3),
    }
