"""The files a conversion reads and writes: which format a path holds, reading and writing each.

Formats (detected from the path, never from its name alone):

* ``difflab``: a ``kind: diffusion`` safetensors checkpoint (metadata key ``"difflab"``);
* ``diffusers``: a model folder (``config.json`` whose ``_class_name`` names the network, and
  ``diffusion_pytorch_model.safetensors``), or a pipeline folder holding one under
  ``transformer/`` or ``unet/`` with ``scheduler/scheduler_config.json`` beside it;
* ``reference``: a state dict of the facebookresearch/DiT code, as safetensors, or as the
  ``.pt`` / ``.pth`` files it releases. Those are Python pickles: they are read only when the
  caller allows it, and then only with ``torch.load(..., weights_only=True)`` (tensors and plain
  containers; any other object is refused by torch, not executed).

Every write is whole or absent: files through :func:`difflab.io.atomic.atomic_path` (inside
:func:`~difflab.io.checkpoint.save_checkpoint`), folders through :func:`write_folder_atomic`.
"""

from __future__ import annotations

import inspect
import json
import os
import pickle
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import safetensors
import safetensors.torch
import torch

from difflab.diffusion.schedule import NoiseSchedule, linear_betas, scaled_linear_betas
from difflab.errors import DifflabError
from difflab.io.atomic import TEMP_SUFFIX, remove_temporaries, temporary_prefix
from difflab.io.checkpoint import METADATA_KEY

WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
PICKLED_WEIGHTS_NAME = "diffusion_pytorch_model.bin"
PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")
DIFFUSERS_VERSION = "0.30.0"
"""``_diffusers_version`` written into exported configs: the oldest diffusers difflab supports."""

MODEL_CLASSES: dict[str, str] = {
    "DiTTransformer2DModel": "dit",
    "Transformer2DModel": "dit",  # the class name the DiT folders on the hub were saved under
    "UNet2DModel": "unet",
}
"""diffusers ``_class_name`` -> difflab architecture."""

REFERENCE_KEY = "x_embedder.proj.weight"
"""A tensor every reference-code DiT state dict has (and no other format here)."""

SCHEDULER_DEFAULTS: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_start": 0.0001,
    "beta_end": 0.02,
    "beta_schedule": "linear",
    "trained_betas": None,
    "prediction_type": "epsilon",
    "rescale_betas_zero_snr": False,
}
"""The model-defining defaults of diffusers' DDPM and DDIM schedulers (DDPM's schedule)."""

REFERENCE_DIFFUSION: dict[str, Any] = {
    "schedule": "linear",
    "num_timesteps": 1000,
    "beta_start": 0.0001,
    "beta_end": 0.02,
}
"""The schedule of the reference DiT code (``create_diffusion``: linear 1e-4 .. 0.02, T = 1000)."""

PREDICTION_TO_DIFFUSERS = {"eps": "epsilon", "x0": "sample", "v": "v_prediction"}
PREDICTION_FROM_DIFFUSERS = {value: key for key, value in PREDICTION_TO_DIFFUSERS.items()}
SCHEDULE_TO_DIFFUSERS = {
    "linear": "linear",
    "scaled_linear": "scaled_linear",
    "cosine": "squaredcos_cap_v2",
}
SCHEDULE_FROM_DIFFUSERS = {value: key for key, value in SCHEDULE_TO_DIFFUSERS.items()}
BETA_FUNCTIONS = {"linear": linear_betas, "scaled_linear": scaled_linear_betas}
"""The schedules named by their betas' ends (whose defaults a checkpoint may leave as null)."""


@dataclass(frozen=True)
class Source:
    """What a conversion's input is.

    Attributes:
        format: "difflab", "diffusers" or "reference".
        arch: the difflab architecture, "dit" or "unet".
        path: the path as given (a file, or a diffusers model or pipeline folder).
        model_dir: for diffusers, the folder with the network's ``config.json``.
    """

    format: str
    arch: str
    path: Path
    model_dir: Path | None = None


# ----------------------------------------------------------------------------- detection


def _first_bytes(path: Path, n: int = 9) -> bytes:
    with open(path, "rb") as handle:
        return handle.read(n)


def _is_pickle(head: bytes) -> bool:
    """A pickle (protocol 2+ starts with 0x80) or a torch.save zip archive ("PK")."""
    return head[:1] == b"\x80" or head[:2] == b"PK"


