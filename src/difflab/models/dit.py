"""The diffusion transformer, DiT (Peebles & Xie 2023, "Scalable Diffusion Models with Transformers").

An image (pixels, or an autoencoder's latent) is cut into p x p patches that become tokens
(sec. 3.2, "Patchify"); fixed 2-D sin-cos position embeddings are added; a stack of transformer
blocks conditioned by adaLN-Zero on ``c = t_emb + y_emb`` processes them; a final adaLN layer
and a linear map turn every token back into a p x p patch of the output ("Transformer decoder").

adaLN-Zero (sec. 3.2): each block's LayerNorms get a shift and a scale, and each residual branch
a gate, all regressed from ``c`` by a SiLU + Linear initialised to zero, so at initialisation
every block is the identity and (with the zero-initialised final linear) the network outputs 0.

The network follows difflab's contract ``net(x_t, t, cond) -> (B, out_channels, H, W)`` with
``net.prediction`` in eps / x0 / v, so every sampler and guidance wrapper runs on it unchanged.

Choices and limits:

* The image size must be divisible by the patch size; otherwise construction fails with a
  :class:`DifflabError` naming both (nothing is padded silently). For 28 x 28 MNIST use p in
  {1, 2, 4, 7, 14}; with ``data.pad_to_32=true`` (32 x 32) use p in {1, 2, 4, 8, 16}.
* The position embedding is fixed to the configured grid: inputs of another size are refused.
  ``position_layout="reference"`` (the default) is the reference code's table, whose first half
  of every vector encodes the patch column; ``"row_first"`` puts the row first. The two are the
  same network up to a permutation of the hidden channels (swap the halves), see
  :func:`difflab.convert.dit.row_first_to_reference`; checkpoints written before the field
  existed are ``"row_first"``.
* ``gelu="exact"`` (the default) uses the exact GELU in the MLP, ``"tanh"`` the reference code's
  tanh approximation. The two differ by at most 5e-4 per activation; the exact one is 3-6x
  faster forward on this project's CPU (fp32 and bf16: 4 ms against 15 ms for a 6272 x 512
  activation, one thread). Imported reference weights use ``"tanh"``.
* ``timestep_freq_shift`` is 0 as in the reference code; 1 reproduces diffusers'
  ``DiTTransformer2DModel``, whose timestep features use ``w_i = 10000^(-i / 127)`` instead of
  ``10000^(-i / 128)`` (see :func:`difflab.nn.sinusoidal_embedding`).
* float64 runs end to end (the position table is then computed in float64, not rounded).
* Attention goes through :func:`difflab.nn.packed_attention`: the fused kernel in float32, two
  bf16 matmuls and a softmax under bf16 autocast on the CPU (2.4x faster there, forward + backward).
* ``learn_sigma=True`` adds the paper's learned-variance output (out_channels more channels, the
  raw value ``v`` of Improved DDPM's eq. 15, see :mod:`difflab.diffusion.vlb`). ``net(...)``
  returns the first half (the prediction); ``net(..., with_variance=True)`` (or
  :meth:`DiT.predict_with_variance`) both halves, which the Denoiser splits, the hybrid loss
  trains (``train.vlb_weight``) and the DDPM sampler uses.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from difflab.diffusion.conditioning import NULL_LABEL, Conditioning
from difflab.diffusion.denoiser import PREDICTION_TYPES
from difflab.errors import DifflabError
from difflab.nn import TimestepEmbedding
from difflab.nn.adaln import AdaLNModulation, gated_residual, layer_norm, modulate
from difflab.nn.attention import packed_attention

if TYPE_CHECKING:
    from difflab.models.control_residuals import ControlResiduals

TIMESTEP_FEATURES = 256
"""Width of the sinusoidal timestep features fed to the timestep MLP (the paper's 256)."""

POSITION_LAYOUTS: tuple[str, ...] = ("reference", "row_first")
"""``DiTConfig.position_layout`` values: the reference code's table, or difflab's first one."""

GELU_CHOICES: tuple[str, ...] = ("exact", "tanh")
"""``DiTConfig.gelu`` values: exact GELU, or the reference code's tanh approximation."""


@dataclass(frozen=True)
class DiTConfig:
    """Sizes of a DiT (Peebles & Xie 2023, Table 1 for S/B/L/XL).

    The defaults are DiT-S/2 on a 32 x 32 x 4 input, the latent of a 256-pixel image under the
    LDM autoencoder the paper uses; difflab's MNIST configs override size and channels.

    Attributes:
        image_size: input height = width, in pixels (or latent cells); divisible by ``patch_size``.
        in_channels / out_channels: input and output channels (out = in for eps, x0 or v).
        patch_size: p; the input becomes (image_size / p)^2 tokens of p * p * in_channels values.
        hidden_size: token width D (S 384, B 768, L 1024, XL 1152); divisible by 4 and num_heads.
        depth: number of DiT blocks N (S/B 12, L 24, XL 28).
        num_heads: attention heads (S 6, B 12, L/XL 16).
        mlp_ratio: width of the MLP hidden layer as a multiple of ``hidden_size``.
        num_classes: class-conditional when > 0; the embedding gets ``num_classes + 1`` rows, the
            last one the "no label" entry used by classifier-free guidance.
        prediction: what the network predicts: "eps", "x0" or "v".
        learn_sigma: also output the learned-variance channels (see the module docstring).
        dropout: dropout probability on the attention and MLP branches (the paper uses 0).
        position_layout: "reference" (the reference code's sin-cos table: column first) or
            "row_first" (the transposed table of checkpoints written before this field existed).
        gelu: "exact" (faster on the CPU, the default) or "tanh" (the reference code's).
        timestep_freq_shift: s in the timestep frequencies ``10000^(-i / (128 - s))``: 0 as in
            the reference code, 1 as in diffusers' DiTTransformer2DModel.
    """

    image_size: int = 32
    in_channels: int = 4
    out_channels: int = 4
    patch_size: int = 2
    hidden_size: int = 384
    depth: int = 12
    num_heads: int = 6
    mlp_ratio: float = 4.0
    num_classes: int = 0
    prediction: str = "eps"
    learn_sigma: bool = False
    dropout: float = 0.0
    position_layout: str = "reference"
    gelu: str = "exact"
    timestep_freq_shift: float = 0.0

    @property
    def grid_size(self) -> int:
        """Patches per side, ``image_size / patch_size``."""
        return self.image_size // self.patch_size

    @property
    def num_tokens(self) -> int:
        """Tokens per image T = (image_size / patch_size)^2."""
        return self.grid_size**2


def check_dit_config(config: DiTConfig) -> None:
    """Raise a :class:`DifflabError` naming the first inconsistent field of ``config``."""
    c = config
    sizes = ("image_size", "in_channels", "out_channels", "patch_size", "hidden_size", "depth")
    for name in (*sizes, "num_heads"):
        if getattr(c, name) < 1:
            raise DifflabError(f"model.{name} must be at least 1, got {getattr(c, name)}.")
    if c.image_size % c.patch_size:
        divisors = ", ".join(str(d) for d in range(1, c.image_size + 1) if c.image_size % d == 0)
        raise DifflabError(
            f"model.image_size {c.image_size} is not divisible by model.patch_size {c.patch_size}; "
            f"choose a patch size among {divisors} (for 28x28 MNIST, data.pad_to_32=true allows 2, 4, 8)."
        )
    if c.hidden_size % c.num_heads:
        raise DifflabError(
            f"model.hidden_size {c.hidden_size} does not split into model.num_heads {c.num_heads} heads; "
            "choose a hidden size divisible by the number of heads."
        )
    if c.hidden_size % 4:
        raise DifflabError(
            f"model.hidden_size must be divisible by 4 for the 2-D sin-cos position embedding, got {c.hidden_size}."
        )
    if c.mlp_ratio <= 0:
        raise DifflabError(f"model.mlp_ratio must be positive, got {c.mlp_ratio}.")
    if c.num_classes < 0:
        raise DifflabError(
            f"model.num_classes must be 0 (unconditional) or more, got {c.num_classes}."
        )
    if not 0 <= c.dropout < 1:
        raise DifflabError(f"model.dropout must lie in [0, 1), got {c.dropout}.")
    if c.prediction not in PREDICTION_TYPES:
        raise DifflabError(
            f"model.prediction {c.prediction!r} is unknown; choose one of {', '.join(PREDICTION_TYPES)}."
        )
    if c.position_layout not in POSITION_LAYOUTS:
        raise DifflabError(
            f"model.position_layout {c.position_layout!r} is unknown; choose one of "
            f"{', '.join(POSITION_LAYOUTS)}."
        )
    if c.gelu not in GELU_CHOICES:
        raise DifflabError(
            f"model.gelu {c.gelu!r} is unknown; choose one of {', '.join(GELU_CHOICES)}."
        )
    if not 0 <= c.timestep_freq_shift < TIMESTEP_FEATURES // 2:
        raise DifflabError(
            f"model.timestep_freq_shift must lie in [0, {TIMESTEP_FEATURES // 2}), got "
            f"{c.timestep_freq_shift} (0: the reference code, 1: diffusers)."
        )


# ----------------------------------------------------------------------------- patches


def patchify(x: torch.Tensor, patch_size: int) -> torch.Tensor:
    """Cut images into non-overlapping patches, row-major over the patch grid.

    Shapes: x (B, C, H, W) -> (B, (H/p) (W/p), p * p * C); each patch is flattened in the order
    (patch row, patch column, channel), the inverse of :func:`unpatchify`.
    """
    B, C, H, W = x.shape
    p = patch_size
    x = x.reshape(B, C, H // p, p, W // p, p)  # (B, C, h, p, w, p)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(B, (H // p) * (W // p), p * p * C)


def unpatchify(tokens: torch.Tensor, patch_size: int, grid_size: int) -> torch.Tensor:
    """Put patch tokens back into images (sec. 3.2, "Transformer decoder").

    Shapes: tokens (B, g * g, p * p * C) -> (B, C, g * p, g * p) with g = ``grid_size``.
    """
    B, _, K = tokens.shape
    p, g = patch_size, grid_size
    C = K // (p * p)
    x = tokens.reshape(B, g, g, p, p, C)  # (B, h, w, p_row, p_col, C)
    return x.permute(0, 5, 1, 3, 2, 4).reshape(B, C, g * p, g * p)


def sincos_position_embedding(
    grid_size: int,
    dim: int,
    layout: str = "reference",
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Fixed 2-D sin-cos position embeddings of a square patch grid, (grid_size^2, dim).

    Token ``i * grid_size + j`` (patch row i, column j, the row-major order of the patch
    embedding's output) gets ``[s(j), s(i)]`` in the ``"reference"`` layout (the reference code's
    ``get_2d_sincos_pos_embed``, whose meshgrid puts the column first) and ``[s(i), s(j)]`` in
    the ``"row_first"`` layout, where
    ``s(pos) = [sin(pos w_0), ..., sin(pos w_{k-1}), cos(pos w_0), ..., cos(pos w_{k-1})]`` with
    ``k = dim / 4`` and ``w_m = 10000^(-m / k)`` (the Transformer's frequencies, one set per axis).
    Computed in float64 and returned in ``dtype``.
    """
    quarter = dim // 4
    freqs = 10000.0 ** (-torch.arange(quarter, dtype=torch.float64) / quarter)  # (dim/4,)
    positions = torch.arange(grid_size, dtype=torch.float64)  # (g,)
    angles = positions[:, None] * freqs[None]  # (g, dim/4)
    axis = torch.cat([angles.sin(), angles.cos()], dim=1)  # (g, dim/2)
    rows = axis[:, None, :].expand(grid_size, grid_size, dim // 2)  # (g, g, dim/2): row i
    cols = axis[None, :, :].expand(grid_size, grid_size, dim // 2)  # (g, g, dim/2): column j
    halves = [cols, rows] if layout == "reference" else [rows, cols]
    return torch.cat(halves, dim=-1).reshape(grid_size * grid_size, dim).to(dtype)


# ----------------------------------------------------------------------------- blocks


class DiTBlock(nn.Module):
    """A transformer block with adaLN-Zero conditioning (sec. 3.2, Figure 3).

    ``x = x + gate_msa * attn(modulate(norm(x), shift_msa, scale_msa))``, then
    ``x = x + gate_mlp * mlp(modulate(norm(x), shift_mlp, scale_mlp))``, the six vectors regressed
    from c. All heads attend in one call of :func:`packed_attention` (no loop over heads).

    Shapes: x (B, T, D), c (B, D) -> (B, T, D).
    """

    def __init__(
        self,
        hidden_size: int,
        num_heads: int,
        mlp_ratio: float,
        dropout: float,
        gelu: str = "exact",
    ) -> None:
        super().__init__()
        self.num_heads = num_heads
        mlp_width = int(hidden_size * mlp_ratio)
        self.qkv = nn.Linear(hidden_size, 3 * hidden_size)
        self.proj = nn.Linear(hidden_size, hidden_size)
        self.mlp = nn.Sequential(
            nn.Linear(hidden_size, mlp_width),
            nn.GELU(approximate="tanh" if gelu == "tanh" else "none"),
            nn.Linear(mlp_width, hidden_size),
        )
        self.dropout = nn.Dropout(dropout)
        self.modulation = AdaLNModulation(hidden_size, hidden_size, chunks=6)

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        """Multi-head self-attention, (B, T, D) -> (B, T, D)."""
        B, T, D = x.shape
        qkv = self.qkv(x).view(B, T, 3, self.num_heads, D // self.num_heads)
        return self.proj(packed_attention(qkv).reshape(B, T, D))  # (B, T, D)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.modulation(c)
        h = self.attention(modulate(layer_norm(x), shift_msa, scale_msa))  # (B, T, D)
        x = gated_residual(x, gate_msa, self.dropout(h))
        h = self.mlp(modulate(layer_norm(x), shift_mlp, scale_mlp))  # (B, T, D)
        return gated_residual(x, gate_mlp, self.dropout(h))


class FinalLayer(nn.Module):
    """adaLN (shift, scale) then a linear map of every token to a p x p patch of the output.

    Shapes: x (B, T, D), c (B, D) -> (B, T, p * p * channels).
    """

    def __init__(self, hidden_size: int, patch_size: int, channels: int) -> None:
        super().__init__()
        self.modulation = AdaLNModulation(hidden_size, hidden_size, chunks=2)
        self.linear = nn.Linear(hidden_size, patch_size * patch_size * channels)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.modulation(c)
        return self.linear(modulate(layer_norm(x), shift, scale))


# ----------------------------------------------------------------------------- the network


class DiT(nn.Module):
    """``net(x_t, t, cond) -> (B, out_channels, H, W)``; x_t (B, in_channels, H, W), t (B,).

    ``cond.labels`` (B,) selects the class embedding when ``num_classes > 0``; ``NULL_LABEL`` (or
    no labels at all) selects the reserved "no label" row. Labels are ignored when unconditional.
    """

    def __init__(self, config: DiTConfig) -> None:
        super().__init__()
        check_dit_config(config)
        self.config = config
        self.prediction = config.prediction
        self.learn_sigma = config.learn_sigma
        # the Conditioning fields this network reads
        self.conditioning_fields: tuple[str, ...] = ("labels",) if config.num_classes else ()
        c = config
        D = c.hidden_size
        self.output_channels = c.out_channels * (2 if c.learn_sigma else 1)
        self.patch_embed = nn.Conv2d(c.in_channels, D, c.patch_size, stride=c.patch_size)
        # fixed, derived from the config: not a parameter and not stored in checkpoints
        table = sincos_position_embedding(
            c.grid_size, D, c.position_layout, torch.get_default_dtype()
        )  # (T, D)
        self.register_buffer("pos_embed", table[None], persistent=False)  # (1, T, D)
        self.time_embed = TimestepEmbedding(TIMESTEP_FEATURES, D, c.timestep_freq_shift)
        # rows 0..num_classes-1 are classes, row num_classes is "no label"
        self.label_embed = nn.Embedding(c.num_classes + 1, D) if c.num_classes > 0 else None
        self.blocks = nn.ModuleList(
            DiTBlock(D, c.num_heads, c.mlp_ratio, c.dropout, c.gelu) for _ in range(c.depth)
        )
        self.final_layer = FinalLayer(D, c.patch_size, self.output_channels)
        self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        """All of the network's initialisation, as in the paper's reference code (sec. 3.2).

        Linear layers: Xavier-uniform weights, zero biases; patch embedding: Xavier-uniform as a
        linear map of a flattened patch; timestep MLP and class embedding: normal(0, 0.02);
        adaLN-Zero: every modulation regressor and the final linear layer start at zero.
        """
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
        weight = self.patch_embed.weight  # (D, C, p, p)
        nn.init.xavier_uniform_(weight.view(weight.shape[0], -1))
        nn.init.zeros_(self.patch_embed.bias)
        for layer in self.time_embed.mlp:
            if isinstance(layer, nn.Linear):
                nn.init.normal_(layer.weight, std=0.02)
        if self.label_embed is not None:
            nn.init.normal_(self.label_embed.weight, std=0.02)
        zero_init = [block.modulation.linear for block in self.blocks]
        zero_init += [self.final_layer.modulation.linear, self.final_layer.linear]
        for layer in zero_init:
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def embed(self, t: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        """The conditioning vector ``c = t_emb + y_emb``, (B, hidden_size)."""
        c = self.time_embed(t)  # (B, D)
        if self.label_embed is not None:
            num_classes = self.config.num_classes
            labels = cond.labels
            if labels is None:
                rows = torch.full(t.shape, num_classes, dtype=torch.long, device=t.device)
            else:
                if bool(((labels < NULL_LABEL) | (labels >= num_classes)).any()):
                    raise DifflabError(
                        f"class labels must lie in 0..{num_classes - 1} (or {NULL_LABEL} for none)."
                    )
                rows = torch.where(labels == NULL_LABEL, num_classes, labels)  # (B,)
            c = c + self.label_embed(rows)
        return c

    def position_embedding(self) -> torch.Tensor:
        """The fixed (1, T, D) position table in the module's dtype.

        The buffer follows ``module.to(dtype)``; a float32-built model converted to float64 would
        carry a float32-rounded table (errors near 3e-8), so float64 recomputes it exactly.
        """
        if self.pos_embed.dtype != torch.float64:
            return self.pos_embed
        c = self.config
        table = sincos_position_embedding(
            c.grid_size, c.hidden_size, c.position_layout, torch.float64
        )  # (T, D)
        return table.to(self.pos_embed.device)[None]

    def _check_input(self, x_t: torch.Tensor) -> None:
        c = self.config
        expected = (c.in_channels, c.image_size, c.image_size)
        if x_t.dim() != 4 or tuple(x_t.shape[1:]) != expected:
            raise DifflabError(
                f"this DiT takes (B, {c.in_channels}, {c.image_size}, {c.image_size}) inputs (its "
                f"position embedding is fixed to that grid), got {tuple(x_t.shape)}."
            )

    def _all_channels(
        self,
        x_t: torch.Tensor,
        t: torch.Tensor,
        cond: Conditioning | None,
        control: ControlResiduals | None = None,
    ) -> torch.Tensor:
        """The head's full output (B, output_channels, H, W): prediction [+ variance values].

        ``control``: a ControlNet's outputs (B, T, D), added to those of the first blocks.
        """
        self._check_input(x_t)
        c = self.embed(t, cond if cond is not None else Conditioning())  # (B, D)
        tokens = self.patch_embed(x_t).flatten(2).transpose(1, 2)  # (B, T, D)
        x = tokens + self.position_embedding()  # (B, T, D)
        extras = control.features if control is not None else ()
        for index, block in enumerate(self.blocks):
            x = block(x, c)  # (B, T, D)
            if index < len(extras):
                x = x + extras[index]
        x = self.final_layer(x, c)  # (B, T, p * p * output_channels)
        return unpatchify(x, self.config.patch_size, self.config.grid_size)

    def forward(
        self,
        x_t: torch.Tensor,
        t: torch.Tensor,
        cond: Conditioning | None = None,
        control: ControlResiduals | None = None,
        *,
        with_variance: bool = False,
    ) -> torch.Tensor:
        """The prediction (B, out_channels, H, W); with ``with_variance`` and ``learn_sigma`` the
        head's full output (B, 2 out_channels, H, W): the prediction, then the variance values."""
        out = self._all_channels(x_t, t, cond, control)  # (B, output_channels, H, W)
        return out if with_variance or not self.learn_sigma else out[:, : self.config.out_channels]

    def predict_with_variance(
        self, x_t: torch.Tensor, t: torch.Tensor, cond: Conditioning | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(prediction, variance values), each (B, out_channels, H, W); needs ``learn_sigma``.

        The variance values are the paper's second output half: Improved DDPM's ``v`` with
        ``Sigma = exp(f log beta_t + (1 - f) log beta_tilde_t)``, ``f = (v + 1) / 2`` (eq. 15).
        """
        if not self.config.learn_sigma:
            raise DifflabError(
                "this DiT has no learned-variance output; build it with model.learn_sigma=true."
            )
        out = self(x_t, t, cond, with_variance=True)
        return out[:, : self.config.out_channels], out[:, self.config.out_channels :]
