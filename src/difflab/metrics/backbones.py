"""The pretrained feature networks: torchvision-layout AlexNet, VGG16 and SqueezeNet 1.1 features.

The metrics that need them (LPIPS, Fréchet distances on AlexNet/VGG16 features) build a backbone
here and pool its taps; the weights come from :mod:`difflab.metrics.pretrained`. The layers are
frozen constants (:class:`FrozenConv2d`) with torchvision's module indices, so a torchvision
state dict loads by name.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from difflab.errors import DifflabError
from difflab.metrics.pretrained import TAP_CHANNELS, canonical_net, load_backbone_weights

# ImageNet statistics of torchvision's pretrained models, for images in [0, 1]. LPIPS's scaling
# layer is the same map written for [-1, 1] input: shift = 2 mean - 1, scale = 2 std.
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)


def imagenet_normalize(
    x: torch.Tensor, input_range: tuple[float, float] = (-1.0, 1.0)
) -> torch.Tensor:
    """(B, 3, H, W) images in ``input_range`` -> the ImageNet-standardised input of the backbones."""
    low, high = input_range
    mean = torch.tensor(IMAGENET_MEAN, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return ((x - low) / (high - low) - mean) / std


class FrozenConv2d(nn.Module):
    """A 2-D convolution whose weight and bias are constants (non-persistent buffers).

    Being buffers, they never reach an optimizer, never require gradients and stay out of any
    enclosing model's ``state_dict``; ``.to()`` still moves and casts them.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        padding: int = 0,
        bias: bool = True,
    ) -> None:
        super().__init__()
        self.stride, self.padding = stride, padding
        shape = (out_channels, in_channels, kernel_size, kernel_size)
        self.register_buffer("weight", torch.zeros(shape), persistent=False)
        self.register_buffer("bias", torch.zeros(out_channels) if bias else None, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight, self.bias, self.stride, self.padding)

    def extra_repr(self) -> str:
        out_c, in_c, k, _ = self.weight.shape
        return f"{in_c}, {out_c}, kernel_size={k}, stride={self.stride}, padding={self.padding}"


class FeatureNetwork(nn.Module):
    """A torchvision-layout ``features`` Sequential that returns the activations at its taps.

    Subclasses set ``features`` (same indices as torchvision, so state dicts load by name),
    ``tap_indices`` (index of the module whose output is a tap), ``tap_channels`` and
    ``min_size`` (the smallest input side that reaches the last tap).

    ``weights``: True loads the bundled ImageNet weights; a path or a mapping loads those
    (torchvision names); None leaves zeros, to be filled with :meth:`load_weights`.
    """

    features: nn.Sequential
    tap_indices: tuple[int, ...]
    tap_channels: tuple[int, ...]
    min_size: int
    net: str

    def __init__(
        self, weights: Mapping[str, torch.Tensor] | str | Path | bool | None = True
    ) -> None:
        super().__init__()
        self.features = self.make_features()
        if weights is True:
            self.load_weights(load_backbone_weights(self.net), source=f"bundled {self.net}")
        elif isinstance(weights, str | Path):
            self.load_weights(load_backbone_weights(self.net, weights), source=str(weights))
        elif isinstance(weights, Mapping):
            self.load_weights(weights, source="the given weights")
        self.eval()

    def make_features(self) -> nn.Sequential:
        raise NotImplementedError

    def conv_names(self) -> list[str]:
        """Dotted names of the convolutions in order, e.g. ``["features.0", "features.3"]``."""
        return [name for name, m in self.named_modules() if isinstance(m, FrozenConv2d)]

    def load_weights(self, state: Mapping[str, torch.Tensor], source: str = "weights") -> None:
        """Copy ``state`` (torchvision names; extra keys ignored) into the frozen buffers."""
        for name, buffer in self.named_buffers():
            if name not in state:
                raise DifflabError(
                    f"{source} lacks {name} for {self.net}; is it a {self.net} state dict?"
                )
            value = state[name]
            if tuple(value.shape) != tuple(buffer.shape):
                raise DifflabError(
                    f"{source}: {name} has shape {tuple(value.shape)}, but {self.net} needs "
                    f"{tuple(buffer.shape)}."
                )
            with torch.no_grad():
                buffer.copy_(value)

    def train(self, mode: bool = True) -> FeatureNetwork:
        """Always eval: the pretrained network is a fixed function."""
        return super().train(False)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """``x`` (B, 3, H, W) ImageNet-standardised (:func:`imagenet_normalize`) -> one
        (B, C_l, H_l, W_l) tensor per tap."""
        taps = []
        last = self.tap_indices[-1]
        for index, module in enumerate(self.features):
            x = module(x)
            if index in self.tap_indices:
                taps.append(x)
            if index == last:
                break
        return taps