def _safetensors_header(path: Path) -> tuple[dict[str, str], list[str]] | None:
    """(metadata, tensor names) of a safetensors file, or None when it is not one."""
    try:
        with safetensors.safe_open(str(path), framework="pt") as handle:
            return dict(handle.metadata() or {}), list(handle.keys())
    except Exception:  # safetensors raises its own types for anything that is not one of its files
        return None


def _diffusers_model_dir(folder: Path) -> Path | None:
    for component in ("transformer", "unet"):
        if (folder / component / "config.json").is_file():
            return folder / component
    if (folder / "config.json").is_file():
        return folder
    return None


def detect_source(path: Path) -> Source:
    """The format and architecture of ``path``, or a :class:`DifflabError` saying why none fits."""
    path = Path(path)
    if not path.exists():
        raise DifflabError(f"{path} does not exist; check the path.")
    if path.is_dir():
        model_dir = _diffusers_model_dir(path)
        if model_dir is None:
            raise DifflabError(
                f"{path} is a folder without config.json, transformer/config.json or "
                "unet/config.json, so it is not a diffusers model or pipeline folder."
            )
        class_name = read_json(model_dir / "config.json").get("_class_name")
        if class_name not in MODEL_CLASSES:
            raise DifflabError(
                f"{model_dir / 'config.json'} describes a {class_name!r}; difflab converts "
                f"{', '.join(sorted(set(MODEL_CLASSES)))} models."
            )
        return Source("diffusers", MODEL_CLASSES[class_name], path, model_dir)
    head = _first_bytes(path)
    if _is_pickle(head) or path.suffix in PICKLE_SUFFIXES:
        return Source("reference", "dit", path)
    header = _safetensors_header(path)
    if header is None:
        raise DifflabError(
            f"{path} is neither a safetensors file, a .pt/.pth state dict nor a diffusers "
            "folder; give a difflab checkpoint, a diffusers folder or a reference DiT state dict."
        )
    metadata, keys = header
    if METADATA_KEY in metadata:
        try:
            meta = json.loads(metadata[METADATA_KEY])
            kind, arch = meta.get("kind"), meta.get("arch")
        except (json.JSONDecodeError, AttributeError):
            kind = arch = None
        if kind != "diffusion" or arch not in ("dit", "unet"):
            raise DifflabError(
                f"{path} is a difflab {kind!r} checkpoint of a {arch!r} network; convert takes "
                "diffusion checkpoints of dit and unet networks."
            )
        return Source("difflab", arch, path)
    if REFERENCE_KEY in keys:
        return Source("reference", "dit", path)
    model_dir = _diffusers_model_dir(path.parent)
    if path.name.startswith("diffusion_pytorch_model") and model_dir == path.parent:
        return detect_source(path.parent)
    raise DifflabError(
        f"{path} is a safetensors file of neither difflab (no difflab metadata), the reference DiT "
        f"(no {REFERENCE_KEY}) nor diffusers (no config.json beside it)."
    )


# ----------------------------------------------------------------------------- reading


def read_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise DifflabError(f"could not read {path} as JSON ({error}); re-save the model.") from None
    if not isinstance(value, dict):
        raise DifflabError(f"{path} is not a JSON object; re-save the model.")
    return value


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        with safetensors.safe_open(str(path), framework="pt") as handle:
            names = handle.keys()
            return {name: handle.get_tensor(name) for name in names}
    except Exception as error:  # safetensors raises its own types for damaged or foreign files
        raise DifflabError(f"{path} is not a readable safetensors file ({error}).") from None


