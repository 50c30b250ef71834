"""Opening a run, and saving and restoring everything it needs to continue bit for bit.

Shared by every training loop (diffusion models, noisy classifiers): each loop's run is a
:class:`ResumableRun` with a few fields of its own, opened by :func:`open_run` (output folder
checks, device, resume, data-parallel wrapping). The state file holds the weights (``model.*``),
the EMA weights (``ema.*``), the optimizer moments (``optim.<index>.*``) and both RNG states; its
JSON records the data-stream position, the EMA update count, the skipped-batch count and the
optimizer's param groups.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import torch

from difflab.config import config_to_dict
from difflab.errors import DifflabError
from difflab.io.atomic import remove_temporaries
from difflab.io.checkpoint import (
    load_checkpoint,
    load_weights_strict,
    save_checkpoint,
    split_prefix,
    with_prefix,
)
from difflab.io.process_group import SINGLE, Distributed, check_same_config, on_main, rank_seed
from difflab.models.registry import ARCHITECTURES, config_from_dict
from difflab.training.data_order import BatchStream
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
    device: torch.device = dataclasses.field(default_factory=lambda: torch.device("cpu"))
    group: Distributed = SINGLE
    model: torch.nn.Module | None = None

    def forward_module(self) -> torch.nn.Module:
        """What forward passes go through (``model`` once set, else ``net``)."""
        return self.net if self.model is None else self.model


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
    state = meta["state"]
    optim_state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in split_prefix(tensors, "optim").items():
        index, name = key.split(".", 1)
        optim_state.setdefault(int(index), {})[name] = value
    run.optimizer.load_state_dict({"state": optim_state, "param_groups": state["param_groups"]})
    torch.set_rng_state(tensors["rng.torch"])
    run.generator.set_state(tensors["rng.train"])
    run.ema.num_updates = state["ema_updates"]
    run.skipped = state.get("skipped", 0)
    train = run.config.train
    run.stream = BatchStream(
        len(run.dataset), train.batch_size, train.seed, state["epoch"], state["position"]
    )
    run.step = meta["step"]
    return meta


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
    """Fail before training if the output folder cannot be written.

    Returns the outermost folder this call created (``None`` when ``out_dir`` existed), so that a
    run that fails before writing anything can take it away again (:func:`remove_empty_folders`).
    """
    created = next((p for p in reversed([out_dir, *out_dir.parents]) if not p.exists()), None)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        probe = out_dir / ".write_test"
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as error:
        raise DifflabError(
            f"cannot write to the output folder {out_dir} ({error.strerror}); choose a writable train.out_dir."
        ) from None
    return created


def remove_empty_folders(top: Path) -> None:
    """Remove ``top`` and the folders below it, as far as they hold no file."""
    for folder, _, _ in sorted(os.walk(top, topdown=False), key=lambda e: -len(e[0])):
        with contextlib.suppress(OSError):
            os.rmdir(folder)


def trim_log(path: Path, step: int) -> None:
    """Drop metric lines written after the checkpoint a run resumes from."""
    if not path.exists():
        return
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    kept = [line for line in lines if json.loads(line).get("step", 0) <= step]
    path.write_text("".join(line + "\n" for line in kept), encoding="utf-8")


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
            state = resume_path(out_dir, resume)
        except DifflabError:
            if created is not None:
                remove_empty_folders(created)
            raise
        remove_temporaries(out_dir)  # what a killed run was writing; its files before are whole
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
    except BaseException:  # bad data or a bad state file: leave no empty run folder behind
        if created is not None and group.is_main:
            remove_empty_folders(created)
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
    if group.is_main:
        log = JsonlLog(out_dir / "metrics.jsonl")
        trim_log(log.path, run.step)  # lines a killed run wrote after its last checkpoint
    return run, log


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
    }
