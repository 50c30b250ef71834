"""difflab's ADM U-Net <-> diffusers' ``UNet2DModel`` and a DDIM scheduler, both ways, exactly.

The two networks coincide layer for layer when difflab's U-Net is written in diffusers' options:

======================================  ============================================================
difflab (``UNetConfig``)                diffusers (``UNet2DModel`` config)
======================================  ============================================================
``image_size``, ``in/out_channels``     ``sample_size``, ``in_channels``, ``out_channels``
``base_channels * channel_mult[i]``     ``block_out_channels[i]``
``num_res_blocks`` (one count for all)   ``layers_per_block`` (up levels: one more block in both)
``attention_resolutions``               ``AttnDownBlock2D`` / ``AttnUpBlock2D`` at those sizes, else
                                        ``DownBlock2D`` / ``UpBlock2D``
``head_channels`` > 0                   ``attention_head_dim = head_channels``
``num_heads = 1``                       ``attention_head_dim = None`` (one head of full width)
``num_heads = n`` > 1                   ``attention_head_dim = width / n`` (one width for all layers)
``scale_shift_norm`` True / False       ``resnet_time_scale_shift`` "scale_shift" / "default"
``dropout``                             ``dropout``
``num_classes = K``                     ``num_class_embeds = K + 1``; row K is difflab's "no label"
``prediction`` eps / x0 / v             scheduler ``prediction_type`` epsilon / sample / v_prediction
======================================  ============================================================

Options fixed on export, because they are what difflab's layers compute:
``flip_sin_to_cos = True`` and ``freq_shift = 0`` (features ``[cos, sin]`` at frequencies
``10000^(-i / (d/2))``), ``time_embedding_type = "positional"``, ``time_embedding_dim = 4 *
base_channels``, ``downsample_type = "conv"`` with ``downsample_padding = 1`` (a stride-2 3x3
convolution, not average pooling), ``upsample_type = "conv"`` (nearest x2, then 3x3),
``act_fn = "silu"``, ``norm_eps = 1e-5``, ``norm_num_groups = attn_norm_num_groups`` = the one
GroupNorm group count of the network (``attn_norm_num_groups`` is written out because diffusers
drops the middle attention's GroupNorm under "scale_shift" otherwise), ``mid_block_scale_factor =
1``, ``center_input_sample = False``, ``class_embed_type = None``.

Refused on export, each with one sentence naming the feature diffusers lacks: per-level residual
block counts that differ (``UNet2DModel.layers_per_block`` is one int; equal counts export as
it); Imagen's ``resample_first`` order (diffusers' blocks resample after their ResNets); an image side not
divisible by ``2^(levels - 1)`` (diffusers upsamples by exactly 2, difflab to the skip's size);
GroupNorms of different group counts (difflab caps groups at a layer's width, e.g. 8 groups for
8 channels, diffusers uses one count: use ``base_channels`` a multiple of 32); ``num_heads`` > 1
whose head width differs between layers (diffusers fixes the head width, not the count); a
latent-space model (a DDIMPipeline would return latents, not images).

The scheduler written is a ``DDIMScheduler`` with difflab's betas (``linear`` and
``scaled_linear`` by name and ends, ``cosine`` as ``squaredcos_cap_v2``, the same formula),
``clip_sample = False`` (difflab's Denoiser does not clip), ``set_alpha_to_one = True`` (difflab's
last step goes to clean data, ``alpha_bar = 1``), ``steps_offset = 0`` and ``timestep_spacing =
"leading"``: diffusers' DDIM steps from ``t`` to ``t - T // S``, which is the next timestep only
for "leading" (and "trailing" when S divides T), so ``difflab sample --spacing leading`` (equal to
"uniform" when S divides T) visits the same timesteps as the exported pipeline.

Import reads either a pipeline folder (``model_index.json``, ``unet/`` and ``scheduler/``) or a
bare model folder (``config.json`` + weights). The noise schedule and prediction type come from
``scheduler/scheduler_config.json``; without one, diffusers' scheduler defaults apply (linear betas
1e-4 .. 0.02 over T = 1000, epsilon prediction: DDPM's schedule) and the checkpoint records that.
Sampling options of the scheduler (``clip_sample``, ``timestep_spacing``, ``steps_offset``,
``set_alpha_to_one``, ``thresholding``) are choices of a sampling run, not of the model: they are
recorded under ``converted_from`` and not applied. A class embedding of N rows becomes N - 1
classes plus the "no label" row (what export writes; a diffusers model trained without a null
class keeps all its weights, but its last class answers to "no label"). ``flip_sin_to_cos =
False`` is imported by permuting the first time-MLP layer's inputs, and ``trained_betas`` when
they equal a named schedule. Everything else difflab cannot compute is refused with one sentence
naming every such option: e.g. DDPM's released models (``google/ddpm-*``) have ``freq_shift = 1``,
``downsample_padding = 0`` (asymmetric padding) and ``norm_eps = 1e-6``, three options difflab's
U-Net would need before they import; a mid-block attention without GroupNorm
(``"scale_shift"`` with ``attn_norm_num_groups = None``); GroupNorm group counts other than difflab's
(the largest divisor of a layer's width up to 32); attention at different resolutions down and up.

Weights are read and written as safetensors only (a U-Net's pickled ``.bin`` is refused, never
unpickled). Files go through :mod:`difflab.convert.formats`: the exported folder appears whole or
not at all (built in a temporary sibling, then renamed), the imported checkpoint is written by
:func:`~difflab.io.checkpoint.save_checkpoint` (atomic), and an existing output is refused.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import nn

from difflab.config import config_to_dict
from difflab.convert.formats import (
    DIFFUSERS_VERSION,
    PICKLED_WEIGHTS_NAME,
    WEIGHTS_NAME,
    diffusion_from_scheduler,
    json_bytes,
    read_json,
    read_model_weights,
    refuse_existing,
    safetensors_bytes,
    scheduler_config,
    write_folder_atomic,
)
from difflab.diffusion.schedule import NoiseSchedule
from difflab.errors import DifflabError
from difflab.io.checkpoint import (
    load_checkpoint,
    load_weights_strict,
    save_checkpoint,
    split_prefix,
    with_prefix,
)
from difflab.models.registry import config_from_dict
from difflab.models.unet import UNet, UNetConfig, blocks_per_level

UNET_DEFAULTS: dict[str, Any] = {
    "sample_size": None,
    "in_channels": 3,
    "out_channels": 3,
    "center_input_sample": False,
    "time_embedding_type": "positional",
    "time_embedding_dim": None,
    "freq_shift": 0,
    "flip_sin_to_cos": True,
    "down_block_types": (
        "DownBlock2D",
        "AttnDownBlock2D",
        "AttnDownBlock2D",
        "AttnDownBlock2D",
    ),
    "mid_block_type": "UNetMidBlock2D",
    "up_block_types": ("AttnUpBlock2D", "AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
    "block_out_channels": (224, 448, 672, 896),
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "downsample_padding": 1,
    "downsample_type": "conv",
    "upsample_type": "conv",
    "dropout": 0.0,
    "act_fn": "silu",
    "attention_head_dim": 8,
    "norm_num_groups": 32,
    "attn_norm_num_groups": None,
    "norm_eps": 1e-5,
    "resnet_time_scale_shift": "default",
    "add_attention": True,
    "class_embed_type": None,
    "num_class_embeds": None,
    "num_train_timesteps": None,
}
"""``UNet2DModel.__init__``'s defaults (diffusers 0.30 - 0.42): what a config.json that omits a key means."""