def read_pickled_tensors(path: Path, allow_pickle: bool) -> dict[str, torch.Tensor]:
    """A state dict from a torch.save file, only with ``allow_pickle`` and ``weights_only=True``.

    A training checkpoint of the reference code (``{"model", "ema", "opt", "args"}``) holds an
    argparse Namespace, which ``weights_only`` refuses: the message says how to extract the EMA.
    A dict with an ``"ema"`` (else ``"model"``) entry of tensors gives that entry.
    """
    if not allow_pickle:
        raise DifflabError(
            f"{path} is a Python pickle (torch.save file), which difflab reads only when you pass "
            "--allow-pickle (then with torch.load(weights_only=True), tensors only)."
        )
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols; the error says it
            warnings.simplefilter("ignore")
            loaded = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, OSError) as error:
        first_line = (
            str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        )
        raise DifflabError(
            f"{path} could not be read as tensors only ({first_line}); a training checkpoint "
            "with Python objects in it needs its state dict saved alone first, e.g. "
            "torch.save(checkpoint['ema'], 'ema.pt') in a session that trusts the file."
        ) from None
    if isinstance(loaded, dict):
        for entry in ("ema", "model", "state_dict"):
            if isinstance(loaded.get(entry), dict):
                loaded = loaded[entry]
                break
    if not isinstance(loaded, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in loaded.items()
    ):
        raise DifflabError(f"{path} does not hold a state dict (names -> tensors).")
    return dict(loaded)


