"""LPIPS, the learned perceptual image patch similarity (Zhang et al., CVPR 2018).

The paper's distance between an image ``x`` and a reference ``x0`` (Eq. 1):

    d(x, x0) = Σ_l 1/(H_l W_l) Σ_{h,w} ‖ w_l ⊙ (ŷ^l_{hw} − ŷ^l_{0hw}) ‖²₂

* ``ŷ^l`` are the activations of a pretrained network at tap ``l`` (AlexNet relu1..relu5, or
  VGG16 relu1_2, relu2_2, relu3_3, relu4_3, relu5_3), unit-normalised in the channel dimension:
  ``ŷ = y / (‖y‖₂ + 1e-10)`` at every pixel.
* ``w_l ∈ R^{C_l}`` are the learned linear weights (v0.1, calibrated on BAPPS 2AFC judgements).
  The stored weights are the non-negative ``w_l²``, applied to the squared difference as a 1×1
  convolution, which is the same sum. ``calibrated=False`` sets every weight to 1: the paper's
  uncalibrated baseline ("net" in the reference code).
* The images first pass the scaling layer that maps ``[-1, 1]`` to ImageNet statistics:
  ``(x − shift) / scale``, shift ``(−.030, −.088, −.188)``, scale ``(.458, .448, .450)``.
  (Version ``"0.0"`` omits it: the original release's bug, kept for old numbers.)
* ``spatial=True`` returns the map before the spatial average: each tap's ``(H_l, W_l)`` map is
  upsampled bilinearly to the input size and summed. Its mean equals the scalar distance exactly
  when every tap side divides the input side (VGG16 at 2^k sizes) and approximately otherwise.

Input range: images are ``[-1, 1]`` by default, as in the reference. Declare ``[0, 1]`` data
with ``input_range=(0, 1)``. A batch outside the declared range, or a batch that lies entirely
in ``[0, 1]`` while ``[-1, 1]`` is declared (the classic mistake), raises an
:class:`InputRangeWarning` (each kind once per metric instance).

Every module here holds its network weights as constant buffers: no parameters, nothing in an
enclosing model's ``state_dict``, gradients flow to the images only.
"""

from __future__ import annotations

import functools
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from difflab.errors import DifflabError
from difflab.metrics.backbones import FeatureNetwork, build_backbone
from difflab.metrics.pretrained import (
    BUNDLED_NET_NAMES,
    canonical_net,
    load_lpips_linear_weights,
    official_lpips_weight_file,
)

SCALING_SHIFT: tuple[float, float, float] = (-0.030, -0.088, -0.188)
SCALING_SCALE: tuple[float, float, float] = (0.458, 0.448, 0.450)
NORM_EPS = 1e-10  # added to the channel norm, as in the reference
VERSIONS: tuple[str, ...] = ("0.1", "0.0")
INPUT_RANGES: tuple[tuple[float, float], ...] = ((-1.0, 1.0), (0.0, 1.0))
_RANGE_SLACK = 1e-3  # float rounding of values at the edge of the range


class InputRangeWarning(UserWarning):
    """LPIPS inputs look like they are not in the declared ``input_range``."""


def unit_normalize(features: torch.Tensor, eps: float = NORM_EPS) -> torch.Tensor:
    """``ŷ = y / (‖y‖₂ + eps)`` over channels: (B, C, H, W) -> (B, C, H, W).

    ``vector_norm`` has a zero (not NaN) gradient where a whole pixel's activations are 0.
    """
    return features / (torch.linalg.vector_norm(features, dim=1, keepdim=True) + eps)


def _range_text(value_range: tuple[float, float]) -> str:
    return f"[{value_range[0]:g}, {value_range[1]:g}]"