# UNetConfig fields this module maps; a field added later must keep its default to export
MAPPED_FIELDS = frozenset(
    {
        "image_size",
        "in_channels",
        "out_channels",
        "base_channels",
        "channel_mult",
        "num_res_blocks",
        "attention_resolutions",
        "num_heads",
        "head_channels",
        "dropout",
        "num_classes",
        "prediction",
        "scale_shift_norm",
    }
)

# diffusers options difflab's U-Net computes in one way only: (accepted values, what difflab does)
FIXED_OPTIONS: dict[str, tuple[tuple[Any, ...], str]] = {
    "center_input_sample": ((False,), "difflab's U-Net takes x_t as it is"),
    "time_embedding_type": (("positional",), "difflab embeds timesteps with sinusoids"),
    "freq_shift": ((0,), "difflab's sinusoid frequencies are 10000^(-i / (d/2)), unshifted"),
    "mid_block_type": (("UNetMidBlock2D",), "difflab's U-Net always has a middle block"),
    "add_attention": ((True,), "difflab's middle block always has attention"),
    "mid_block_scale_factor": ((1,), "difflab's residual blocks add without rescaling"),
    "downsample_padding": ((1,), "difflab downsamples with a padded stride-2 3x3 convolution"),
    "downsample_type": (("conv",), "difflab downsamples with a stride-2 3x3 convolution"),
    "upsample_type": (("conv",), "difflab upsamples by nearest x2 and a 3x3 convolution"),
    "act_fn": (("silu", "swish"), "difflab's activations are SiLU"),
    "norm_eps": ((1e-5,), "difflab's GroupNorms use eps = 1e-5"),
    "class_embed_type": ((None,), "difflab embeds class labels with a lookup table"),
    "resnet_time_scale_shift": (
        ("default", "scale_shift"),
        "difflab's residual blocks add the embedding or scale-shift the norm",
    ),
}


