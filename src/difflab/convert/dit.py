"""DiT weights between difflab, the reference code and diffusers, tensor by tensor.

Three layouts of the same network (Peebles & Xie 2023, sec. 3.2 and Figure 3):

* difflab's :class:`~difflab.models.dit.DiT` (``DiT.state_dict()``);
* the reference code, facebookresearch/DiT ``models.py`` (the state dicts of its released
  ``DiT-XL-2-256x256.pt`` / ``DiT-XL-2-512x512.pt`` and of its ``train.py`` checkpoints' ``"ema"``);
* diffusers' ``DiTTransformer2DModel`` (``transformer/diffusion_pytorch_model.safetensors``).

===========================================  ====================================  =====================================================
difflab                                      reference                             diffusers (``transformer_blocks.{i}.`` = ``tb.{i}.``)
===========================================  ====================================  =====================================================
``patch_embed.*`` (D, C, p, p)               ``x_embedder.proj.*``                 ``pos_embed.proj.*``
(fixed, not stored)                          ``pos_embed`` (1, T, D)               (fixed, not stored)
``time_embed.mlp.{0,2}.*``                   ``t_embedder.mlp.{0,2}.*``            ``tb.{i}.norm1.emb.timestep_embedder.linear_{1,2}.*``
``label_embed.weight`` (K + 1, D)            ``y_embedder.embedding_table.*``      ``tb.{i}.norm1.emb.class_embedder.embedding_table.*``
``blocks.{i}.modulation.linear.*`` (6D, D)   ``blocks.{i}.adaLN_modulation.1.*``   ``tb.{i}.norm1.linear.*``
``blocks.{i}.qkv.*`` (3D, D)                 ``blocks.{i}.attn.qkv.*``             ``tb.{i}.attn1.to_{q,k,v}.*`` (its thirds)
``blocks.{i}.proj.*``                        ``blocks.{i}.attn.proj.*``            ``tb.{i}.attn1.to_out.0.*``
``blocks.{i}.mlp.{0,2}.*``                   ``blocks.{i}.mlp.fc{1,2}.*``          ``tb.{i}.ff.net.0.proj.*``, ``tb.{i}.ff.net.2.*``
``final_layer.modulation.linear.*`` (2D, D)  ``final_layer.adaLN_modulation.1.*``  ``proj_out_1.*``
``final_layer.linear.*`` (p p C', D)         ``final_layer.linear.*``              ``proj_out_2.*``
===========================================  ====================================  =====================================================

The six adaLN-Zero chunks are (shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp)
and the final layer's two (shift, scale) in all three; the qkv rows are (q, k, v), each split
into heads of D / heads contiguous rows; unpatchify reads a token as (p_row, p_col, channel).
diffusers gives every block its own copy of the timestep and class embedders and uses block 0's
for the final layer; difflab and the reference have one, so import checks that the copies agree.

What differs between the three forwards, and which difflab option reproduces each:

* position table: the reference's and diffusers' ``get_2d_sincos_pos_embed`` put the column
  encoding first (``position_layout="reference"``); difflab's first checkpoints put the row first
  (``"row_first"``), the same network with its hidden channels' halves swapped
  (:func:`row_first_to_reference`);
* MLP activation: tanh GELU in the reference, ``activation_fn`` in diffusers (``gelu="tanh"`` /
  ``"exact"``);
* timestep features: ``10000^(-i / 128)`` in the reference (``timestep_freq_shift=0``),
  ``10000^(-i / 127)`` in diffusers, whose ``CombinedTimestepLabelEmbeddings`` fixes
  ``downscale_freq_shift=1`` (``timestep_freq_shift=1``). No weights turn one into the other: a
  difflab model with shift 0 runs in diffusers only approximately (see
  :func:`diffusers_from_difflab`);
* LayerNorm eps: 1e-6 everywhere in the reference and difflab; diffusers uses ``norm_eps``
  (default 1e-5) before the MLP, which import accepts from 1e-6 to 1e-5 (at 1e-5 the forwards
  differ by 3e-6 relative, float32 rounding; see :data:`NORM_EPS_TOLERANCE`).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch

from difflab.config import config_to_dict
from difflab.convert.formats import (
    DIFFUSERS_VERSION,
    REFERENCE_DIFFUSION,
    WEIGHTS_NAME,
    detect_source,
    diffusion_from_scheduler,
    json_bytes,
    read_json,
    read_model_weights,
    read_state_dict,
    refuse_existing,
    safetensors_bytes,
    scheduler_config,
    write_folder_atomic,
)
from difflab.errors import DifflabError
from difflab.io.checkpoint import (
    load_checkpoint,
    load_weights_strict,
    save_checkpoint,
    split_prefix,
    with_prefix,
)
from difflab.models.dit import DiT, DiTConfig, sincos_position_embedding
from difflab.models.registry import PRESETS, config_from_dict, model_config

LAYER_NORM_EPS = 1e-6
"""eps of every LayerNorm of difflab's DiT and of the reference code."""

