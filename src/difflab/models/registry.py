"""Named model sizes, and building a network from (architecture, preset, overrides)."""

from __future__ import annotations

import dataclasses
import typing
from typing import Any

from torch import nn

from difflab.config import check_value
from difflab.errors import DifflabError
from difflab.models.dit import DiT, DiTConfig
from difflab.models.unet import UNet, UNetConfig

ARCHITECTURES: dict[str, tuple[type, type[nn.Module]]] = {
    "unet": (UNetConfig, UNet),
    "dit": (DiTConfig, DiT),
}

# 28x28 -> 14 -> 7 with two residual blocks per level and attention at 14x14 and 7x7
MNIST_LARGE_SIZES: dict[str, Any] = dict(
    base_channels=64, channel_mult=(1, 2, 2), num_res_blocks=2, attention_resolutions=(14, 7)
)

PRESETS: dict[str, tuple[str, dict[str, Any]]] = {
    # for tests: a few thousand parameters
    "unet-tiny": (
        "unet",
        dict(base_channels=8, channel_mult=(1, 2), num_res_blocks=1, attention_resolutions=(4,)),
    ),
    # for tests of cross-attention (Latent Diffusion): unet-tiny whose attention sites at 14x14
    # and in the middle are transformer blocks reading tokens of width 16
    "unet-tiny-text": (
        "unet",
        dict(
            base_channels=8,
            channel_mult=(1, 2),
            num_res_blocks=1,
            attention_resolutions=(14,),
            num_heads=2,
            context_dim=16,
        ),
    ),
    # Imagen (Saharia et al. 2022) stages on colour digits, Efficient U-Net style: pooled text in
    # the timestep embedding, cross-attention to the frozen encoder's tokens at the lowest
    # resolution and in the middle, skips scaled by 1/sqrt(2); image_size, channels and
    # context_dim come from the stage config (base 16x16 -> 8 -> 4; super-resolution
    # 32x32 -> 16 -> 8 with low_res_channels)
    "unet-imagen-base": (
        "unet",
        dict(
            base_channels=32,
            channel_mult=(1, 2, 2),
            num_res_blocks=1,
            attention_resolutions=(4,),
            head_channels=16,
            context_dim=384,
            pooled_text=True,
            skip_scale=2**-0.5,
        ),
    ),
    "unet-imagen-sr": (
        "unet",
        dict(
            base_channels=16,
            channel_mult=(1, 2, 4),
            num_res_blocks=1,
            attention_resolutions=(8,),
            head_channels=16,
            context_dim=384,
            pooled_text=True,
            skip_scale=2**-0.5,
        ),
    ),
    # the shipped MNIST model: 28x28 -> 14 -> 7, attention at 7x7
    "unet-mnist": (
        "unet",
        dict(
            base_channels=32, channel_mult=(1, 2, 2), num_res_blocks=1, attention_resolutions=(7,)
        ),
    ),
    "unet-mnist-large": ("unet", {**MNIST_LARGE_SIZES, "num_heads": 4}),
    # ADM's CIFAR-10-sized network (32x32): 128 channels, 3 resblocks, attention at 16 and 8
    "adm-32": (
        "unet",
        dict(
            image_size=32,
            in_channels=3,
            out_channels=3,
            base_channels=128,
            channel_mult=(1, 2, 2, 2),
            num_res_blocks=3,
            attention_resolutions=(16, 8),
            head_channels=64,
            dropout=0.3,
        ),
    ),
    # The class-conditional ImageNet models of "Diffusion Models Beat GANs" (Dhariwal & Nichol
    # 2021, appendix Table 10 hyperparameters, as in the released guided-diffusion flags): the
    # ablation's winners (2-3 residual blocks, attention at 32/16/8 with 64 channels per head,
    # BigGAN up/down blocks, AdaGN) and learned variances; the diffusion schedule (cosine at 64,
    # linear at 128/256) is the training config's, not the network's
    **{
        f"adm-{size}": (
            "unet",
            dict(
                image_size=size,
                in_channels=3,
                out_channels=3,
                base_channels=channels,
                channel_mult=mult,
                num_res_blocks=depth,
                attention_resolutions=(32, 16, 8),
                head_channels=64,
                dropout=dropout,
                num_classes=1000,
                learn_sigma=True,
                resblock_updown=True,
            ),
        )
        for size, (channels, depth, mult, dropout) in {
            64: (192, 3, (1, 2, 3, 4), 0.1),
            128: (256, 2, (1, 1, 2, 3, 4), 0.0),
            256: (256, 2, (1, 1, 2, 2, 4, 4), 0.0),
        }.items()
    },
    # the same choices at MNIST's scale (28 -> 14 -> 7): attention at 14 and 7 (the paper's
    # 32/16/8 of a 64-pixel image are its 1/2, 1/4 and 1/8), 64 channels per head, two residual
    # blocks per level, BigGAN up/down blocks, dropout 0.1, learned variances, 10 classes
    "adm-mnist": (
        "unet",
        {
            **MNIST_LARGE_SIZES,
            "head_channels": 64,
            "dropout": 0.1,
            "num_classes": 10,
            "learn_sigma": True,
            "resblock_updown": True,
        },
    ),
    # DiT for tests: a few tens of thousands of parameters, 49 tokens of 4x4 pixels at 28x28
    "dit-tiny": (
        "dit",
        dict(
            image_size=28,
            in_channels=1,
            out_channels=1,
            patch_size=4,
            hidden_size=32,
            depth=2,
            num_heads=2,
        ),
    ),
    # DiTs sized for MNIST on a few CPU cores, two widths x patch 7 / 4 / 2 (16 / 49 / 196 tokens);
    # head width 32 (S) and 64 (B); with data.pad_to_32=true use patch 8 / 4 / 2 instead of 7
    **{
        f"dit-mnist-{size}-{patch}": (
            "dit",
            dict(
                image_size=28,
                in_channels=1,
                out_channels=1,
                patch_size=patch,
                hidden_size=hidden,
                depth=depth,
                num_heads=heads,
            ),
        )
        for size, (hidden, depth, heads) in {"s": (128, 6, 4), "b": (256, 8, 4)}.items()
        for patch in (7, 4, 2)
    },
    # the paper's grid (Peebles & Xie 2023, Table 1): DiT-{S,B,L,XL}/{2,4,8} on a 32x32x4 input,
    # the LDM latent of a 256-pixel image; override image_size/in_channels for other inputs
    **{
        f"dit-{size}-{patch}": (
            "dit",
            dict(
                image_size=32,
                in_channels=4,
                out_channels=4,
                patch_size=patch,
                hidden_size=hidden,
                depth=depth,
                num_heads=heads,
            ),
        )
        for size, (hidden, depth, heads) in {
            "s": (384, 12, 6),
            "b": (768, 12, 12),
            "l": (1024, 24, 16),
            "xl": (1152, 28, 16),
        }.items()
        for patch in (2, 4, 8)
    },
}