class DiffusersUNet(NamedTuple):
    """A diffusers UNet2DModel config read as difflab's U-Net."""

    config: UNetConfig
    flip_sin_to_cos: bool  # False: diffusers' features are [sin, cos], difflab's [cos, sin]


# ---------------------------------------------------------------------------------------------
# parameter names


def level_sizes(c: UNetConfig) -> list[int]:
    """The side (pixels) of every resolution level, ``image_size / 2^level`` (exact by the checks)."""
    return [c.image_size >> level for level in range(len(c.channel_mult))]


def parameter_names(c: UNetConfig) -> tuple[dict[str, str], dict[str, str]]:
    """How difflab's module paths are called in diffusers' ``UNet2DModel``.

    Returns:
        layers: difflab leaf module -> diffusers leaf module; their ``weight`` / ``bias`` agree.
        attentions: difflab attention module -> diffusers ``Attention`` module; difflab's packed
            ``qkv`` (3C, C) is diffusers' ``to_q``, ``to_k``, ``to_v`` (C, C) stacked, ``proj``
            is ``to_out.0`` and ``norm`` is ``group_norm``.
    """
    layers = {
        "time_embed.mlp.0": "time_embedding.linear_1",
        "time_embed.mlp.2": "time_embedding.linear_2",
        "label_embed": "class_embedding",
        "conv_in": "conv_in",
        "norm_out": "conv_norm_out",
        "conv_out": "conv_out",
    }
    attentions: dict[str, str] = {}

    def resblock(ours: str, theirs: str) -> None:
        for a, b in (
            ("norm_in", "norm1"),
            ("conv_in", "conv1"),
            ("emb_proj", "time_emb_proj"),
            ("norm_out", "norm2"),
            ("conv_out", "conv2"),
            ("skip", "conv_shortcut"),  # only when the width changes
        ):
            layers[f"{ours}.{a}"] = f"{theirs}.{b}"

    sizes, levels, counts = level_sizes(c), len(c.channel_mult), blocks_per_level(c)
    item = 0  # difflab's down_blocks is one flat list: (ResBlock, attention) items and Downsamples
    for level in range(levels):
        for j in range(counts[level]):
            resblock(f"down_blocks.{item}.0", f"down_blocks.{level}.resnets.{j}")
            if sizes[level] in c.attention_resolutions:
                attentions[f"down_blocks.{item}.1"] = f"down_blocks.{level}.attentions.{j}"
            item += 1
        if level < levels - 1:
            layers[f"down_blocks.{item}.conv"] = f"down_blocks.{level}.downsamplers.0.conv"
            item += 1
    resblock("mid_block1", "mid_block.resnets.0")
    attentions["mid_attention"] = "mid_block.attentions.0"
    resblock("mid_block2", "mid_block.resnets.1")
    item = 0  # up_blocks: (ResBlock, attention, Upsample) items, deepest level first
    for i, level in enumerate(reversed(range(levels))):
        for j in range(counts[level] + 1):
            resblock(f"up_blocks.{item}.0", f"up_blocks.{i}.resnets.{j}")
            if sizes[level] in c.attention_resolutions:
                attentions[f"up_blocks.{item}.1"] = f"up_blocks.{i}.attentions.{j}"
            if level > 0 and j == counts[level]:
                layers[f"up_blocks.{item}.2.conv"] = f"up_blocks.{i}.upsamplers.0.conv"
            item += 1
    for ours, theirs in attentions.items():
        layers[f"{ours}.norm"] = f"{theirs}.group_norm"
        layers[f"{ours}.proj"] = f"{theirs}.to_out.0"
    return layers, attentions


