"""The DiT forward of Peebles & Xie (2023), written out from the paper and the reference code's
documented layout, on a state dict in the reference's key names (facebookresearch/DiT
``models.py``). An independent oracle: it shares no code with difflab's DiT and spells out
every operation (LayerNorm, GELU, attention, softmax) from its equation.

The network (sec. 3.2, Figure 3):

1. Patchify: a p x p stride-p convolution ``x_embedder.proj`` (D, C, p, p) turns x (N, C, H, W)
   into T = (H/p)(W/p) tokens, read row-major over the patch grid (token ``r * w + c`` is patch
   row r, column c).
2. Fixed 2-D sin-cos positions (the reference's ``get_2d_sincos_pos_embed``): with k = D/4 and
   ``omega_m = 1 / 10000^(m / k)``, ``E(pos) = [sin(pos omega_0..k-1), cos(pos omega_0..k-1)]``
   (D/2 values), token (r, c) gets ``[E(c), E(r)]``: the column first.
3. Timestep embedder: 256 features ``[cos(t f_0..127), sin(t f_0..127)]`` with
   ``f_j = exp(-ln(10000) j / (128 - shift))`` (shift 0 in the reference), then
   ``Linear(256, D) -> SiLU -> Linear(D, D)`` (``t_embedder.mlp.0`` / ``.2``).
4. Label embedder: a table of K + 1 rows (``y_embedder.embedding_table``), row K the null class.
5. ``c = t_emb + y_emb``.
6. N blocks, each adaLN-Zero: ``adaLN_modulation.1`` maps SiLU(c) to 6 D values, chunks
   (shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp);
   ``x += gate_msa * Attn(LN(x) (1 + scale_msa) + shift_msa)``,
   ``x += gate_mlp * MLP(LN(x) (1 + scale_mlp) + shift_mlp)``, LN without affine part, eps 1e-6.
   Attn: ``attn.qkv`` (3D, D) rows are q, k, v, each split into heads of D/heads rows;
   ``softmax(q k^T / sqrt(D/heads)) v``, heads concatenated, ``attn.proj``. MLP: ``mlp.fc1``,
   GELU with the tanh approximation, ``mlp.fc2``.
7. Final layer: ``final_layer.adaLN_modulation.1`` gives (shift, scale), then
   ``final_layer.linear`` maps LN(x) (1 + scale) + shift to p * p * C' values per token.
8. Unpatchify: a token's values are (p_row, p_col, channel): ``out[n, ch, r p + i, c p + j] =
   tok[n, r w + c, (i p + j) C' + ch]``.
"""

from __future__ import annotations

import math

import torch


def silu(x: torch.Tensor) -> torch.Tensor:
    return x / (1 + torch.exp(-x))


def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    """GELU's tanh approximation (Hendrycks & Gimpel 2016): 0.5 x (1 + tanh(sqrt(2/pi)(x + 0.044715 x^3)))."""
    return 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))


def gelu_exact(x: torch.Tensor) -> torch.Tensor:
    """x Phi(x) with Phi the standard normal CDF, 0.5 (1 + erf(x / sqrt 2))."""
    return 0.5 * x * (1 + torch.erf(x / math.sqrt(2)))