NORM_EPS_TOLERANCE = 1e-5
"""diffusers ``norm_eps`` values accepted on import besides 1e-6: up to this one (its default),
whose effect on a pre-MLP LayerNorm of unit-variance tokens is ``~(1e-5 - 1e-6) / 2``, about
5e-6 relative (measured on the forward in tests/convert/test_dit_convert.py)."""

REFERENCE_HEADS: dict[tuple[int, int], int] = {
    (12, 384): 6,
    (12, 768): 12,
    (24, 1024): 16,
    (28, 1152): 16,
}
"""(depth, hidden size) -> heads of the reference code's DiT-S/B/L/XL (Table 1), the only
sizes its ``DiT_models`` defines; any other size needs ``num_heads`` or a preset."""

REFERENCE_NULL_ROWS = 1
"""The reference's class table has ``num_classes + 1`` rows (``class_dropout_prob > 0``)."""


# ----------------------------------------------------------------------------- names


def _per_block(depth: int, pairs: dict[str, str]) -> dict[str, str]:
    return {
        f"blocks.{i}.{ours}": theirs.format(i=i)
        for i in range(depth)
        for ours, theirs in pairs.items()
    }


def reference_names(depth: int, conditional: bool = True) -> dict[str, str]:
    """difflab state-dict key -> reference key, for every stored tensor (not ``pos_embed``)."""
    names = {
        "patch_embed.weight": "x_embedder.proj.weight",
        "patch_embed.bias": "x_embedder.proj.bias",
        "time_embed.mlp.0.weight": "t_embedder.mlp.0.weight",
        "time_embed.mlp.0.bias": "t_embedder.mlp.0.bias",
        "time_embed.mlp.2.weight": "t_embedder.mlp.2.weight",
        "time_embed.mlp.2.bias": "t_embedder.mlp.2.bias",
        "final_layer.modulation.linear.weight": "final_layer.adaLN_modulation.1.weight",
        "final_layer.modulation.linear.bias": "final_layer.adaLN_modulation.1.bias",
        "final_layer.linear.weight": "final_layer.linear.weight",
        "final_layer.linear.bias": "final_layer.linear.bias",
    }
    if conditional:
        names["label_embed.weight"] = "y_embedder.embedding_table.weight"
    block = {
        "qkv": "attn.qkv",
        "proj": "attn.proj",
        "mlp.0": "mlp.fc1",
        "mlp.2": "mlp.fc2",
        "modulation.linear": "adaLN_modulation.1",
    }
    pairs = {
        f"{ours}.{kind}": f"blocks.{{i}}.{theirs}.{kind}"
        for ours, theirs in block.items()
        for kind in ("weight", "bias")
    }
    return {**names, **_per_block(depth, pairs)}


def diffusers_names(depth: int) -> dict[str, str]:
    """difflab key -> diffusers key, except qkv (three tensors) and the shared embedders."""
    names = {
        "patch_embed.weight": "pos_embed.proj.weight",
        "patch_embed.bias": "pos_embed.proj.bias",
        "final_layer.modulation.linear.weight": "proj_out_1.weight",
        "final_layer.modulation.linear.bias": "proj_out_1.bias",
        "final_layer.linear.weight": "proj_out_2.weight",
        "final_layer.linear.bias": "proj_out_2.bias",
    }
    block = {
        "proj": "attn1.to_out.0",
        "mlp.0": "ff.net.0.proj",
        "mlp.2": "ff.net.2",
        "modulation.linear": "norm1.linear",
    }
    pairs = {
        f"{ours}.{kind}": f"transformer_blocks.{{i}}.{theirs}.{kind}"
        for ours, theirs in block.items()
        for kind in ("weight", "bias")
    }
    return {**names, **_per_block(depth, pairs)}


EMBEDDER_NAMES = {
    "time_embed.mlp.0.weight": "norm1.emb.timestep_embedder.linear_1.weight",
    "time_embed.mlp.0.bias": "norm1.emb.timestep_embedder.linear_1.bias",
    "time_embed.mlp.2.weight": "norm1.emb.timestep_embedder.linear_2.weight",
    "time_embed.mlp.2.bias": "norm1.emb.timestep_embedder.linear_2.bias",
    "label_embed.weight": "norm1.emb.class_embedder.embedding_table.weight",
}
"""difflab key -> diffusers key inside ``transformer_blocks.{i}.`` (one copy per block)."""