QKV = ("to_q", "to_k", "to_v")


def diffusers_state_dict(
    c: UNetConfig, weights: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """difflab U-Net weights -> ``UNet2DModel`` weights (same tensors, renamed; qkv split in 3)."""
    layers, attentions = parameter_names(c)
    out: dict[str, torch.Tensor] = {}
    for key, value in weights.items():
        module, param = key.rsplit(".", 1)
        if module.endswith(".qkv") and module[: -len(".qkv")] in attentions:
            theirs = attentions[module[: -len(".qkv")]]
            for name, part in zip(QKV, value.chunk(3, dim=0), strict=True):  # (C, C) or (C,)
                out[f"{theirs}.{name}.{param}"] = part.contiguous()
        elif module in layers:
            out[f"{layers[module]}.{param}"] = value
        else:  # the U-Net grew a layer this module does not know
            raise DifflabError(
                f"the U-Net parameter {key!r} has no diffusers counterpart in difflab.convert.unet; "
                "this difflab version cannot export this network."
            )
    return out


def difflab_state_dict(
    model: DiffusersUNet, weights: dict[str, torch.Tensor], where: Path
) -> dict[str, torch.Tensor]:
    """``UNet2DModel`` weights -> difflab U-Net weights; every tensor used exactly once."""
    c = model.config
    layers, attentions = parameter_names(c)
    with torch.device("meta"):
        expected = UNet(c).state_dict()  # names and shapes only, no memory
    out: dict[str, torch.Tensor] = {}
    used: set[str] = set()

    def take(key: str) -> torch.Tensor:
        if key not in weights:
            raise DifflabError(
                f"{where} lacks the tensor {key!r} that its config.json implies; the weights do "
                "not belong to this config, so re-save the model with diffusers."
            )
        used.add(key)
        return weights[key]

    for key in expected:
        module, param = key.rsplit(".", 1)
        if module.endswith(".qkv") and module[: -len(".qkv")] in attentions:
            theirs = attentions[module[: -len(".qkv")]]
            out[key] = torch.cat([take(f"{theirs}.{name}.{param}") for name in QKV], dim=0)
        else:
            out[key] = take(f"{layers[module]}.{param}")
    extra = sorted(set(weights) - used)
    if extra:
        raise DifflabError(
            f"{where} holds {len(extra)} tensor(s) difflab's U-Net has no place for (e.g. "
            f"{extra[0]!r}); the weights do not belong to this config, so re-save the model with diffusers."
        )
    if not model.flip_sin_to_cos:  # diffusers' features [sin, cos] -> difflab's [cos, sin]
        w = out["time_embed.mlp.0.weight"]  # (E, base_channels)
        out["time_embed.mlp.0.weight"] = w.roll(w.shape[1] // 2, dims=1)
    for key, value in out.items():
        if value.shape != expected[key].shape:
            raise DifflabError(
                f"{where}: a tensor for {key!r} has shape {tuple(value.shape)} where the config "
                f"implies {tuple(expected[key].shape)}; re-save the model with diffusers."
            )
    return out


# ---------------------------------------------------------------------------------------------
# configs


def norm_groups(c: UNetConfig) -> set[tuple[int, float]]:
    """The (groups, eps) pairs of all GroupNorms of difflab's U-Net of config ``c``."""
    with torch.device("meta"):
        net = UNet(c)
    return {(m.num_groups, m.eps) for m in net.modules() if isinstance(m, nn.GroupNorm)}


def diffusers_unet_config(c: UNetConfig) -> dict[str, Any]:
    """The ``UNet2DModel`` config.json of difflab's U-Net ``c``, or a DifflabError naming the
    feature diffusers lacks (see the module docstring)."""
    for f in dataclasses.fields(c):
        if f.name not in MAPPED_FIELDS and getattr(c, f.name) != f.default:
            raise DifflabError(
                f"the U-Net option {f.name}={getattr(c, f.name)!r} has no diffusers UNet2DModel "
                "counterpart, so this model cannot be exported."
            )
    counts = set(blocks_per_level(c))
    if len(counts) > 1:
        raise DifflabError(
            f"this U-Net has per-level residual block counts num_res_blocks={c.num_res_blocks!r} "
            "but diffusers' UNet2DModel has one layers_per_block for all levels, so it cannot be "
            "exported: use one count."
        )
    levels = len(c.channel_mult)
    if c.image_size % 2 ** (levels - 1):
        raise DifflabError(
            f"diffusers' UNet2DModel upsamples by exactly 2, so a {levels}-level U-Net's image "
            f"side must be divisible by {2 ** (levels - 1)}, but it is {c.image_size} (difflab "
            "upsamples to the skip's size); this model cannot be exported."
        )
    groups = norm_groups(c)
    if len(groups) > 1:
        counts = ", ".join(str(g) for g in sorted({g for g, _ in groups}))
        raise DifflabError(
            f"this U-Net's GroupNorms have {counts} groups (difflab caps groups at a layer's "
            "width) but diffusers' UNet2DModel uses one norm_num_groups for all, so it cannot be "
            "exported: use base_channels a multiple of 32."
        )
    (num_groups, eps) = groups.pop()
    sizes = level_sizes(c)
    widths = [c.base_channels * m for m in c.channel_mult]
    attends = [size in c.attention_resolutions for size in sizes]
    head_dim: int | None = c.head_channels if c.head_channels > 0 else None
    if head_dim is None and c.num_heads > 1:
        attention_widths = {w for w, a in zip(widths, attends, strict=True) if a} | {widths[-1]}
        head_dims = sorted({w // c.num_heads for w in attention_widths})
        if len(head_dims) > 1:
            raise DifflabError(
                f"with num_heads={c.num_heads} this U-Net's attention heads are "
                f"{' and '.join(map(str, head_dims))} channels wide at different levels, but "
                "diffusers' UNet2DModel has one head width (attention_head_dim) for all, so it "
                "cannot be exported: use head_channels instead of num_heads."
            )
        head_dim = head_dims[0]
    return {
        "_class_name": "UNet2DModel",
        "_diffusers_version": DIFFUSERS_VERSION,
        "sample_size": c.image_size,
        "in_channels": c.in_channels,
        "out_channels": c.out_channels,
        "center_input_sample": False,
        "time_embedding_type": "positional",
        "time_embedding_dim": None,  # = 4 * block_out_channels[0], difflab's width
        "freq_shift": 0,
        "flip_sin_to_cos": True,  # difflab's features are [cos, sin]
        "down_block_types": ["AttnDownBlock2D" if a else "DownBlock2D" for a in attends],
        "mid_block_type": "UNetMidBlock2D",
        "up_block_types": ["AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attends)],
        "block_out_channels": widths,
        "layers_per_block": counts.pop(),
        "mid_block_scale_factor": 1,
        "downsample_padding": 1,
        "downsample_type": "conv",
        "upsample_type": "conv",
        "dropout": c.dropout,
        "act_fn": "silu",
        "attention_head_dim": head_dim,  # None: one head as wide as the layer
        "norm_num_groups": num_groups,
        "attn_norm_num_groups": num_groups,  # else "scale_shift" drops the middle attention's norm
        "norm_eps": eps,
        "resnet_time_scale_shift": "scale_shift" if c.scale_shift_norm else "default",
        "add_attention": True,
        "class_embed_type": None,
        "num_class_embeds": c.num_classes + 1 if c.num_classes > 0 else None,
        "num_train_timesteps": None,
    }


def _refuse_option(where: Path, name: str, value: Any, why: str, accepted: str) -> DifflabError:
    return DifflabError(
        f"{where}: UNet2DModel option {name}={value!r} cannot be imported ({why}); difflab's "
        f"U-Net represents only {accepted}."
    )


def unet_config_from_diffusers(raw: dict[str, Any], prediction: str, where: Path) -> DiffusersUNet:
    """Read a ``UNet2DModel`` config.json as difflab's U-Net, or refuse naming the option."""
    name = raw.get("_class_name", "UNet2DModel")
    if name != "UNet2DModel":
        raise DifflabError(
            f"{where} describes a {name}, but difflab imports only a UNet2DModel (a pixel-space "
            "U-Net without cross-attention)."
        )
    for key, value in raw.items():
        if not key.startswith("_") and key not in UNET_DEFAULTS and value not in (None, False):
            raise DifflabError(
                f"{where}: UNet2DModel option {key}={value!r} is unknown to difflab (it reads "
                "diffusers 0.30 - 0.42 configs), so the model cannot be imported."
            )
    o = {**UNET_DEFAULTS, **{k: v for k, v in raw.items() if k in UNET_DEFAULTS}}
    unfit = [
        f"{key}={o[key]!r} ({why}; only {' or '.join(map(repr, accepted))})"
        for key, (accepted, why) in FIXED_OPTIONS.items()
        if not (
            any(math.isclose(o[key], a, rel_tol=1e-6) for a in accepted)
            if isinstance(o[key], float)
            else o[key] in accepted
        )
    ]
    if unfit:  # all at once: DDPM's released models differ in three
        raise DifflabError(
            f"{where}: UNet2DModel option{'s' if len(unfit) > 1 else ''} {', '.join(unfit)} "
            "cannot be imported into difflab's U-Net."
        )
    widths = [int(w) for w in o["block_out_channels"]]
    base = widths[0]
    if any(w % base for w in widths):
        raise _refuse_option(
            where,
            "block_out_channels",
            widths,
            "difflab sizes level i as base_channels * channel_mult[i]",
            "widths that are multiples of the first",
        )
    if o["time_embedding_dim"] not in (None, 4 * base):
        raise _refuse_option(
            where,
            "time_embedding_dim",
            o["time_embedding_dim"],
            "difflab's embedding is 4 * block_out_channels[0] wide",
            f"None or {4 * base}",
        )
    size = o["sample_size"]
    if isinstance(size, (list, tuple)):
        if len(size) != 2 or size[0] != size[1]:
            raise _refuse_option(
                where, "sample_size", size, "difflab's U-Net is sized for square images", "a side"
            )
        size = size[0]
    if not isinstance(size, int):
        raise _refuse_option(
            where, "sample_size", size, "difflab needs the image size", "an integer side"
        )
    levels = len(widths)
    if size % 2 ** (levels - 1):
        raise _refuse_option(
            where,
            "sample_size",
            size,
            "diffusers upsamples by exactly 2 and could not run it either",
            f"a side divisible by {2 ** (levels - 1)}",
        )
    down = [t.removeprefix("UNetRes") for t in o["down_block_types"]]
    up = [t.removeprefix("UNetRes") for t in o["up_block_types"]]
    for kind, types, plain in (("down_block_types", down, "Down"), ("up_block_types", up, "Up")):
        allowed = (f"{plain}Block2D", f"Attn{plain}Block2D")
        if len(types) != levels or any(t not in allowed for t in types):
            raise _refuse_option(
                where,
                kind,
                list(o[kind]),
                "difflab's levels are residual blocks with optional self-attention",
                f"one of {' / '.join(allowed)} per entry of block_out_channels",
            )
    attends = [t.startswith("Attn") for t in down]
    if [t.startswith("Attn") for t in reversed(up)] != attends:
        raise _refuse_option(
            where,
            "up_block_types",
            list(o["up_block_types"]),
            "difflab attends at the same resolutions on the way down and up",
            f"the mirror of down_block_types {list(o['down_block_types'])}",
        )
    sizes = [size >> level for level in range(levels)]
    head_dim = o["attention_head_dim"]
    attention_widths = {w for w, a in zip(widths, attends, strict=True) if a} | {widths[-1]}
    if head_dim is not None and any(w % head_dim for w in attention_widths):
        raise _refuse_option(
            where,
            "attention_head_dim",
            head_dim,
            f"it does not divide the attention widths {sorted(attention_widths)}",
            "head widths that divide every attention layer",
        )
    num_class_embeds = o["num_class_embeds"]
    if num_class_embeds is not None and num_class_embeds < 2:
        raise _refuse_option(
            where,
            "num_class_embeds",
            num_class_embeds,
            "difflab reserves the last row for 'no label'",
            "at least 2 rows",
        )
    config = UNetConfig(
        image_size=size,
        in_channels=int(o["in_channels"]),
        out_channels=int(o["out_channels"]),
        base_channels=base,
        channel_mult=tuple(w // base for w in widths),
        num_res_blocks=int(o["layers_per_block"]),
        attention_resolutions=tuple(s for s, a in zip(sizes, attends, strict=True) if a),
        num_heads=1,
        head_channels=int(head_dim) if head_dim is not None else 0,
        dropout=float(o["dropout"]),
        num_classes=num_class_embeds - 1 if num_class_embeds else 0,
        prediction=prediction,
        scale_shift_norm=o["resnet_time_scale_shift"] == "scale_shift",
    )
    mid_groups = o["attn_norm_num_groups"]
    if mid_groups is None and o["resnet_time_scale_shift"] == "default":
        mid_groups = o["norm_num_groups"]
    if mid_groups != o["norm_num_groups"]:
        raise _refuse_option(
            where,
            "attn_norm_num_groups",
            o["attn_norm_num_groups"],
            "difflab's middle attention has a GroupNorm like every other layer",
            f"{o['norm_num_groups']} (= norm_num_groups)",
        )
    groups = {g for g, _ in norm_groups(config)}
    if groups != {o["norm_num_groups"]}:
        raise _refuse_option(
            where,
            "norm_num_groups",
            o["norm_num_groups"],
            f"difflab caps a layer's groups at its width, giving {sorted(groups)} groups here",
            "group counts that divide every width up to 32",
        )
    return DiffusersUNet(config, bool(o["flip_sin_to_cos"]))


def without_trained_betas(raw: dict[str, Any], where: Path) -> dict[str, Any]:
    """A scheduler config whose ``trained_betas`` are replaced by the named schedule they equal.

    difflab's checkpoints name their schedule; betas listed one by one are accepted when they
    are (to float32 precision) linear or scaled_linear between their ends, or cosine.
    """
    if raw.get("trained_betas") is None:
        return raw
    betas = torch.tensor(raw["trained_betas"], dtype=torch.float64)  # (T,)
    ends = {"beta_start": float(betas[0]), "beta_end": float(betas[-1])}
    for named in (
        {"beta_schedule": "linear", **ends},
        {"beta_schedule": "scaled_linear", **ends},
        {"beta_schedule": "squaredcos_cap_v2"},
    ):
        candidate = {**raw, **named, "trained_betas": None, "num_train_timesteps": len(betas)}
        diffusion, _ = diffusion_from_scheduler(candidate, where)
        schedule = NoiseSchedule.from_name(
            diffusion["schedule"], len(betas), diffusion["beta_start"], diffusion["beta_end"]
        )
        if torch.allclose(schedule.betas, betas, rtol=1e-5, atol=1e-9):
            return candidate
    raise DifflabError(
        f"{where}: the scheduler's trained_betas are none of difflab's named schedules (linear, "
        "scaled_linear, cosine), which are all a difflab checkpoint can record."
    )


# ---------------------------------------------------------------------------------------------
# the two conversions


def export_unet_to_diffusers(checkpoint: Path, out_dir: Path) -> None:
    """Write the U-Net of a ``kind: diffusion`` checkpoint as a diffusers ``DDIMPipeline`` folder.

    ``out_dir`` gets ``model_index.json``, ``unet/config.json`` + ``unet/{WEIGHTS_NAME}`` (float32,
    EMA weights when the checkpoint has them) and ``scheduler/scheduler_config.json``; see the
    module docstring for the options written and the models refused. Load it with
    ``DDIMPipeline.from_pretrained(out_dir)`` (unconditional) or
    ``UNet2DModel.from_pretrained(out_dir, subfolder="unet")`` with ``class_labels`` (class-
    conditional; label ``num_classes`` is "no label"). An existing ``out_dir`` is refused.
    """
    checkpoint, out_dir = Path(checkpoint), Path(out_dir)
    refuse_existing(out_dir)
    tensors, meta = load_checkpoint(checkpoint, kind="diffusion")
    for key in ("arch", "model", "diffusion"):
        if key not in meta:
            raise DifflabError(
                f"{checkpoint} lacks the {key!r} entry of a diffusion checkpoint; re-export it with difflab."
            )
    if meta["arch"] != "unet":
        raise DifflabError(
            f"{checkpoint} holds a {meta['arch']!r} network, not a U-Net; the U-Net exporter "
            "converts unet-* models only."
        )
    if meta.get("autoencoder") or (meta.get("experiment") or {}).get("autoencoder"):
        raise DifflabError(
            f"{checkpoint} is a latent diffusion model, whose DDIMPipeline would return latents "
            "rather than images, so it cannot be exported as a pixel pipeline."
        )
    config = config_from_dict("unet", meta["model"])
    unet_config = diffusers_unet_config(config)  # refuses what diffusers lacks, before any work
    scheduler = scheduler_config(meta["diffusion"], config.prediction)
    net = UNet(config)
    weights = split_prefix(tensors, "ema") or split_prefix(tensors, "model")
    load_weights_strict(net, weights, checkpoint)  # names and shapes checked, cast to float32
    state = diffusers_state_dict(config, net.state_dict())
    model_index = {
        "_class_name": "DDIMPipeline",
        "_diffusers_version": DIFFUSERS_VERSION,
        "scheduler": ["diffusers", "DDIMScheduler"],
        "unet": ["diffusers", "UNet2DModel"],
    }
    write_folder_atomic(
        out_dir,
        {
            "model_index.json": json_bytes(model_index),
            "unet/config.json": json_bytes(unet_config),
            f"unet/{WEIGHTS_NAME}": safetensors_bytes(state),
            "scheduler/scheduler_config.json": json_bytes(scheduler),
        },
    )


def import_diffusers_unet(folder: Path, out: Path) -> None:
    """Write a diffusers ``UNet2DModel`` (pipeline or bare model folder) as a difflab checkpoint.

    ``folder`` is a pipeline folder (``unet/`` and ``scheduler/``, e.g. a saved DDIMPipeline or
    DDPMPipeline) or a bare model folder (``config.json`` and weights), whose schedule is then
    diffusers' default (linear 1e-4 .. 0.02, T = 1000, epsilon). ``out`` (.safetensors) is a
    ``kind: diffusion`` checkpoint with the weights under ``model.``; ``difflab sample`` and
    :func:`~difflab.pipelines.load_pipeline` read it. An existing ``out`` is refused.
    """
    folder, out = Path(folder), Path(out)
    if out.suffix != ".safetensors":
        raise DifflabError(f"the output {out} must end in .safetensors.")
    refuse_existing(out)
    if not folder.is_dir():
        raise DifflabError(
            f"{folder} is not a folder; give a diffusers pipeline folder (with unet/ and "
            "scheduler/) or a UNet2DModel folder (with config.json)."
        )
    model_dir = folder / "unet" if (folder / "unet" / "config.json").is_file() else folder
    if not (model_dir / "config.json").is_file():
        raise DifflabError(
            f"{folder} has neither unet/config.json nor config.json; give a diffusers pipeline "
            "folder or a UNet2DModel folder."
        )
    scheduler_path = folder / "scheduler" / "scheduler_config.json"
    scheduler: dict[str, Any] = {}
    if model_dir != folder and scheduler_path.is_file():
        scheduler = read_json(scheduler_path)
    named = without_trained_betas(scheduler, scheduler_path)
    diffusion, prediction = diffusion_from_scheduler(named, scheduler_path)
    model = unet_config_from_diffusers(
        read_json(model_dir / "config.json"), prediction, model_dir / "config.json"
    )
    has_safetensors = (model_dir / WEIGHTS_NAME).is_file() or (
        model_dir / f"{WEIGHTS_NAME}.index.json"
    ).is_file()
    if not has_safetensors and (model_dir / PICKLED_WEIGHTS_NAME).is_file():
        raise DifflabError(
            f"{model_dir} holds only the pickled {PICKLED_WEIGHTS_NAME}, which difflab never "
            "unpickles for a U-Net; re-save the model with save_pretrained(..., "
            "safe_serialization=True)."
        )
    state = difflab_state_dict(model, read_model_weights(model_dir), model_dir)
    net = UNet(model.config)
    load_weights_strict(net, state, model_dir)  # casts to float32
    c = model.config
    sampling_options = (
        "clip_sample",
        "clip_sample_range",
        "set_alpha_to_one",
        "steps_offset",
        "timestep_spacing",
        "thresholding",
    )
    meta = {
        "kind": "diffusion",
        "arch": "unet",
        "model": config_to_dict(c),
        "diffusion": diffusion,
        "data": {
            "name": "diffusers",
            "image_size": c.image_size,
            "channels": c.in_channels,
            "class_names": [str(i) for i in range(c.num_classes)],
        },
        "converted_from": {
            "format": "diffusers",
            "folder": str(folder),
            "scheduler": scheduler.get("_class_name", "none (diffusers' defaults)"),
            "sampling_options": {k: scheduler[k] for k in sampling_options if k in scheduler},
        },
    }
    save_checkpoint(out, with_prefix(net.state_dict(), "model"), meta)