def _config_class(arch: str) -> type:
    if arch not in ARCHITECTURES:
        raise DifflabError(
            f"unknown architecture {arch!r}; choose one of {', '.join(ARCHITECTURES)}."
        )
    return ARCHITECTURES[arch][0]


def _checked_fields(arch: str, values: dict[str, Any], where: str) -> dict[str, Any]:
    """``values`` type-checked against the fields of ``arch``'s config; unknown keys are named."""
    config_cls = _config_class(arch)
    hints = typing.get_type_hints(config_cls)
    names = sorted(f.name for f in dataclasses.fields(config_cls))
    unknown = sorted(set(values) - set(names))
    if unknown:
        raise DifflabError(
            f"{where}: unknown key {unknown[0]!r} for a {arch}; known keys: {', '.join(names)}."
        )
    return {key: check_value(value, hints[key], f"{where}.{key}") for key, value in values.items()}


def model_config(preset: str, **overrides: Any) -> tuple[str, Any]:
    """(architecture, config dataclass) for a preset with some fields overridden."""
    if preset not in PRESETS:
        raise DifflabError(f"unknown model preset {preset!r}; choose one of {', '.join(PRESETS)}.")
    arch, values = PRESETS[preset]
    return arch, _config_class(arch)(**{**values, **_checked_fields(arch, overrides, "model")})


def build_model(arch: str, config: Any) -> nn.Module:
    """Instantiate the network of architecture ``arch`` from its config dataclass."""
    _config_class(arch)
    return ARCHITECTURES[arch][1](config)


# Fields added after checkpoints were shipped, with the value that reproduces those checkpoints
# when their stored config lacks the field (which differs from the default for new models).
STORED_CONFIG_DEFAULTS: dict[str, dict[str, Any]] = {
    # DiT before the reference-equal options: the row-first position table and the exact GELU
    "dit": {"position_layout": "row_first", "gelu": "exact"},
}


def config_from_dict(arch: str, values: dict[str, Any]) -> Any:
    """Rebuild an architecture's config dataclass from its JSON form (as stored in a checkpoint).

    A field the JSON lacks takes the value older checkpoints were trained with
    (:data:`STORED_CONFIG_DEFAULTS`), else the dataclass default.
    """
    checked = _checked_fields(arch, values, "the checkpoint's model config")
    return _config_class(arch)(**{**STORED_CONFIG_DEFAULTS.get(arch, {}), **checked})