# ----------------------------------------------------------------------------- checks


def _expected_shapes(config: DiTConfig) -> dict[str, torch.Size]:
    with torch.device("meta"):
        return {k: v.shape for k, v in DiT(config).state_dict().items()}


def _mapped(
    source: dict[str, torch.Tensor], names: dict[str, str], config: DiTConfig, where: Path | str
) -> dict[str, torch.Tensor]:
    """``{ours: source[theirs]}``; a missing tensor or a shape that ``config`` rules out is named."""
    expected = _expected_shapes(config)
    weights = {}
    for ours, theirs in names.items():
        if theirs not in source:
            raise DifflabError(
                f"{where}: tensor {theirs!r} is missing; the file is not a whole DiT."
            )
        value = source[theirs]
        if tuple(value.shape) != tuple(expected[ours]):
            raise DifflabError(
                f"{where}: tensor {theirs!r} has shape {tuple(value.shape)} but a DiT of the "
                f"inferred sizes needs {tuple(expected[ours])}; check --preset / --num-heads."
            )
        weights[ours] = value
    missing = sorted(set(expected) - set(weights))
    if missing:  # a difflab key this format does not map: a bug here, not the user's input
        raise AssertionError(f"unmapped DiT tensors: {missing}")
    return weights


def _refuse_extra(
    source: dict[str, torch.Tensor], known: set[str], where: Path | str, what: str
) -> None:
    extra = sorted(set(source) - known)
    if extra:
        raise DifflabError(
            f"{where}: {len(extra)} tensors are not part of a {what} (e.g. {extra[0]!r}); give "
            "the model's own state dict."
        )


def _shape_of(
    source: dict[str, torch.Tensor], key: str, ndim: int, where: Path | str
) -> tuple[int, ...]:
    if key not in source:
        raise DifflabError(f"{where}: tensor {key!r} is missing; the file is not a whole DiT.")
    shape = tuple(source[key].shape)
    if len(shape) != ndim:
        raise DifflabError(f"{where}: tensor {key!r} has shape {shape}, not a {ndim}-D tensor.")
    return shape


def _count_blocks(source: dict[str, torch.Tensor], template: str) -> int:
    depth = 0
    while template.format(i=depth) in source:
        depth += 1
    return depth


def _heads(
    depth: int, hidden: int, num_heads: int | None, preset: str | None, where: Path | str
) -> tuple[int, dict[str, Any]]:
    """(heads, the preset's values): from ``num_heads``, else ``preset``, else Table 1."""
    values: dict[str, Any] = {}
    if preset is not None:
        arch, config = model_config(preset)
        if arch != "dit":
            raise DifflabError(f"--preset {preset} is a {arch}, not a DiT; choose a dit-* preset.")
        values = dataclasses.asdict(config)
        for name, found in (("depth", depth), ("hidden_size", hidden)):
            if values[name] != found:
                raise DifflabError(
                    f"{where}: the weights have {name} {found} but preset {preset} has "
                    f"{values[name]}; choose the preset of this model (see `difflab info --presets`)."
                )
    if num_heads is not None:
        return num_heads, values
    if preset is not None:
        return values["num_heads"], values
    if (depth, hidden) in REFERENCE_HEADS:
        return REFERENCE_HEADS[(depth, hidden)], values
    sizes = ", ".join(name for name, (arch, _) in PRESETS.items() if arch == "dit")
    raise DifflabError(
        f"{where}: a DiT of depth {depth} and width {hidden} is none of the paper's sizes, so its "
        f"number of heads is unknown; give --num-heads N or --preset NAME (one of {sizes})."
    )


def _build_config(values: dict[str, Any], where: Path | str) -> DiTConfig:
    try:
        config = DiTConfig(**values)
        with torch.device("meta"):  # construction checks the config
            DiT(config)
    except DifflabError as error:
        raise DifflabError(f"{where}: the inferred model is inconsistent: {error}") from None
    return config


# ----------------------------------------------------------------------------- reference