class AlexNetFeatures(FeatureNetwork):
    """torchvision ``alexnet().features``; taps relu1..relu5 (64, 192, 384, 256, 256 channels).

    Tap sides for a 64² input: 15, 7, 3, 3, 3; for 256²: 63, 31, 15, 15, 15.
    """

    net = "alex"
    tap_indices = (1, 4, 7, 9, 11)
    tap_channels = TAP_CHANNELS["alex"]
    min_size = 31

    def make_features(self) -> nn.Sequential:
        return nn.Sequential(
            FrozenConv2d(3, 64, 11, stride=4, padding=2),  # 0
            nn.ReLU(inplace=True),  # 1  relu1
            nn.MaxPool2d(3, 2),
            FrozenConv2d(64, 192, 5, padding=2),  # 3
            nn.ReLU(inplace=True),  # 4  relu2
            nn.MaxPool2d(3, 2),
            FrozenConv2d(192, 384, 3, padding=1),  # 6
            nn.ReLU(inplace=True),  # 7  relu3
            FrozenConv2d(384, 256, 3, padding=1),  # 8
            nn.ReLU(inplace=True),  # 9  relu4
            FrozenConv2d(256, 256, 3, padding=1),  # 10
            nn.ReLU(inplace=True),  # 11 relu5
            nn.MaxPool2d(3, 2),
        )


_VGG16_LAYOUT = (
    64,
    64,
    "M",
    128,
    128,
    "M",
    256,
    256,
    256,
    "M",
    512,
    512,
    512,
    "M",
    512,
    512,
    512,
    "M",
)


class VGG16Features(FeatureNetwork):
    """torchvision ``vgg16().features``; taps relu1_2, relu2_2, relu3_3, relu4_3, relu5_3.

    Channels 64, 128, 256, 512, 512; tap sides H, H/2, H/4, H/8, H/16.
    """

    net = "vgg"
    tap_indices = (3, 8, 15, 22, 29)
    tap_channels = TAP_CHANNELS["vgg"]
    min_size = 16

    def make_features(self) -> nn.Sequential:
        layers: list[nn.Module] = []
        channels = 3
        for item in _VGG16_LAYOUT:
            if item == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [FrozenConv2d(channels, int(item), 3, padding=1), nn.ReLU(inplace=True)]
                channels = int(item)
        return nn.Sequential(*layers)


class Fire(nn.Module):
    """SqueezeNet's fire module: squeeze 1×1, then expand 1×1 and 3×3, concatenated."""

    def __init__(self, in_channels: int, squeeze: int, expand: int) -> None:
        super().__init__()
        self.squeeze = FrozenConv2d(in_channels, squeeze, 1)
        self.expand1x1 = FrozenConv2d(squeeze, expand, 1)
        self.expand3x3 = FrozenConv2d(squeeze, expand, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = F.relu(self.squeeze(x))  # (B, squeeze, H, W)
        return torch.cat([F.relu(self.expand1x1(s)), F.relu(self.expand3x3(s))], 1)


class SqueezeNetFeatures(FeatureNetwork):
    """torchvision ``squeezenet1_1().features``; the seven LPIPS taps. Weights by path only."""

    net = "squeeze"
    tap_indices = (1, 4, 7, 9, 10, 11, 12)
    tap_channels = TAP_CHANNELS["squeeze"]
    min_size = 17

    def make_features(self) -> nn.Sequential:
        return nn.Sequential(
            FrozenConv2d(3, 64, 3, stride=2),  # 0
            nn.ReLU(inplace=True),  # 1  tap
            nn.MaxPool2d(3, 2, ceil_mode=True),
            Fire(64, 16, 64),
            Fire(128, 16, 64),  # 4  tap
            nn.MaxPool2d(3, 2, ceil_mode=True),
            Fire(128, 32, 128),
            Fire(256, 32, 128),  # 7  tap
            nn.MaxPool2d(3, 2, ceil_mode=True),
            Fire(256, 48, 192),  # 9  tap
            Fire(384, 48, 192),  # 10 tap
            Fire(384, 64, 256),  # 11 tap
            Fire(512, 64, 256),  # 12 tap
        )


BACKBONES: dict[str, type[FeatureNetwork]] = {
    "alex": AlexNetFeatures,
    "vgg": VGG16Features,
    "squeeze": SqueezeNetFeatures,
}


def build_backbone(net: str, weights: str | Path | None = None) -> FeatureNetwork:
    """The pretrained feature network ``net``, frozen and in eval mode.

    Args:
        net: ``"alex"``, ``"vgg"`` or ``"squeeze"`` (any alias of :func:`canonical_net`).
        weights: a state-dict file to load instead of the bundled ImageNet weights (required
            for SqueezeNet, which no offline package ships).
    """
    net = canonical_net(net)
    return BACKBONES[net](weights=weights if weights is not None else True)