def layer_norm(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """(x - mean) / sqrt(biased variance + eps) over the last axis."""
    mean = x.mean(dim=-1, keepdim=True)
    var = ((x - mean) ** 2).mean(dim=-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + eps)


def linear(x: torch.Tensor, state: dict[str, torch.Tensor], name: str) -> torch.Tensor:
    return x @ state[f"{name}.weight"].T + state[f"{name}.bias"]


def position_table(grid: int, dim: int, dtype: torch.dtype) -> torch.Tensor:
    """(grid^2, dim): token r * grid + c gets [E(c), E(r)] (step 2 of the module docstring)."""
    k = dim // 4
    omega = 1.0 / 10000 ** (torch.arange(k, dtype=dtype) / k)  # (k,)
    token = torch.arange(grid * grid)
    row, col = (token // grid).to(dtype), (token % grid).to(dtype)  # (T,)

    def encode(pos: torch.Tensor) -> torch.Tensor:  # (T,) -> (T, dim/2)
        angle = pos[:, None] * omega[None]
        return torch.cat([torch.sin(angle), torch.cos(angle)], dim=1)

    return torch.cat([encode(col), encode(row)], dim=1)


def timestep_features(t: torch.Tensor, dtype: torch.dtype, shift: float = 0.0) -> torch.Tensor:
    """(N, 256): [cos(t f_j), sin(t f_j)], f_j = exp(-ln(10000) j / (128 - shift))."""
    j = torch.arange(128, dtype=dtype)
    f = torch.exp(-math.log(10000) * j / (128 - shift))  # (128,)
    angle = t.to(dtype)[:, None] * f[None]  # (N, 128)
    return torch.cat([torch.cos(angle), torch.sin(angle)], dim=1)


def attention(
    x: torch.Tensor, state: dict[str, torch.Tensor], prefix: str, heads: int
) -> torch.Tensor:
    N, T, D = x.shape
    hd = D // heads
    qkv = linear(x, state, f"{prefix}.qkv")  # (N, T, 3D): [q | k | v], each [head 0 | head 1 | ...]
    q, k, v = (
        qkv[..., i * D : (i + 1) * D].reshape(N, T, heads, hd).transpose(1, 2) for i in range(3)
    )
    scores = q @ k.transpose(-1, -2) / math.sqrt(hd)  # (N, heads, T, T)
    scores = scores - scores.max(dim=-1, keepdim=True).values
    weights = torch.exp(scores) / torch.exp(scores).sum(dim=-1, keepdim=True)
    out = (weights @ v).transpose(1, 2).reshape(N, T, D)  # heads concatenated
    return linear(out, state, f"{prefix}.proj")


def reference_forward(
    state: dict[str, torch.Tensor],
    x: torch.Tensor,
    t: torch.Tensor,
    y: torch.Tensor,
    *,
    num_heads: int,
    gelu: str = "tanh",
    timestep_shift: float = 0.0,
    mlp_norm_eps: float = 1e-6,
) -> torch.Tensor:
    """The reference DiT's output (N, C', H, W) for x (N, C, H, W), t (N,), labels y (N,).

    ``gelu``, ``timestep_shift`` and ``mlp_norm_eps`` default to the reference code; diffusers'
    DiTTransformer2DModel is ("tanh" or "exact", 1.0, its ``norm_eps``).
    """
    dtype = x.dtype
    N, C, H, W = x.shape
    D, _, p, _ = state["x_embedder.proj.weight"].shape
    h, w = H // p, W // p
    # 1. patchify: the stride-p convolution as a matmul of flattened patches
    patches = x.reshape(N, C, h, p, w, p).permute(0, 2, 4, 1, 3, 5).reshape(N, h * w, C * p * p)
    kernel = state["x_embedder.proj.weight"].reshape(D, C * p * p)  # (D, C p p), (c, i, j) order
    tokens = patches @ kernel.T + state["x_embedder.proj.bias"]  # (N, T, D)
    # 2. positions
    tokens = tokens + position_table(h, D, dtype)[None]
    # 3.-5. conditioning
    t_emb = linear(
        silu(linear(timestep_features(t, dtype, timestep_shift), state, "t_embedder.mlp.0")),
        state,
        "t_embedder.mlp.2",
    )
    c = t_emb + state["y_embedder.embedding_table.weight"][y]  # (N, D)
    act = gelu_tanh if gelu == "tanh" else gelu_exact
    # 6. blocks
    depth = sum(1 for key in state if key.endswith(".attn.qkv.weight"))
    for i in range(depth):
        b = f"blocks.{i}"
        mod = linear(silu(c), state, f"{b}.adaLN_modulation.1")  # (N, 6D)
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = (
            mod[:, j * D : (j + 1) * D][:, None] for j in range(6)
        )
        h_attn = attention(
            layer_norm(tokens) * (1 + scale_msa) + shift_msa, state, f"{b}.attn", num_heads
        )
        tokens = tokens + gate_msa * h_attn
        h_mlp = layer_norm(tokens, mlp_norm_eps) * (1 + scale_mlp) + shift_mlp
        h_mlp = linear(act(linear(h_mlp, state, f"{b}.mlp.fc1")), state, f"{b}.mlp.fc2")
        tokens = tokens + gate_mlp * h_mlp
    # 7. final layer
    mod = linear(silu(c), state, "final_layer.adaLN_modulation.1")  # (N, 2D)
    shift, scale = mod[:, None, :D], mod[:, None, D:]
    out = linear(
        layer_norm(tokens) * (1 + scale) + shift, state, "final_layer.linear"
    )  # (N, T, p p C')
    # 8. unpatchify: token (r, c) value (i, j, ch) -> pixel (r p + i, c p + j) of channel ch
    C_out = out.shape[-1] // (p * p)
    out = out.reshape(N, h, w, p, p, C_out)  # (n, r, c, i, j, ch)
    return out.permute(0, 5, 1, 3, 2, 4).reshape(N, C_out, h * p, w * p)


def random_reference_state(
    *,
    hidden: int = 32,
    depth: int = 2,
    patch: int = 2,
    channels: int = 4,
    image_size: int = 8,
    num_classes: int = 10,
    learn_sigma: bool = True,
    mlp_ratio: float = 4.0,
    dtype: torch.dtype = torch.float64,
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """A reference-layout state dict with random weights (none zero, unlike a fresh adaLN-Zero
    model, so every term of the forward matters) and the reference's ``pos_embed``."""
    g = torch.Generator().manual_seed(seed)
    D, p, C = hidden, patch, channels
    C_out = 2 * C if learn_sigma else C
    mlp = int(D * mlp_ratio)

    def rnd(*shape: int, std: float = 0.1) -> torch.Tensor:
        return (torch.randn(*shape, generator=g, dtype=torch.float64) * std).to(dtype)

    state = {
        "x_embedder.proj.weight": rnd(D, C, p, p, std=0.3),
        "x_embedder.proj.bias": rnd(D),
        "pos_embed": position_table(image_size // p, D, torch.float64)[None].to(dtype),
        "t_embedder.mlp.0.weight": rnd(D, 256),
        "t_embedder.mlp.0.bias": rnd(D),
        "t_embedder.mlp.2.weight": rnd(D, D, std=0.2),
        "t_embedder.mlp.2.bias": rnd(D),
        "y_embedder.embedding_table.weight": rnd(num_classes + 1, D, std=0.5),
        "final_layer.adaLN_modulation.1.weight": rnd(2 * D, D),
        "final_layer.adaLN_modulation.1.bias": rnd(2 * D),
        "final_layer.linear.weight": rnd(p * p * C_out, D, std=0.2),
        "final_layer.linear.bias": rnd(p * p * C_out),
    }
    for i in range(depth):
        b = f"blocks.{i}"
        state |= {
            f"{b}.attn.qkv.weight": rnd(3 * D, D, std=0.2),
            f"{b}.attn.qkv.bias": rnd(3 * D),
            f"{b}.attn.proj.weight": rnd(D, D, std=0.2),
            f"{b}.attn.proj.bias": rnd(D),
            f"{b}.mlp.fc1.weight": rnd(mlp, D, std=0.2),
            f"{b}.mlp.fc1.bias": rnd(mlp),
            f"{b}.mlp.fc2.weight": rnd(D, mlp, std=0.1),
            f"{b}.mlp.fc2.bias": rnd(D),
            f"{b}.adaLN_modulation.1.weight": rnd(6 * D, D, std=0.2),
            f"{b}.adaLN_modulation.1.bias": rnd(6 * D),
        }
    return state