def difflab_from_reference(
    state: dict[str, torch.Tensor],
    *,
    num_heads: int | None = None,
    preset: str | None = None,
    where: Path | str = "the state dict",
) -> tuple[DiTConfig, dict[str, torch.Tensor]]:
    """(config, difflab weights) of a reference-code DiT state dict.

    Sizes come from the tensors: hidden size D, input channels C and patch p from
    ``x_embedder.proj.weight`` (D, C, p, p); depth from the ``blocks.{i}``; the MLP ratio from
    ``mlp.fc1``; classes from ``y_embedder.embedding_table`` (K + 1 rows, the last the null
    class); ``learn_sigma`` when the final layer makes 2C channels per pixel; the grid (and so the
    image size) and the position layout from ``pos_embed`` (1, T, D). Heads come from
    ``num_heads``, else ``preset``, else the paper's Table 1; the image size from ``preset`` when
    the state dict has no ``pos_embed``. The MLP is the reference's tanh GELU and the timestep
    features unshifted.
    """
    D, C, p, p2 = _shape_of(state, "x_embedder.proj.weight", 4, where)
    if p != p2:
        raise DifflabError(f"{where}: x_embedder.proj.weight has non-square {p}x{p2} patches.")
    depth = _count_blocks(state, "blocks.{i}.attn.qkv.weight")
    if depth == 0:
        raise DifflabError(f"{where}: no blocks.0.attn.qkv.weight; this is not a DiT state dict.")
    heads, preset_values = _heads(depth, D, num_heads, preset, where)
    out_rows, _ = _shape_of(state, "final_layer.linear.weight", 2, where)
    out_total = out_rows // (p * p)
    if out_total not in (C, 2 * C) or out_rows % (p * p):
        raise DifflabError(
            f"{where}: final_layer.linear makes {out_rows} values per token, neither p*p*C = "
            f"{p * p * C} nor p*p*2C = {2 * p * p * C} (learned sigma)."
        )
    mlp_width, _ = _shape_of(state, "blocks.0.mlp.fc1.weight", 2, where)
    conditional = "y_embedder.embedding_table.weight" in state
    num_classes = 0
    if conditional:
        rows, _ = _shape_of(state, "y_embedder.embedding_table.weight", 2, where)
        num_classes = rows - REFERENCE_NULL_ROWS
    if "pos_embed" in state:
        _, tokens, _ = _shape_of(state, "pos_embed", 3, where)
        grid = round(tokens**0.5)
        if grid * grid != tokens:
            raise DifflabError(f"{where}: pos_embed has {tokens} tokens, not a square grid.")
        image_size = grid * p
    elif preset_values:
        image_size = preset_values["image_size"]
    else:
        raise DifflabError(
            f"{where}: without pos_embed the image size is unknown; give --preset NAME "
            "(e.g. dit-xl-2 for 256-pixel images, whose latents are 32x32)."
        )
    values = dict(
        image_size=image_size,
        in_channels=C,
        out_channels=C,
        patch_size=p,
        hidden_size=D,
        depth=depth,
        num_heads=heads,
        mlp_ratio=mlp_width / D,
        num_classes=num_classes,
        learn_sigma=out_total == 2 * C,
        gelu="tanh",
        position_layout="reference",
        timestep_freq_shift=0.0,
    )
    config = _build_config(values, where)
    if "pos_embed" in state:
        config = dataclasses.replace(
            config, position_layout=_position_layout(state["pos_embed"], config, where)
        )
    names = reference_names(depth, conditional)
    _refuse_extra(state, {*names.values(), "pos_embed"}, where, "reference DiT")
    return config, _mapped(state, names, config, where)


def _position_layout(table: torch.Tensor, config: DiTConfig, where: Path | str) -> str:
    """Which fixed sin-cos table a stored ``pos_embed`` (1, T, D) is, or refuse a learned one."""
    for layout in ("reference", "row_first"):
        fixed = sincos_position_embedding(config.grid_size, config.hidden_size, layout)
        if torch.allclose(table.reshape(fixed.shape).float(), fixed, atol=1e-5):
            return layout
    raise DifflabError(
        f"{where}: pos_embed is not the fixed 2-D sin-cos table of a {config.grid_size}x"
        f"{config.grid_size} grid (trained or interpolated positions), which difflab's DiT cannot hold."
    )