class LPIPS(nn.Module):
    """The LPIPS distance ``d(x0, x1)`` (module docstring: Eq. 1 and its parts).

    Args:
        net: ``"alex"`` (the reference default, fastest), ``"vgg"`` (the usual training loss),
            or ``"squeeze"`` (needs ``backbone_weights`` and ``lin_weights`` files).
        calibrated: True uses the learned linear weights ``w_l``; False weights every channel
            equally (the paper's uncalibrated baseline).
        input_range: ``(-1, 1)`` (default) or ``(0, 1)``: the value range of the images.
        version: ``"0.1"`` (default, bundled) or ``"0.0"`` (no scaling layer; needs
            ``lin_weights``, e.g. the lpips package's ``weights/v0.0/alex.pth``).
        lin_weights: a file with the linear layers to use instead of the bundled v0.1 ones.
        backbone_weights: a state-dict file with the backbone (torchvision names) to use
            instead of the bundled ImageNet weights.
    """

    def __init__(
        self,
        net: str = "alex",
        *,
        calibrated: bool = True,
        input_range: tuple[float, float] = (-1.0, 1.0),
        version: str = "0.1",
        lin_weights: str | Path | None = None,
        backbone_weights: str | Path | None = None,
    ) -> None:
        super().__init__()
        self.net = canonical_net(net)
        input_range = (float(input_range[0]), float(input_range[1]))
        if input_range not in INPUT_RANGES:
            raise DifflabError(
                f"input_range {input_range} is not supported; use (-1, 1) or (0, 1) and scale "
                "the images to it."
            )
        if version not in VERSIONS:
            raise DifflabError(f"LPIPS version {version!r} is unknown; use '0.1' or '0.0'.")
        if self.net not in BUNDLED_NET_NAMES and backbone_weights is None:
            hint = official_lpips_weight_file(self.net, version)
            where = f"; the lpips package has the linear layers at {hint}" if hint else ""
            raise DifflabError(
                f"no pretrained {self.net} weights are available offline: pass a torchvision "
                "squeezenet1_1 state dict as backbone_weights (--backbone-weights) and the "
                f"LPIPS linear layers as lin_weights (--lin-weights){where}."
            )
        if (
            calibrated
            and lin_weights is None
            and (version != "0.1" or self.net not in BUNDLED_NET_NAMES)
        ):
            hint = official_lpips_weight_file(self.net, version)
            where = f" (the lpips package has it at {hint})" if hint else ""
            raise DifflabError(
                f"LPIPS v{version} linear layers for {self.net} are not bundled; pass the file "
                f"as lin_weights (--lin-weights){where}."
            )
        self.calibrated, self.input_range, self.version = calibrated, input_range, version
        self._range_warnings: set[str] = set()  # kinds of InputRangeWarning already given
        self.backbone: FeatureNetwork = build_backbone(self.net, backbone_weights)

        # x -> (x_{[-1,1]} - shift) / scale folded into one affine map: x * gain + offset.
        low, high = input_range
        to_unit = 2.0 / (high - low)  # [low, high] -> [-1, 1]: x * to_unit - (1 + low * to_unit)
        shift = torch.tensor(SCALING_SHIFT if version == "0.1" else (0.0, 0.0, 0.0))
        scale = torch.tensor(SCALING_SCALE if version == "0.1" else (1.0, 1.0, 1.0))
        gain = to_unit / scale
        offset = (-(1.0 + low * to_unit) - shift) / scale
        self.register_buffer("input_gain", gain.view(1, 3, 1, 1), persistent=False)
        self.register_buffer("input_offset", offset.view(1, 3, 1, 1), persistent=False)

        if calibrated:
            weights = load_lpips_linear_weights(self.net, lin_weights)
        else:
            weights = [torch.ones(1, c, 1, 1) for c in self.backbone.tap_channels]
        for layer, weight in enumerate(weights):
            self.register_buffer(f"lin_{layer}", weight, persistent=False)  # (1, C_l, 1, 1)
        self.eval()

    @property
    def lin_weights(self) -> list[torch.Tensor]:
        """The per-tap linear weights (``w_l²`` of Eq. 1), each ``(1, C_l, 1, 1)``."""
        return [getattr(self, f"lin_{layer}") for layer in range(len(self.backbone.tap_channels))]

    def train(self, mode: bool = True) -> LPIPS:
        """Always eval: the metric is a fixed function."""
        return super().train(False)

    def extra_repr(self) -> str:
        return (
            f"net={self.net!r}, version={self.version!r}, calibrated={self.calibrated}, "
            f"input_range={self.input_range}"
        )

    # --- the parts of Eq. 1 -------------------------------------------------------------------

    def check_images(self, x: torch.Tensor, name: str = "x") -> torch.Tensor:
        """Validate one batch and return it as (B, 3, H, W) in the module's dtype.

        Grayscale (B, 1, H, W) is repeated to 3 channels. Warns (:class:`InputRangeWarning`)
        when values fall outside the declared range, or all lie in [0, 1] under [-1, 1].
        """
        if not isinstance(x, torch.Tensor):
            raise DifflabError(f"LPIPS {name} must be a torch.Tensor, got {type(x).__name__}.")
        if x.ndim != 4:
            raise DifflabError(
                f"LPIPS {name} has shape {tuple(x.shape)}; expected a batch (B, C, H, W)."
            )
        if not x.is_floating_point():
            raise DifflabError(
                f"LPIPS {name} is {x.dtype}; convert 8-bit pixels to float, x / 127.5 - 1 for "
                "[-1, 1] (or x / 255 with input_range=(0, 1))."
            )
        channels, height, width = x.shape[1:]
        if channels not in (1, 3):
            raise DifflabError(
                f"LPIPS {name} has {channels} channels; give RGB (3) or grayscale (1) images."
            )
        side = self.backbone.min_size
        if min(height, width) < side:
            raise DifflabError(
                f"LPIPS {name} is {height}×{width}, smaller than the {side}×{side} that "
                f"{self.net} needs; upsample the images or use another network."
            )
        self._warn_on_range(x, name)
        x = x.to(self.input_gain.dtype)
        return x.expand(-1, 3, -1, -1) if channels == 1 else x

    def _warn_on_range(self, x: torch.Tensor, name: str) -> None:
        """Each kind of range warning once per metric instance (a loss must not flood logs)."""
        if len(self._range_warnings) == 2:
            return
        low, high = self.input_range
        lo, hi = (v.item() for v in torch.aminmax(x.detach()))
        if lo < low - _RANGE_SLACK or hi > high + _RANGE_SLACK:
            kind = "outside"
            message = (
                f"LPIPS {name} spans [{lo:.3g}, {hi:.3g}], outside the declared input_range "
                f"{_range_text(self.input_range)}; scale the images (x / 127.5 - 1 maps 8-bit "
                "pixels to [-1, 1]) or declare input_range=(0, 1) for [0, 1] data."
            )
        elif low < 0 and lo >= 0 and 0 < hi <= 1:
            kind = "zero-one"
            message = (
                f"LPIPS {name} lies entirely in [0, 1] while input_range is [-1, 1]; if these "
                "are [0, 1] images, pass input_range=(0, 1), otherwise distances are computed "
                "on washed-out images."
            )
        else:
            return
        if kind not in self._range_warnings:
            self._range_warnings.add(kind)
            # stacklevel 6: _warn_on_range, check_images, forward, Module._call_impl,
            # Module._wrapped_call_impl, then the caller of the metric
            warnings.warn(message, InputRangeWarning, stacklevel=6)

    def normalized_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """``ŷ^l`` for checked images (B, 3, H, W): one (B, C_l, H_l, W_l) tensor per tap."""
        scaled = torch.addcmul(self.input_offset, x, self.input_gain)  # scaling layer
        # channels_last: faster convolutions on CPU (oneDNN) and contiguous channel reductions
        scaled = scaled.contiguous(memory_format=torch.channels_last)
        return [unit_normalize(tap) for tap in self.backbone(scaled)]

    def compare(
        self,
        features0: list[torch.Tensor],
        features1: list[torch.Tensor],
        spatial_size: tuple[int, int] | None = None,
    ) -> torch.Tensor:
        """Eq. 1 from normalised features (batches broadcast).

        Returns (B,) distances, or with ``spatial_size=(H, W)`` the (B, 1, H, W) map.
        """
        total: torch.Tensor | None = None
        for f0, f1, weight in zip(features0, features1, self.lin_weights, strict=True):
            diff = (f0 - f1).square()  # (B, C_l, H_l, W_l)
            layer = F.conv2d(diff, weight)  # Σ_c w_lc² Δ²: (B, 1, H_l, W_l)
            if spatial_size is None:
                layer = layer.mean((2, 3))  # spatial average: (B, 1)
            else:
                layer = F.interpolate(
                    layer, size=spatial_size, mode="bilinear", align_corners=False
                )
            total = layer if total is None else total + layer
        assert total is not None
        return total if spatial_size is not None else total[:, 0]

    def forward(self, x0: torch.Tensor, x1: torch.Tensor, *, spatial: bool = False) -> torch.Tensor:
        """LPIPS distance between two batches.

        Args:
            x0, x1: (B, C, H, W) images in ``input_range``, C = 3 or 1; equal shapes, or one
                batch of size 1 compared against every image of the other.
            spatial: return the (B, 1, H, W) distance map instead of (B,) distances.

        Returns:
            (B,) distances (0 for identical images), or the (B, 1, H, W) map.
        """
        x0, x1 = self.check_images(x0, "x0"), self.check_images(x1, "x1")
        if x0.shape[1:] != x1.shape[1:] or (
            x0.shape[0] != x1.shape[0] and 1 not in (x0.shape[0], x1.shape[0])
        ):
            raise DifflabError(
                f"LPIPS compares images of equal size: x0 is {tuple(x0.shape)} and x1 is "
                f"{tuple(x1.shape)}; resize them to one size (batch sizes must match or be 1)."
            )
        # One backbone pass over both batches, unless only one of them needs a gradient (a
        # loss against a fixed target): then backward would waste half its work on the other.
        one_needs_grad = torch.is_grad_enabled() and x0.requires_grad != x1.requires_grad
        if x0.shape[0] == x1.shape[0] and not one_needs_grad:
            features = self.normalized_features(torch.cat([x0, x1]))  # (2B, ...) per tap
            features0, features1 = zip(*(f.chunk(2) for f in features), strict=True)
        else:
            features0, features1 = self.normalized_features(x0), self.normalized_features(x1)
        size = tuple(x0.shape[-2:]) if spatial else None
        return self.compare(list(features0), list(features1), size)