def read_state_dict(path: Path, allow_pickle: bool) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file, or of a torch.save file (see :func:`read_pickled_tensors`)."""
    if _is_pickle(_first_bytes(path)) or path.suffix in PICKLE_SUFFIXES:
        return read_pickled_tensors(path, allow_pickle)
    return read_safetensors(path)


def read_model_weights(model_dir: Path, allow_pickle: bool = False) -> dict[str, torch.Tensor]:
    """A diffusers model folder's weights: one safetensors file, an index of shards, or (only
    with ``allow_pickle``) the pickled ``diffusion_pytorch_model.bin``."""
    single = model_dir / WEIGHTS_NAME
    index = model_dir / f"{WEIGHTS_NAME}.index.json"
    if single.is_file():
        return read_safetensors(single)
    if index.is_file():
        weight_map = read_json(index).get("weight_map", {})
        weights: dict[str, torch.Tensor] = {}
        for shard in sorted(set(weight_map.values())):
            weights.update(read_safetensors(model_dir / shard))
        return weights
    if (model_dir / PICKLED_WEIGHTS_NAME).is_file():
        return read_pickled_tensors(model_dir / PICKLED_WEIGHTS_NAME, allow_pickle)
    raise DifflabError(f"{model_dir} has no {WEIGHTS_NAME}; the diffusers model has no weights.")


# ----------------------------------------------------------------------------- schedules


def scheduler_config(diffusion: dict[str, Any], prediction: str) -> dict[str, Any]:
    """The diffusers ``DDIMScheduler`` config of a checkpoint's ``diffusion`` entry.

    difflab's betas (``linear`` and ``scaled_linear`` by their ends, ``cosine`` as
    ``squaredcos_cap_v2``, the same formula), ``clip_sample=False`` (difflab's Denoiser does not
    clip), ``set_alpha_to_one=True`` (difflab's last step goes to ``alpha_bar = 1``) and
    ``timestep_spacing="leading"`` (``difflab sample --spacing leading`` visits the same steps).
    """
    name = diffusion["schedule"]
    if name not in SCHEDULE_TO_DIFFUSERS:
        raise DifflabError(
            f"the noise schedule {name!r} has no diffusers counterpart; difflab exports "
            f"{', '.join(SCHEDULE_TO_DIFFUSERS)}."
        )
    T = int(diffusion["num_timesteps"])
    start, end = SCHEDULER_DEFAULTS["beta_start"], SCHEDULER_DEFAULTS["beta_end"]  # cosine: unused
    if name in BETA_FUNCTIONS:
        defaults = inspect.signature(BETA_FUNCTIONS[name]).parameters
        given = diffusion.get("beta_start"), diffusion.get("beta_end")
        start = float(defaults["beta_start"].default if given[0] is None else given[0])
        end = float(defaults["beta_end"].default if given[1] is None else given[1])
    return {
        "_class_name": "DDIMScheduler",
        "_diffusers_version": DIFFUSERS_VERSION,
        "num_train_timesteps": T,
        "beta_start": start,
        "beta_end": end,
        "beta_schedule": SCHEDULE_TO_DIFFUSERS[name],
        "trained_betas": None,
        "prediction_type": PREDICTION_TO_DIFFUSERS[prediction],
        "clip_sample": False,
        "set_alpha_to_one": True,
        "steps_offset": 0,
        "timestep_spacing": "leading",
        "rescale_betas_zero_snr": False,
    }


def diffusion_from_scheduler(raw: dict[str, Any], where: Path | str) -> tuple[dict[str, Any], str]:
    """(a checkpoint's ``diffusion`` entry, prediction type) of a diffusers scheduler config.

    An empty ``raw`` (no scheduler) means diffusers' defaults: DDPM's linear 1e-4 .. 0.02 over
    T = 1000 with epsilon prediction, which is also the reference DiT's schedule.
    """
    o = {**SCHEDULER_DEFAULTS, **raw}
    if o["rescale_betas_zero_snr"]:
        raise DifflabError(
            f"{where}: rescale_betas_zero_snr=True cannot be imported (difflab's named schedules "
            "do not rescale to zero terminal SNR)."
        )
    prediction = PREDICTION_FROM_DIFFUSERS.get(o["prediction_type"])
    if prediction is None:
        raise DifflabError(
            f"{where}: prediction_type {o['prediction_type']!r} cannot be imported; difflab's "
            f"networks predict {', '.join(PREDICTION_FROM_DIFFUSERS)}."
        )
    name = SCHEDULE_FROM_DIFFUSERS.get(o["beta_schedule"])
    if o["trained_betas"] is not None or name is None:
        raise DifflabError(
            f"{where}: a {o['beta_schedule']!r} schedule (or trained_betas) cannot be imported; "
            f"difflab's schedules are diffusers' {', '.join(SCHEDULE_FROM_DIFFUSERS)}."
        )
    T = int(o["num_train_timesteps"])
    diffusion: dict[str, Any] = {
        "schedule": name,
        "num_timesteps": T,
        "beta_start": None if name == "cosine" else float(o["beta_start"]),
        "beta_end": None if name == "cosine" else float(o["beta_end"]),
    }
    NoiseSchedule.from_name(name, T, diffusion["beta_start"], diffusion["beta_end"])  # checks
    return diffusion, prediction


# ----------------------------------------------------------------------------- writing


def json_bytes(value: dict[str, Any]) -> bytes:
    return (json.dumps(value, indent=2, sort_keys=True) + "\n").encode()


def safetensors_bytes(tensors: dict[str, torch.Tensor]) -> bytes:
    """A safetensors file of ``tensors`` (contiguous CPU copies), as diffusers writes them."""
    return safetensors.torch.save(
        {k: v.detach().contiguous().cpu() for k, v in tensors.items()}, metadata={"format": "pt"}
    )


def refuse_existing(path: Path) -> None:
    """A conversion never replaces anything: an existing output path is refused."""
    if path.exists() or path.is_symlink():
        raise DifflabError(
            f"{path} already exists and convert never overwrites; delete it or choose a new path."
        )


def write_folder_atomic(out_dir: Path, files: dict[str, bytes]) -> None:
    """Write ``files`` (relative path -> bytes) as the new folder ``out_dir``, whole or not at all.

    The files are written and fsynced in a temporary sibling folder (``.difflab-tmp.<pid>.NAME.*.tmp``, named as
    every difflab temporary) that is
    renamed to ``out_dir`` at the end; on any error the temporary folder is removed, and the
    staging folders of killed conversions beside it are removed first. ``out_dir`` must not exist.
    """
    refuse_existing(out_dir)
    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        remove_temporaries(out_dir.parent, recursive=False)
        staging = Path(
            tempfile.mkdtemp(
                prefix=temporary_prefix(out_dir.name), suffix=TEMP_SUFFIX, dir=out_dir.parent
            )
        )
    except OSError as error:
        raise DifflabError(
            f"could not create a folder beside {out_dir} ({error.strerror or error}); fix the "
            "parent folder's permissions or free some space."
        ) from None
    try:
        umask = os.umask(0)
        os.umask(umask)
        for relative, data in files.items():
            path = staging / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
        for folder in {staging, *(p for p in staging.rglob("*") if p.is_dir())}:
            os.chmod(folder, 0o777 & ~umask)  # mkdtemp makes 0700; give what mkdir would
        os.rename(staging, out_dir)
        dir_fd = os.open(out_dir.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except BaseException as error:
        shutil.rmtree(staging, ignore_errors=True)
        if isinstance(error, OSError):
            raise DifflabError(
                f"could not write {out_dir} ({error.strerror or error}); nothing was written: "
                "free some space or fix the folder's permissions, then rerun."
            ) from None
        raise