def reference_from_difflab(
    config: DiTConfig, weights: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """The reference code's state dict of a difflab DiT (``pos_embed`` included, float32).

    Only a ``position_layout="reference"`` model with unshifted timesteps is the reference
    network; others are refused (convert a row-first one with :func:`row_first_to_reference`).
    """
    if config.position_layout != "reference" or config.timestep_freq_shift != 0:
        raise DifflabError(
            "only a DiT with position_layout 'reference' and timestep_freq_shift 0 is the reference "
            "code's network; convert the weights with row_first_to_reference first."
        )
    names = reference_names(config.depth, config.num_classes > 0)
    state = {theirs: weights[ours] for ours, theirs in names.items()}
    state["pos_embed"] = sincos_position_embedding(config.grid_size, config.hidden_size)[None]
    return state


# ----------------------------------------------------------------------------- row-first


def row_first_to_reference(
    config: DiTConfig, weights: dict[str, torch.Tensor]
) -> tuple[DiTConfig, dict[str, torch.Tensor]]:
    """The same network with the reference position table: hidden channels' halves swapped.

    The row-first table is the reference one with its two halves exchanged, ``r = f[perm]`` with
    ``perm = [D/2 .. D-1, 0 .. D/2-1]``. Permuting the residual stream's channels by ``perm``
    everywhere leaves the network's function unchanged: LayerNorm without affine parameters is
    invariant, so only the maps into the stream (patch embedding, attention output projection,
    second MLP layer: output rows; the adaLN shift/scale/gate chunks: rows within each chunk) and
    out of it (qkv, first MLP layer, final linear: input columns) are permuted. The conditioning
    vector c and the attention heads live in their own spaces and stay as they are.
    """
    if config.position_layout == "reference":
        return config, dict(weights)
    D = config.hidden_size
    perm = torch.cat([torch.arange(D // 2, D), torch.arange(D // 2)])  # (D,)

    def rows(w: torch.Tensor, chunks: int = 1) -> torch.Tensor:  # (chunks D, ...) per chunk
        return w.reshape(chunks, D, *w.shape[1:])[:, perm].reshape(w.shape)

    out = dict(weights)
    for key in ("patch_embed.weight", "patch_embed.bias"):
        out[key] = rows(weights[key])
    for key in ("final_layer.modulation.linear.weight", "final_layer.modulation.linear.bias"):
        out[key] = rows(weights[key], 2)
    out["final_layer.linear.weight"] = weights["final_layer.linear.weight"][:, perm]
    for i in range(config.depth):
        b = f"blocks.{i}."
        for key in ("proj.weight", "proj.bias", "mlp.2.weight", "mlp.2.bias"):
            out[b + key] = rows(weights[b + key])
        for key in ("modulation.linear.weight", "modulation.linear.bias"):
            out[b + key] = rows(weights[b + key], 6)
        for key in ("qkv.weight", "mlp.0.weight"):
            out[b + key] = weights[b + key][:, perm]
    return dataclasses.replace(config, position_layout="reference"), out


# ----------------------------------------------------------------------------- diffusers

DIT_CLASS_NAMES = ("DiTTransformer2DModel", "Transformer2DModel")
"""``_class_name`` of a diffusers DiT: the current class, and the generic one the DiT folders on
the hub were saved as (diffusers maps it to the DiT class for ``norm_type="ada_norm_zero"``)."""

DIFFUSERS_DIT_DEFAULTS: dict[str, Any] = {
    "num_attention_heads": 16,
    "attention_head_dim": 72,
    "in_channels": 4,
    "out_channels": None,
    "num_layers": 28,
    "dropout": 0.0,
    "attention_bias": True,
    "sample_size": 32,
    "patch_size": 2,
    "activation_fn": "gelu-approximate",
    "num_embeds_ada_norm": 1000,
    "norm_type": "ada_norm_zero",
    "norm_elementwise_affine": False,
    "norm_eps": 1e-5,
}
"""``DiTTransformer2DModel.__init__``'s defaults (diffusers 0.30 - 0.42): what an omitted key means."""

GELU_TO_DIFFUSERS = {"tanh": "gelu-approximate", "exact": "gelu"}
GELU_FROM_DIFFUSERS = {value: key for key, value in GELU_TO_DIFFUSERS.items()}

DIFFUSERS_TIMESTEP_SHIFT = 1.0
"""``downscale_freq_shift`` of diffusers' ``CombinedTimestepLabelEmbeddings`` (fixed in its code)."""


def difflab_from_diffusers(
    raw_config: dict[str, Any],
    state: dict[str, torch.Tensor],
    prediction: str = "eps",
    where: Path | str = "the diffusers model",
) -> tuple[DiTConfig, dict[str, torch.Tensor]]:
    """(config, difflab weights) of a diffusers ``DiTTransformer2DModel`` (config.json + tensors).

    The result computes diffusers' forward: ``timestep_freq_shift=1``, the ``activation_fn``'s
    GELU, the reference position layout. A class table of K + 1 rows gives K classes (row K is
    the null class diffusers' pipeline uses for guidance). A table of 2 rows that are all zero
    (``num_embeds_ada_norm=1``, what :func:`diffusers_from_difflab` writes for an unconditional
    model) gives an unconditional model. Options difflab cannot compute are refused by name.
    """
    o = {**DIFFUSERS_DIT_DEFAULTS, **{k: v for k, v in raw_config.items() if not k.startswith("_")}}
    if o["norm_type"] != "ada_norm_zero":
        raise DifflabError(
            f"{where}: norm_type {o['norm_type']!r} is not a DiT's adaLN-Zero; difflab imports "
            "DiT transformers only."
        )
    if o["norm_elementwise_affine"]:
        raise DifflabError(
            f"{where}: norm_elementwise_affine=True gives the LayerNorms weights that difflab's "
            "DiT (adaLN-Zero, no affine part) does not have."
        )
    if o["activation_fn"] not in GELU_FROM_DIFFUSERS:
        raise DifflabError(
            f"{where}: activation_fn {o['activation_fn']!r} cannot be imported; difflab's DiT "
            f"has {' or '.join(GELU_FROM_DIFFUSERS)}."
        )
    eps = float(o["norm_eps"])
    if not LAYER_NORM_EPS <= eps <= NORM_EPS_TOLERANCE:
        raise DifflabError(
            f"{where}: norm_eps {eps:g} cannot be imported; difflab's DiT normalises with eps "
            "1e-6, within float32 rounding of diffusers' forward for norm_eps in [1e-6, 1e-5] only."
        )
    heads, head_dim, depth = o["num_attention_heads"], o["attention_head_dim"], o["num_layers"]
    D = heads * head_dim
    C = o["in_channels"]
    out_channels = C if o["out_channels"] is None else o["out_channels"]
    if out_channels not in (C, 2 * C):
        raise DifflabError(
            f"{where}: out_channels {out_channels} is neither in_channels {C} nor twice that "
            "(learned sigma), which difflab's DiT requires."
        )
    table_key = f"transformer_blocks.0.{EMBEDDER_NAMES['label_embed.weight']}"
    num_classes = int(o["num_embeds_ada_norm"])
    if table_key in state and num_classes == 1 and not state[table_key].any():
        num_classes = 0  # the unconditional model's zero table (diffusers_from_difflab)
    mlp_key = "transformer_blocks.0.ff.net.0.proj.weight"
    mlp_width = state[mlp_key].shape[0] if mlp_key in state else 4 * D
    values = dict(
        image_size=o["sample_size"],
        in_channels=C,
        out_channels=C,
        patch_size=o["patch_size"],
        hidden_size=D,
        depth=depth,
        num_heads=heads,
        mlp_ratio=mlp_width / D,
        num_classes=num_classes,
        prediction=prediction,
        learn_sigma=out_channels == 2 * C,
        dropout=float(o["dropout"]),
        gelu=GELU_FROM_DIFFUSERS[o["activation_fn"]],
        position_layout="reference",
        timestep_freq_shift=DIFFUSERS_TIMESTEP_SHIFT,
    )
    config = _build_config(values, where)
    state = dict(state)
    if not o["attention_bias"]:  # no bias is a zero bias
        for i in range(depth):
            for part in ("to_q", "to_k", "to_v"):
                state.setdefault(f"transformer_blocks.{i}.attn1.{part}.bias", torch.zeros(D))
    names = diffusers_names(depth)
    embedders = {
        k: v for k, v in EMBEDDER_NAMES.items() if num_classes or k != "label_embed.weight"
    }
    block0 = {ours: f"transformer_blocks.0.{theirs}" for ours, theirs in embedders.items()}
    qkv = {}
    for i in range(depth):
        for kind in ("weight", "bias"):
            parts = [f"transformer_blocks.{i}.attn1.to_{x}.{kind}" for x in "qkv"]
            for part in parts:
                if part not in state:
                    raise DifflabError(
                        f"{where}: tensor {part!r} is missing; the file is not a whole DiT."
                    )
            qkv[f"blocks.{i}.qkv.{kind}"] = torch.cat([state[part] for part in parts])  # (3D, ...)
    known = set(names.values()) | {
        f"transformer_blocks.{i}.{theirs}"
        for i in range(depth)
        for theirs in EMBEDDER_NAMES.values()
    }
    known |= {
        f"transformer_blocks.{i}.attn1.to_{x}.{k}"
        for i in range(depth)
        for x in "qkv"
        for k in ("weight", "bias")
    }
    _refuse_extra(state, known, where, "DiTTransformer2DModel")
    for i in range(1, depth):
        for theirs in embedders.values():
            key = f"transformer_blocks.{i}.{theirs}"
            if key in state and not torch.equal(
                state[key], state[f"transformer_blocks.0.{theirs}"]
            ):
                raise DifflabError(
                    f"{where}: block {i}'s copy of {theirs} differs from block 0's; difflab's DiT "
                    "(like the reference) has one timestep and class embedder for all blocks."
                )
    weights = _mapped({**state, **qkv}, {**names, **block0, **{k: k for k in qkv}}, config, where)
    return config, weights


def diffusers_from_difflab(
    config: DiTConfig, weights: dict[str, torch.Tensor]
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(``DiTTransformer2DModel`` config.json, state dict) of a difflab DiT.

    A row-first model is first rewritten to the reference layout (:func:`row_first_to_reference`,
    exact). diffusers fixes the timestep shift at 1, so only a ``timestep_freq_shift=1`` model
    keeps its forward; the caller decides about the others. An unconditional model gets
    ``num_embeds_ada_norm=1`` and a zero class table, so every label adds nothing.
    """
    if config.mlp_ratio != 4:
        raise DifflabError(
            f"model.mlp_ratio {config.mlp_ratio:g} cannot be exported: diffusers' DiT blocks have "
            "an MLP 4 times as wide as the tokens."
        )
    config, weights = row_first_to_reference(config, weights)
    D, depth = config.hidden_size, config.depth
    out_channels = config.out_channels * (2 if config.learn_sigma else 1)
    raw = {
        "_class_name": "DiTTransformer2DModel",
        "num_attention_heads": config.num_heads,
        "attention_head_dim": D // config.num_heads,
        "in_channels": config.in_channels,
        "out_channels": out_channels,
        "num_layers": depth,
        "dropout": config.dropout,
        "norm_num_groups": 32,
        "attention_bias": True,
        "sample_size": config.image_size,
        "patch_size": config.patch_size,
        "activation_fn": GELU_TO_DIFFUSERS[config.gelu],
        "num_embeds_ada_norm": config.num_classes or 1,
        "upcast_attention": False,
        "norm_type": "ada_norm_zero",
        "norm_elementwise_affine": False,
        "norm_eps": LAYER_NORM_EPS,
    }
    state = {theirs: weights[ours].clone() for ours, theirs in diffusers_names(depth).items()}
    embedders = dict(weights)
    if not config.num_classes:
        embedders["label_embed.weight"] = torch.zeros(2, D)
    for i in range(depth):
        for ours, theirs in EMBEDDER_NAMES.items():
            state[f"transformer_blocks.{i}.{theirs}"] = embedders[ours].clone()  # own storage
        for kind in ("weight", "bias"):
            q, k, v = weights[f"blocks.{i}.qkv.{kind}"].chunk(3)  # each (D, ...)
            for name, part in zip("qkv", (q, k, v), strict=True):
                state[f"transformer_blocks.{i}.attn1.to_{name}.{kind}"] = part.clone()
    return raw, state


# ----------------------------------------------------------------------------- files


def _imported_meta(
    config: DiTConfig, diffusion: dict[str, Any], data_name: str, converted_from: dict[str, Any]
) -> dict[str, Any]:
    """The JSON of a ``kind: diffusion`` checkpoint made from foreign weights."""
    return {
        "kind": "diffusion",
        "arch": "dit",
        "model": config_to_dict(config),
        "diffusion": diffusion,
        "data": {
            "name": data_name,
            "image_size": config.image_size,
            "channels": config.in_channels,
            "class_names": [str(i) for i in range(config.num_classes)],
        },
        "converted_from": converted_from,
    }


def _save_dit(
    out: Path,
    config: DiTConfig,
    weights: dict[str, torch.Tensor],
    meta: dict[str, Any],
    where: Path,
) -> None:
    net = DiT(config)
    load_weights_strict(net, weights, where)  # names and shapes checked again, cast to float32
    save_checkpoint(out, with_prefix(net.state_dict(), "model"), meta)


def import_reference_dit(
    path: Path,
    out: Path,
    *,
    allow_pickle: bool = False,
    num_heads: int | None = None,
    preset: str | None = None,
) -> DiTConfig:
    """Write a facebookresearch/DiT state dict (``.pt`` with ``allow_pickle``, or safetensors)
    as a difflab ``kind: diffusion`` checkpoint ``out``; returns the model's config.

    The schedule is the reference's (linear 1e-4 .. 0.02, T = 1000, eps prediction); the data
    entry says ``reference-dit`` with the latent's channels and size (the released models work
    on Stable Diffusion VAE latents, which difflab does not decode). See
    :func:`difflab_from_reference` for what is inferred from the tensors.
    """
    path, out = Path(path), Path(out)
    state = read_state_dict(path, allow_pickle)
    config, weights = difflab_from_reference(state, num_heads=num_heads, preset=preset, where=path)
    source = {
        "format": "facebookresearch/DiT",
        "file": str(path),
        "note": "the reference's released models denoise Stable Diffusion VAE latents (x 0.18215)",
    }
    meta = _imported_meta(config, dict(REFERENCE_DIFFUSION), "reference-dit", source)
    _save_dit(out, config, weights, meta, path)
    return config


def import_diffusers_dit(folder: Path, out: Path, *, allow_pickle: bool = False) -> DiTConfig:
    """Write a diffusers ``DiTTransformer2DModel`` (model folder, or pipeline folder with
    ``transformer/`` and ``scheduler/``) as a difflab ``kind: diffusion`` checkpoint ``out``.

    The schedule and prediction type come from ``scheduler/scheduler_config.json`` (diffusers'
    defaults, DDPM's linear schedule with eps, without one); the scheduler's sampling options are
    recorded under ``converted_from``, not applied. Returns the model's config.
    """
    folder, out = Path(folder), Path(out)
    source = detect_source(folder)
    if source.format != "diffusers" or source.arch != "dit" or source.model_dir is None:
        raise DifflabError(f"{folder} is not a diffusers DiT folder.")
    model_dir = source.model_dir
    scheduler_path = folder / "scheduler" / "scheduler_config.json"
    scheduler = (
        read_json(scheduler_path) if model_dir != folder and scheduler_path.is_file() else {}
    )
    diffusion, prediction = diffusion_from_scheduler(scheduler, scheduler_path)
    state = read_model_weights(model_dir, allow_pickle)
    config, weights = difflab_from_diffusers(
        read_json(model_dir / "config.json"), state, prediction, model_dir
    )
    sampling = (
        "clip_sample",
        "set_alpha_to_one",
        "steps_offset",
        "timestep_spacing",
        "thresholding",
    )
    converted_from = {
        "format": "diffusers",
        "folder": str(folder),
        "scheduler": scheduler.get("_class_name", "none (diffusers' defaults)"),
        "sampling_options": {k: scheduler[k] for k in sampling if k in scheduler},
    }
    meta = _imported_meta(config, diffusion, "diffusers", converted_from)
    _save_dit(out, config, weights, meta, model_dir)
    return config


def export_dit_to_diffusers(
    checkpoint: Path, out_dir: Path, *, allow_timestep_shift: bool = False
) -> DiTConfig:
    """Write the DiT of a ``kind: diffusion`` checkpoint as a diffusers folder ``out_dir``.

    ``out_dir/transformer/`` gets ``config.json`` and ``diffusion_pytorch_model.safetensors``
    (float32, the EMA weights when the checkpoint has them), ``out_dir/scheduler/`` a
    ``DDIMScheduler`` config with the checkpoint's schedule. No ``model_index.json``: diffusers'
    only DiT pipeline (``DiTPipeline``) needs a VAE and decodes latents, which a pixel-space model
    has not. Load with ``DiTTransformer2DModel.from_pretrained(out_dir, subfolder="transformer")``.

    diffusers embeds timesteps with ``timestep_freq_shift=1``; a model trained with 0 (every
    difflab model before this option, and the default) would see other timestep features there,
    so it is refused unless ``allow_timestep_shift`` (diffusers' own port of the reference DiT
    runs with that same mismatch). Returns the exported model's config (reference layout).
    """
    checkpoint, out_dir = Path(checkpoint), Path(out_dir)
    refuse_existing(out_dir)
    tensors, meta = load_checkpoint(checkpoint, kind="diffusion")
    for key in ("arch", "model", "diffusion"):
        if key not in meta:
            raise DifflabError(
                f"{checkpoint} lacks the {key!r} entry of a diffusion checkpoint; re-export it with difflab."
            )
    if meta["arch"] != "dit":
        raise DifflabError(f"{checkpoint} holds a {meta['arch']!r} network, not a DiT.")
    config = config_from_dict("dit", meta["model"])
    if config.timestep_freq_shift != DIFFUSERS_TIMESTEP_SHIFT and not allow_timestep_shift:
        raise DifflabError(
            f"{checkpoint} embeds timesteps with frequencies 10000^(-i/128) but diffusers' DiT "
            "hard-codes 10000^(-i/127), so the exported model would predict something else (2% "
            "of the eps norm for weights/dit_mnist_s4); pass --allow-timestep-shift to export "
            "anyway, or train with model.timestep_freq_shift=1."
        )
    net = DiT(config)
    load_weights_strict(
        net, split_prefix(tensors, "ema") or split_prefix(tensors, "model"), checkpoint
    )
    raw, state = diffusers_from_difflab(config, net.state_dict())
    raw["_diffusers_version"] = DIFFUSERS_VERSION
    raw["_difflab"] = {  # ignored by diffusers (leading underscore); provenance for a reader
        "checkpoint": checkpoint.name,
        "position_layout": config.position_layout,
        "timestep_freq_shift": config.timestep_freq_shift,
    }
    files = {
        "transformer/config.json": json_bytes(raw),
        f"transformer/{WEIGHTS_NAME}": safetensors_bytes(state),
        "scheduler/scheduler_config.json": json_bytes(
            scheduler_config(meta["diffusion"], config.prediction)
        ),
    }
    write_folder_atomic(out_dir, files)
    return dataclasses.replace(config, position_layout="reference")