class LPIPSLoss(nn.Module):
    """LPIPS as a training loss: ``loss = reduce_b d(x_b, target_b)``.

    Frozen by construction: the network is constant buffers, so ``parameters()`` is empty (an
    optimizer built from an enclosing model never sees it), nothing lands in the enclosing
    ``state_dict``, and the module stays in eval mode whatever ``train()`` is called with.

    Args:
        net: ``"vgg"`` (default: the perceptual loss of autoencoders such as Latent Diffusion's)
            or ``"alex"``.
        input_range: value range of the images, ``(-1, 1)`` or ``(0, 1)``.
        reduction: ``"mean"`` (default), ``"sum"`` or ``"none"`` over the batch.
    """

    def __init__(
        self,
        net: str = "vgg",
        *,
        input_range: tuple[float, float] = (-1.0, 1.0),
        reduction: str = "mean",
    ) -> None:
        super().__init__()
        if reduction not in ("mean", "sum", "none"):
            raise DifflabError(f"reduction {reduction!r} is unknown; use mean, sum or none.")
        self.reduction = reduction
        self.metric = LPIPS(net, input_range=input_range)

    def train(self, mode: bool = True) -> LPIPSLoss:
        return super().train(False)

    def forward(self, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) reconstructions and targets -> scalar loss ((B,) with ``"none"``)."""
        distances = self.metric(x, target)  # (B,)
        if self.reduction == "mean":
            return distances.mean()
        return distances.sum() if self.reduction == "sum" else distances


@functools.lru_cache(maxsize=8)
def _shared_metric(net: str, calibrated: bool, input_range: tuple[float, float]) -> LPIPS:
    return LPIPS(net, calibrated=calibrated, input_range=input_range)


def lpips_distance(
    x0: torch.Tensor,
    x1: torch.Tensor,
    *,
    net: str = "alex",
    input_range: tuple[float, float] = (-1.0, 1.0),
    calibrated: bool = True,
    spatial: bool = False,
) -> torch.Tensor:
    """LPIPS distances without gradients, with a metric built once per process and option set.

    Same arguments as :class:`LPIPS` and its ``forward``; returns (B,) or the (B, 1, H, W) map.
    For gradients use :class:`LPIPS` or :class:`LPIPSLoss`.
    """
    key = (canonical_net(net), calibrated, (float(input_range[0]), float(input_range[1])))
    metric = _shared_metric(*key).to(x0.device)
    with torch.no_grad():
        return metric(x0, x1, spatial=spatial)
