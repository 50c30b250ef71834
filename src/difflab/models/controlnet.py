"""ControlNet (Zhang, Rao & Agrawala 2023): spatial control of a frozen diffusion network.

The base network's weights stay locked; a *trainable copy* of its encoder reads the noisy input
plus a hint (edges, a scribble, a segmentation map) and speaks back to the locked network only
through layers initialised to zero, so training starts from the base model exactly (their eq. 2:
``y_c = F(x; Θ) + Z(F(x + Z(c; Θ_z1); Θ_c); Θ_z2)``, with ``Z`` a zero convolution).

* :class:`UNetControlNet` (the paper's design, sec. 3.2 and Fig. 3): a copy of the U-Net's
  ``conv_in``, down path and middle block; a :class:`HintEncoder` of a few convolutions (stride 2
  where the hint is larger than the network's input, as for a latent model whose hint stays in
  pixel space) maps the hint to the first feature resolution and is added after the copy's
  ``conv_in``; one zero 1x1 convolution per skip connection and one for the middle block, whose
  outputs the locked U-Net adds to its skips and its middle output.
* :class:`DiTControlNet` (PixArt-δ, Chen et al. 2024, sec. 3): a copy of the first N DiT blocks;
  the hint is encoded and patchified like the input and added (through a zero layer) to the
  copy's tokens; each copied block is followed by a zero-initialised linear layer whose output is
  added to the output of the matching locked block.

:class:`ControlledNetwork` joins a locked base and one or more ControlNets into a network with
the ordinary contract ``net(x_t, t, cond)`` (the hint is ``cond.control``), so every sampler and
guidance wrapper runs it unchanged; it applies the sampling controls of :class:`ControlSettings`.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from difflab.diffusion.conditioning import NULL_LABEL, Conditioning
from difflab.errors import DifflabError
from difflab.models.control_residuals import ControlResiduals
from difflab.models.dit import DiT, DiTConfig
from difflab.models.unet import UNet, UNetConfig, attend, build_encoder, run_encoder

CONTROL_KIND = "controlnet"
"""``kind`` of a ControlNet checkpoint (it holds the control branch only, not the base)."""

GUESS_MODE_DECAY = 0.825
"""Guess mode's per-resolution scale: output i of K gets ``0.825^(K - 1 - i)`` (the reference
code's ``0.825 ** (12 - i)`` for Stable Diffusion's 13 outputs): the deepest output keeps full
weight and the shallow, high-resolution ones are damped."""


@dataclass(frozen=True)
class ControlNetConfig:
    """Sizes of a ControlNet's own parts (the copy's sizes are the base's).

    Attributes:
        base_arch: the architecture it controls: ``"unet"`` or ``"dit"``.
        hint_channels: channels of the hint (1 for edges and scribbles, 3 for colour maps).
        hint_size: hint height = width in pixels: the base's input size for a pixel model, the
            decoded image size for a latent model (the hint encoder then downsamples by stride 2
            convolutions to the latent grid).
        hint_widths: channel widths of the hint encoder's stages.
        num_blocks: DiT only: copied blocks N (0 = half the base's depth, rounded up).
        zero_init: True: the joining layers start at zero (the paper); False: Gaussian
            initialisation instead (the paper's ablation, Fig. 8 "without zero convolution").
    """

    base_arch: str = "unet"
    hint_channels: int = 1
    hint_size: int = 28
    hint_widths: tuple[int, ...] = (16, 32)
    num_blocks: int = 0
    zero_init: bool = True


def check_control_config(config: ControlNetConfig, sample_size: int) -> int:
    """The hint encoder's downsampling factor ``hint_size / sample_size`` (a power of 2), or a
    DifflabError naming the field that is wrong."""
    if config.base_arch not in ("unet", "dit"):
        raise DifflabError(
            f"model.base_arch {config.base_arch!r} is unknown; a ControlNet controls a unet or a dit."
        )
    if config.hint_channels < 1 or not config.hint_widths or min(config.hint_widths) < 1:
        raise DifflabError(
            "model.hint_channels and every model.hint_widths entry must be at least 1."
        )
    factor = config.hint_size // sample_size if config.hint_size % sample_size == 0 else 0
    if factor < 1 or factor & (factor - 1):
        raise DifflabError(
            f"model.hint_size {config.hint_size} must be the base's input size {sample_size} "
            "times a power of 2 (the decoded image size of a latent model)."
        )
    return factor


def _init_joining(layer: nn.Module, zero: bool) -> nn.Module:
    """Zero weights and bias (a "zero convolution"), or the ablation's Gaussian weights."""
    weight, bias = layer.weight, layer.bias
    if zero:
        nn.init.zeros_(weight)
    else:
        nn.init.normal_(weight, std=1 / math.sqrt(weight[0].numel()))
    nn.init.zeros_(bias)
    return layer


class HintEncoder(nn.Module):
    """The hint's own small encoder (the paper's E(·), sec. 3.3): 3x3 convolutions with SiLU,
    one stride-2 convolution per halving from the hint size to the network's input grid, then a
    joining layer (zero-initialised) to the features it is added to.

    Shapes: hint (B, hint_channels, S, S) -> (B, out_channels, S / (factor * patch), ...).

    Args:
        factor: hint size / network input size (1 for pixel models, the autoencoder's f else).
        patch: 1 for the U-Net (a 3x3 joining convolution); p for the DiT (a p x p stride-p
            joining convolution: the hint is patchified like the input).
    """

    def __init__(self, config: ControlNetConfig, out_channels: int, factor: int, patch: int = 1):
        super().__init__()
        halvings = int(math.log2(factor))
        widths = list(config.hint_widths)
        widths += [widths[-1]] * max(0, halvings + 1 - len(widths))
        layers: list[nn.Module] = [nn.Conv2d(config.hint_channels, widths[0], 3, padding=1)]
        for stage in range(len(widths) - 1):
            stride = 2 if stage < halvings else 1
            layers += [nn.SiLU(), nn.Conv2d(widths[stage], widths[stage], 3, padding=1)]
            layers += [nn.SiLU(), nn.Conv2d(widths[stage], widths[stage + 1], 3, stride, 1)]
        layers.append(nn.SiLU())
        self.layers = nn.Sequential(*layers)
        if patch == 1:
            joining = nn.Conv2d(widths[-1], out_channels, 3, padding=1)
        else:
            joining = nn.Conv2d(widths[-1], out_channels, patch, stride=patch)
        self.joining = _init_joining(joining, config.zero_init)

    def forward(self, hint: torch.Tensor) -> torch.Tensor:
        return self.joining(self.layers(hint))


class ControlBranch(nn.Module):
    """What both ControlNets share: ``config``, the base's ``base_config`` and its prediction."""

    config: ControlNetConfig
    base_config: UNetConfig | DiTConfig

    @property
    def prediction(self) -> str:
        return self.base_config.prediction


class UNetControlNet(ControlBranch):
    """The trainable copy of a U-Net's encoder and middle, with hint encoder and zero convolutions.

    ``controlnet(x_t, t, cond, hint) -> ControlResiduals``: one (B, C_i, H_i, W_i) per skip
    connection of the base and its (B, C, h, w) middle output, all zero at initialisation.
    """

    def __init__(self, base: UNet, config: ControlNetConfig) -> None:
        super().__init__()
        c = base.config
        factor = check_control_config(config, c.image_size)
        if config.base_arch != "unet":
            raise DifflabError("a UNetControlNet needs model.base_arch: unet.")
        self.config = config
        self.base_config = c
        # the trainable copy, initialised from the locked base (sec. 3.2): everything but the decoder
        self.copy = copy.deepcopy(base).requires_grad_(True)
        del self.copy.up_blocks, self.copy.norm_out, self.copy.conv_out
        self.hint_encoder = HintEncoder(config, c.base_channels, factor)
        skip_channels = build_encoder(c, 1).skip_channels
        self.zero_convs = nn.ModuleList(
            _init_joining(nn.Conv2d(ch, ch, 1), config.zero_init) for ch in skip_channels
        )
        middle = skip_channels[-1]
        self.middle_zero_conv = _init_joining(nn.Conv2d(middle, middle, 1), config.zero_init)

    def forward(
        self, x_t: torch.Tensor, t: torch.Tensor, cond: Conditioning, hint: torch.Tensor
    ) -> ControlResiduals:
        net = self.copy
        emb = net.embed(t, cond)  # (B, E)
        tokens, mask = net.context(cond, x_t)
        guide = self.hint_encoder(hint.to(x_t.dtype))  # (B, C0, H, W)

        def conv_in_with_hint(x: torch.Tensor) -> torch.Tensor:
            return net.conv_in(x) + guide  # x + Z(c) of eq. 2, at the first feature resolution

        h, skips = run_encoder(conv_in_with_hint, net.down_blocks, x_t, emb, tokens, mask)
        h = net.mid_block2(attend(net.mid_attention, net.mid_block1(h, emb), tokens, mask), emb)
        features = tuple(zero(skip) for zero, skip in zip(self.zero_convs, skips, strict=True))
        return ControlResiduals(features, self.middle_zero_conv(h))


class DiTControlNet(ControlBranch):
    """A trainable copy of a DiT's first N blocks joined by zero linear layers (PixArt-δ).

    ``controlnet(x_t, t, cond, hint) -> ControlResiduals`` with one (B, T, D) per copied block.
    """

    def __init__(self, base: DiT, config: ControlNetConfig) -> None:
        super().__init__()
        c = base.config
        factor = check_control_config(config, c.image_size)
        if config.base_arch != "dit":
            raise DifflabError("a DiTControlNet needs model.base_arch: dit.")
        blocks = config.num_blocks or math.ceil(c.depth / 2)
        if not 1 <= blocks <= c.depth:
            raise DifflabError(
                f"model.num_blocks {config.num_blocks} must lie in 1..{c.depth} (the base's depth)."
            )
        self.config = config
        self.base_config = c
        self.copy = copy.deepcopy(base).requires_grad_(True)
        self.copy.blocks = nn.ModuleList(list(self.copy.blocks)[:blocks])
        del self.copy.final_layer
        self.hint_encoder = HintEncoder(config, c.hidden_size, factor, c.patch_size)
        self.zero_linears = nn.ModuleList(
            _init_joining(nn.Linear(c.hidden_size, c.hidden_size), config.zero_init)
            for _ in range(blocks)
        )

    def forward(
        self, x_t: torch.Tensor, t: torch.Tensor, cond: Conditioning, hint: torch.Tensor
    ) -> ControlResiduals:
        net = self.copy
        net._check_input(x_t)
        c = net.embed(t, cond)  # (B, D)
        tokens = net.patch_embed(x_t).flatten(2).transpose(1, 2)  # (B, T, D)
        guide = self.hint_encoder(hint.to(x_t.dtype)).flatten(2).transpose(1, 2)  # (B, T, D)
        x = tokens + net.position_embedding() + guide  # (B, T, D)
        features = []
        for block, zero in zip(net.blocks, self.zero_linears, strict=True):
            x = block(x, c)  # (B, T, D)
            features.append(zero(x))
        return ControlResiduals(tuple(features), None)


ControlNet = UNetControlNet | DiTControlNet

CONTROLNET_CLASSES: dict[str, type[nn.Module]] = {"unet": UNetControlNet, "dit": DiTControlNet}


def build_controlnet(base: nn.Module, config: ControlNetConfig) -> UNetControlNet | DiTControlNet:
    """The ControlNet of ``config.base_arch`` for ``base``, initialised from it; a DifflabError
    when the base is of another family (a U-Net ControlNet given a DiT)."""
    expected = {"unet": UNet, "dit": DiT}.get(config.base_arch)
    if expected is None or not isinstance(base, expected):
        check_control_config(config, getattr(base.config, "image_size", 1))
        raise DifflabError(
            f"this ControlNet was made for a {config.base_arch} but the base network is a "
            f"{type(base).__name__}; give the base model it was trained on."
        )
    return CONTROLNET_CLASSES[config.base_arch](base, config)  # type: ignore[return-value]


# ----------------------------------------------------------------------------- sampling controls


@dataclass(frozen=True)
class ControlSettings:
    """How strongly, where and when the ControlNets act during one sampling run.

    Attributes:
        scale: one weight for every output, or one weight per output (the skips in the down
            path's order then the middle, or the DiT's blocks); with several ControlNets, one such
            entry per ControlNet.
        guess_mode: the paper's guess mode (sec. 4, "no prompt"): control only on the conditional
            branch of classifier-free guidance (the samples whose labels or tokens are not
            dropped), with output i of K scaled by ``0.825^(K - 1 - i)``.
        start / end: the fractions of the sampling trajectory between which control acts: step
            i of S is controlled when ``i / S >= start`` and ``(i + 1) / S <= end``.
    """

    scale: float | Sequence[float] | Sequence[float | Sequence[float]] = 1.0
    guess_mode: bool = False
    start: float = 0.0
    end: float = 1.0

    def __post_init__(self) -> None:
        if not (0 <= self.start < self.end <= 1):
            raise DifflabError(
                f"control start {self.start} and end {self.end} must satisfy 0 <= start < end <= 1 "
                "(fractions of the sampling trajectory)."
            )


def _finite_scale(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise DifflabError(f"a control scale must be a finite number, got {value!r}.")
    return float(value)


def output_weights(scale: float | Sequence[float], count: int, guess_mode: bool) -> list[float]:
    """The K = ``count`` per-output weights of one ControlNet (guess mode's decay applied)."""
    if isinstance(scale, (int, float)):
        weights = [_finite_scale(scale)] * count
    else:
        weights = [_finite_scale(v) for v in scale]
        if len(weights) != count:
            raise DifflabError(
                f"a per-block control scale needs {count} weights (one per skip and the middle, "
                f"or per copied block) for this ControlNet, got {len(weights)}."
            )
    if guess_mode:
        weights = [w * GUESS_MODE_DECAY ** (count - 1 - i) for i, w in enumerate(weights)]
    return weights


def active_steps(
    timesteps: torch.Tensor, num_timesteps: int, start: float, end: float
) -> torch.Tensor:
    """(T,) bool: whether control acts at each timestep t of a run over ``timesteps`` (S,).

    A timestep's step index i is the number of run timesteps above it (its own index when it is
    one of them; the step it lies in for a sampler that evaluates between them), so every sampler
    is served without knowing its name.
    """
    ordered = torch.sort(timesteps.cpu().long()).values  # (S,) increasing
    above = len(ordered) - torch.searchsorted(ordered, torch.arange(num_timesteps), right=True)
    steps = len(ordered)
    return (above / steps >= start) & ((above + 1) / steps <= end + 1e-9)  # (T,)


def conditional_samples(cond: Conditioning) -> torch.Tensor | None:
    """(B,) bool: the samples on a conditional branch (labels not dropped, or a caption token
    present); None when the conditioning has neither labels nor tokens (nothing to tell apart)."""
    flags = []
    if cond.labels is not None:
        flags.append(cond.labels != NULL_LABEL)
    if cond.token_mask is not None:
        flags.append(cond.token_mask.any(dim=1))
    if not flags:
        return None
    return torch.stack(flags).any(dim=0)


def checked_hint(
    hint: torch.Tensor | None, controls: Sequence[UNetControlNet | DiTControlNet], batch: int
) -> list[torch.Tensor]:
    """Split ``cond.control`` (B, sum of hint channels, S, S) into one hint per ControlNet; a hint
    of 1 channel serves every ControlNet (repeated to its channels). One sentence when wrong."""
    wanted = [c.config.hint_channels for c in controls]
    size = controls[0].config.hint_size
    if hint is None:
        raise DifflabError(
            f"this model is controlled by a ControlNet: pass a hint, Conditioning(control=...) of "
            f"shape (B, {sum(wanted)}, {size}, {size}) in [-1, 1] (difflab sample: --hint IMAGE)."
        )
    if hint.ndim != 4 or hint.shape[0] != batch or hint.shape[-2:] != (size, size):
        raise DifflabError(
            f"the hint has shape {tuple(hint.shape)} but this ControlNet reads ({batch}, "
            f"{sum(wanted)}, {size}, {size}); resize it to {size}x{size} pixels."
        )
    if hint.shape[1] not in (1, sum(wanted)):
        raise DifflabError(
            f"the hint has {hint.shape[1]} channels but this ControlNet reads {sum(wanted)} (or 1, "
            "repeated); give a grey or a matching colour image."
        )
    if hint.shape[1] == 1:
        return [hint.expand(-1, channels, -1, -1) for channels in wanted]
    return list(torch.split(hint, wanted, dim=1))


def check_hint_content(hint: torch.Tensor) -> None:
    """A hint with non-finite values, or a blank one (one value everywhere), is refused."""
    if not bool(torch.isfinite(hint).all()):
        raise DifflabError("the hint holds NaN or infinite values; give an image in [-1, 1].")
    flat = hint.flatten(1)  # (B, C * H * W)
    blank = (flat.amax(dim=1) - flat.amin(dim=1)) == 0
    if bool(blank.any()):
        index = int(blank.nonzero()[0])
        raise DifflabError(
            f"hint {index} is blank (one value everywhere), so there is nothing to follow; draw "
            "or detect some edges first (difflab hint canny IMAGE)."
        )


class ControlledNetwork(nn.Module):
    """A locked base network plus ControlNets, following the network contract.

    ``net(x_t, t, cond) -> (B, C, H, W)`` reads the hint from ``cond.control``, sums the
    ControlNets' outputs (each weighted by its entry of ``settings.scale``), and runs the base
    with that sum added. ``active`` (T,) bool, from :func:`active_steps`, gates control by
    timestep (None: every step).
    """

    def __init__(
        self,
        base: nn.Module,
        controls: Sequence[UNetControlNet | DiTControlNet],
        settings: ControlSettings | None = None,
        active: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        if not controls:
            raise DifflabError("a controlled network needs at least one ControlNet.")
        sizes = {(c.config.hint_size, c.config.base_arch) for c in controls}
        if len(sizes) > 1:
            raise DifflabError(
                "ControlNets used together must control the same base and read hints of one size."
            )
        self.base = base
        self.controls = nn.ModuleList(controls)
        self.settings = settings or ControlSettings()
        self.active = active
        self.config = base.config
        self.prediction = base.prediction
        self.conditioning_fields = (*base.conditioning_fields, "control")
        self._scales = self._per_control_scales()

    def _per_control_scales(self) -> list[float | Sequence[float]]:
        scale = self.settings.scale
        if len(self.controls) == 1:
            return [scale]  # type: ignore[list-item]
        if isinstance(scale, (int, float)):
            return [scale] * len(self.controls)
        if len(scale) != len(self.controls):
            raise DifflabError(
                f"give one control scale per ControlNet ({len(self.controls)}), got {len(scale)}."
            )
        return list(scale)

    def with_settings(
        self, settings: ControlSettings, active: torch.Tensor | None = None
    ) -> ControlledNetwork:
        """The same modules under other sampling controls (for one run)."""
        return ControlledNetwork(self.base, list(self.controls), settings, active)

    def residuals(
        self, x_t: torch.Tensor, t: torch.Tensor, cond: Conditioning
    ) -> ControlResiduals | None:
        """The weighted sum of the ControlNets' outputs, or None when no sample is controlled."""
        hints = checked_hint(cond.control, list(self.controls), x_t.shape[0])
        mask = torch.ones(x_t.shape[0], dtype=torch.bool, device=x_t.device)
        if self.active is not None:
            mask &= self.active.to(x_t.device)[t]
        if self.settings.guess_mode and (branch := conditional_samples(cond)) is not None:
            mask &= branch.to(x_t.device)
        if not bool(mask.any()):
            return None
        total = None
        for control, hint, scale in zip(self.controls, hints, self._scales, strict=True):
            out = control(x_t, t, cond, hint)
            weights = output_weights(scale, out.count, self.settings.guess_mode)
            out = out.scaled(weights, None if bool(mask.all()) else mask)
            total = out if total is None else total + out
        return total

    def forward(
        self, x_t: torch.Tensor, t: torch.Tensor, cond: Conditioning | None = None
    ) -> torch.Tensor:
        cond = cond if cond is not None else Conditioning()
        return self.base(x_t, t, cond, control=self.residuals(x_t, t, cond))


__all__ = [
    "CONTROL_KIND",
    "ControlNetConfig",
    "ControlResiduals",
    "ControlSettings",
    "ControlledNetwork",
    "DiTControlNet",
    "HintEncoder",
    "UNetControlNet",
    "active_steps",
    "build_controlnet",
    "check_hint_content",
]
