"""A small clean-image CNN: the feature network of FD-MNIST / FD-Fashion and the judge of labels.

Not a diffusion backbone (it sees clean images, no timestep) and so not in the model registry.
Five 3×3 convolutions with batch norm, two 2×2 max-pools and a global average pool give a
``feature_dim``-wide embedding; one linear layer maps it to class logits::

    (B, 1, 28, 28) -conv-> 32 @ 28² -pool-> 14² -conv-> 64 -conv-> 64 -pool-> 7²
                   -conv-> 128 -conv-> 128 -avg-> (B, 128) features -linear-> (B, 10) logits

The 128-d average-pooled activations (non-negative, after ReLU) are the features of the Fréchet
distance and of precision/recall (:mod:`difflab.metrics.features`). The shipped weights
(``weights/{mnist,fashion}_cnn.safetensors``) are made by ``scripts/train_feature_cnn.py``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from difflab.errors import DifflabError

CHECKPOINT_KIND = "feature-cnn"


@dataclass(frozen=True)
class FeatureCNNConfig:
    """Sizes of :class:`FeatureCNN`.

    Attributes:
        in_channels: image channels (1 for MNIST-like data).
        image_size: the side in pixels the network was trained on; inputs are resized to it by
            the feature extractor, never by the network.
        widths: output channels of the five convolutions (pools after the 1st and the 3rd).
        num_classes: number of logits.
        dropout: dropout probability before the linear classifier (training only).
    """

    in_channels: int = 1
    image_size: int = 28
    widths: tuple[int, int, int, int, int] = (32, 64, 64, 128, 128)
    num_classes: int = 10
    dropout: float = 0.1

    @property
    def feature_dim(self) -> int:
        """Width of the embedding: the channels of the last convolution."""
        return self.widths[-1]

    def to_dict(self) -> dict[str, Any]:
        """JSON form, for a checkpoint's metadata."""
        return {**asdict(self), "widths": list(self.widths)}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> FeatureCNNConfig:
        """Inverse of :meth:`to_dict`; an unknown key is a :class:`DifflabError`."""
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(values) - known)
        if unknown:
            raise DifflabError(
                f"feature-CNN config has an unknown key {unknown[0]!r}; known keys: "
                f"{', '.join(sorted(known))}."
            )
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})


def _conv_bn_relu(in_channels: int, out_channels: int) -> nn.Sequential:
    """3×3 same-padding convolution (no bias: batch norm supplies it), batch norm, ReLU."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class FeatureCNN(nn.Module):
    """``features(x) -> (B, feature_dim)``, ``forward(x) -> (B, num_classes)`` logits.

    ``x`` is ``(B, in_channels, image_size, image_size)`` in [-1, 1] (MNIST background = -1).
    """

    def __init__(self, config: FeatureCNNConfig | None = None) -> None:
        super().__init__()
        self.config = c = config or FeatureCNNConfig()
        w1, w2, w3, w4, w5 = c.widths
        self.body = nn.Sequential(
            _conv_bn_relu(c.in_channels, w1),  # (B, w1, S, S)
            nn.MaxPool2d(2),  # (B, w1, S/2, S/2)
            _conv_bn_relu(w1, w2),
            _conv_bn_relu(w2, w3),  # (B, w3, S/2, S/2)
            nn.MaxPool2d(2),  # (B, w3, S/4, S/4)
            _conv_bn_relu(w3, w4),
            _conv_bn_relu(w4, w5),  # (B, w5, S/4, S/4)
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),  # (B, w5)
        )
        self.dropout = nn.Dropout(c.dropout)
        self.classifier = nn.Linear(w5, c.num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The embedding: ``(B, C, S, S)`` -> ``(B, feature_dim)``, average-pooled ReLU outputs."""
        return self.body(x)

    def logits_from_features(self, features: torch.Tensor) -> torch.Tensor:
        """``(B, feature_dim)`` -> ``(B, num_classes)``."""
        return self.classifier(self.dropout(features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits ``(B, num_classes)`` of images ``(B, C, S, S)`` in [-1, 1]."""
        return self.logits_from_features(self.features(x))
