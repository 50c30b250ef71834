"""The vector quantiser of VQ-VAE (van den Oord et al. 2017, sec. 3.1-3.2 and appendix A.1).

Each encoder output vector z_e (one per position of the latent grid) is replaced by its nearest
codebook entry, ``z_q = C_k`` with ``k = argmin_j ||z_e - C_j||^2`` (eq. 1-2). Gradients reach the
encoder through the straight-through estimator ``z_e + sg(z_q - z_e)``: the forward value is z_q,
the backward is the identity. The two quantisation terms of the loss (eq. 3) are returned
separately and *unweighted*; :func:`difflab.autoencoders.vqvae.vqvae_loss` applies β to the
commitment term, the one that trains the encoder:

    commitment_loss = ||z_e - sg(z_q)||^2   (trains the encoder; weighted by β = 0.25)
    codebook_loss   = ||sg(z_e) - z_q||^2   (trains the codebook; weight 1)

Codebook options beyond the paper's main text:

- ``update="ema"`` (appendix A.1): the codebook is a buffer moved by exponential moving averages of
  the assignment counts and of the sums of the vectors assigned, ``N_i <- γ N_i + (1-γ) n_i``,
  ``m_i <- γ m_i + (1-γ) Σ_j z_e,j``, ``C_i = m_i / N_i`` (γ = ``ema_decay``; the counts get
  Laplace smoothing with ``eps`` so an unused code never divides by zero). The codebook loss is
  then zero and unused. The returned z_q (and the commitment loss) use the codebook *before* this
  step's update, ``z_q = C_k`` of the code z_e was matched to, as in Sonnet's
  ``VectorQuantizerEMA`` and vector-quantize-pytorch; the update changes the next call's codes.
  (``weights/vqvae_mnist.safetensors`` was trained when z_q was gathered after the update;
  in eval mode there is no update, so its inference is unaffected.)
- ``kmeans_init``: the first training batch's encoder outputs are clustered (k-means, a few Lloyd
  iterations) and the centroids become the codebook.
- ``restart_after`` = N > 0: a code assigned no vector for N consecutive training steps is re-seeded
  with a random encoder output of the current batch (a "dead-code restart").

Under ``torch.distributed`` (DDP training) the counts and sums behind the EMA update, the usage
statistics and the restart counters are all-reduced in training mode (an eval-mode call, e.g. on
rank 0 alone, talks to no other process), and codebook changes that draw random
vectors (k-means initialisation, restarts) are made on rank 0 and broadcast, so every rank holds
the same codebook after every step.
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from difflab.errors import DifflabError

UPDATES: tuple[str, ...] = ("loss", "ema")
KMEANS_ITERATIONS = 10


@dataclasses.dataclass
class QuantizerOutput:
    """What one quantisation of a latent grid returns.

    ``z_q`` is the straight-through tensor (value z_q, gradient of z_e); ``z_q_value`` carries no
    gradient to the encoder. Losses are means over all elements, unweighted.
    """

    z_q: torch.Tensor  # (B, D, H, W)
    indices: torch.Tensor  # (B, H, W) int64
    commitment_loss: torch.Tensor  # scalar
    codebook_loss: torch.Tensor  # scalar (zero with EMA updates)
    perplexity: torch.Tensor  # scalar: exp(entropy of the batch's code histogram)
    usage: torch.Tensor  # scalar: fraction of the codebook used in the batch


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    if _distributed():
        dist.all_reduce(tensor)
    return tensor


def _broadcast_from_rank0(tensor: torch.Tensor) -> None:
    if _distributed():
        dist.broadcast(tensor, src=0)


def nearest_code(z: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """Index of the nearest codebook row (squared Euclidean) for every row of ``z``.

    ``||z - C_j||^2 = ||z||^2 - 2 z·C_j + ||C_j||^2``; the ``||z||^2`` term does not change the
    argmin and is left out, so the search is one matrix product.

    Shapes: z (N, D), codebook (K, D) -> (N,) int64.
    """
    scores = torch.addmm(
        codebook.pow(2).sum(1), z, codebook.t(), alpha=-2.0
    )  # (N, K): ||C_j||^2 - 2 z·C_j
    return scores.argmin(1)


def kmeans_plus_plus(vectors: torch.Tensor, num_clusters: int) -> torch.Tensor:
    """k-means++ seeding (Arthur & Vassilvitskii 2007): each new centre is drawn with probability
    proportional to the squared distance to the nearest centre so far. (N, D) -> (num_clusters, D).
    """
    first = torch.randint(0, vectors.shape[0], (1,))
    centres = [vectors[first]]  # each (1, D)
    nearest = (vectors - centres[0]).pow(2).sum(1)  # (N,) squared distance to the nearest centre
    for _ in range(num_clusters - 1):
        weights = nearest if nearest.sum() > 0 else torch.ones_like(nearest)
        pick = torch.multinomial(weights, 1)
        centres.append(vectors[pick])
        nearest = torch.minimum(nearest, (vectors - centres[-1]).pow(2).sum(1))
    return torch.cat(centres)


def kmeans(
    vectors: torch.Tensor, num_clusters: int, iterations: int = KMEANS_ITERATIONS
) -> torch.Tensor:
    """k-means of ``vectors`` (N, D) -> centroids (num_clusters, D).

    k-means++ seeding, then ``iterations`` Lloyd steps; an empty cluster keeps its previous
    centroid. Draws from the global torch RNG.
    """
    centroids = kmeans_plus_plus(vectors, num_clusters)  # (K, D)
    for _ in range(iterations):
        assignment = nearest_code(vectors, centroids)  # (N,)
        sums = torch.zeros_like(centroids).index_add_(0, assignment, vectors)  # (K, D)
        counts = torch.bincount(assignment, minlength=num_clusters).unsqueeze(1)  # (K, 1)
        centroids = torch.where(counts > 0, sums / counts.clamp(min=1), centroids)
    return centroids


class VectorQuantizer(nn.Module):
    """Nearest-neighbour quantisation of (B, D, H, W) latents against ``num_codes`` vectors of size D.

    Args:
        num_codes: codebook size K.
        code_dim: size D of each code (the encoder's output channels).
        update: ``"loss"`` (the codebook is a parameter trained by the codebook loss) or ``"ema"``
            (a buffer updated by moving averages, appendix A.1).
        ema_decay: γ of the EMA update.
        eps: Laplace smoothing of the EMA counts.
        kmeans_init: initialise the codebook by k-means on the first training batch.
        restart_after: re-seed a code unused for this many consecutive training steps (0: never).

    Training-time updates (EMA, k-means, restarts) happen only in ``train()`` mode.
    """

    def __init__(
        self,
        num_codes: int,
        code_dim: int,
        *,
        update: str = "loss",
        ema_decay: float = 0.99,
        eps: float = 1e-5,
        kmeans_init: bool = False,
        restart_after: int = 0,
    ) -> None:
        super().__init__()
        if update not in UPDATES:
            raise DifflabError(
                f"codebook update {update!r} is not one of {', '.join(UPDATES)}; use 'loss' or 'ema'."
            )
        if num_codes < 2 or code_dim < 1:
            raise DifflabError(
                f"a codebook needs num_codes >= 2 and code_dim >= 1, got {num_codes} and {code_dim}."
            )
        if not 0 < ema_decay < 1:
            raise DifflabError(f"the codebook's ema_decay must lie in (0, 1), got {ema_decay}.")
        if restart_after < 0:
            raise DifflabError(f"restart_after must be >= 0 steps, got {restart_after}.")
        self.num_codes, self.code_dim = num_codes, code_dim
        self.update, self.ema_decay, self.eps = update, ema_decay, eps
        self.kmeans_init, self.restart_after = kmeans_init, restart_after
        initial = torch.empty(num_codes, code_dim).uniform_(-1 / num_codes, 1 / num_codes)
        if update == "loss":
            self.codebook = nn.Parameter(initial)  # (K, D)
        else:
            self.register_buffer("codebook", initial)  # (K, D)
            # N_i = 1 and m_i = C_i at the start, so that C_i = m_i / N_i holds from step 0 and
            # a code that is never assigned keeps its value instead of drifting to m_i / eps
            self.register_buffer("ema_count", torch.ones(num_codes))  # (K,) N_i
            self.register_buffer("ema_sum", initial.clone())  # (K, D) m_i
        self.register_buffer("initialized", torch.tensor(not kmeans_init))
        self.register_buffer("steps_unused", torch.zeros(num_codes, dtype=torch.long))  # (K,)
        self.register_buffer("restarts", torch.zeros((), dtype=torch.long))  # codes re-seeded

    def extra_repr(self) -> str:
        return (
            f"num_codes={self.num_codes}, code_dim={self.code_dim}, update={self.update!r}, "
            f"kmeans_init={self.kmeans_init}, restart_after={self.restart_after}"
        )

    def lookup(self, indices: torch.Tensor) -> torch.Tensor:
        """Codes of an index grid: (B, H, W) int64 -> (B, D, H, W)."""
        if indices.numel() and (indices.min() < 0 or indices.max() >= self.num_codes):
            raise DifflabError(
                f"code indices must lie in 0..{self.num_codes - 1}, got values "
                f"{int(indices.min())}..{int(indices.max())}."
            )
        return F.embedding(indices, self.codebook).permute(0, 3, 1, 2)

    def forward(self, z_e: torch.Tensor) -> QuantizerOutput:
        """Quantise ``z_e`` (B, D, H, W); in training mode, update the codebook as configured."""
        batch, dim, height, width = z_e.shape
        if dim != self.code_dim:
            raise DifflabError(f"the quantiser expects {self.code_dim} channels, got {dim}.")
        with torch.autocast(z_e.device.type, enabled=False):
            z_e = z_e.float()
            flat = z_e.permute(0, 2, 3, 1).reshape(-1, dim)  # (N, D), N = B*H*W
            if self.training and not bool(self.initialized):
                self._initialize_by_kmeans(flat.detach())
            indices = nearest_code(flat.detach(), self.codebook.detach())  # (N,)
            # gathered before this step's codebook update: z_q is the code z_e was matched to
            z_q = F.embedding(indices, self.codebook).view(batch, height, width, dim)
            z_q = z_q.permute(0, 3, 1, 2)  # (B, D, H, W)
            counts = torch.bincount(indices, minlength=self.num_codes).float()  # (K,)
            if self.training:  # statistics of the whole global batch; in eval mode, local ones
                counts = _all_reduce_sum(counts)
                if self.update == "ema":
                    self._ema_update(flat.detach(), indices, counts)
                if self.restart_after:
                    self._restart_dead_codes(flat.detach(), counts)
            commitment = F.mse_loss(z_e, z_q.detach())
            codebook_loss = (
                F.mse_loss(z_q, z_e.detach()) if self.update == "loss" else z_e.new_zeros(())
            )
            probs = counts / counts.sum()
            perplexity = torch.exp(-(probs * torch.log(probs + 1e-10)).sum())
            usage = (counts > 0).float().mean()
        return QuantizerOutput(
            z_q=z_e + (z_q - z_e).detach(),  # straight-through estimator
            indices=indices.view(batch, height, width),
            commitment_loss=commitment,
            codebook_loss=codebook_loss,
            perplexity=perplexity,
            usage=usage,
        )

    @torch.no_grad()
    def _set_codes(self, rows: torch.Tensor, vectors: torch.Tensor) -> None:
        """Put ``vectors`` (R, D) into codebook rows ``rows`` (R,) (and restart their EMA state)."""
        self.codebook.data[rows] = vectors
        if self.update == "ema":
            self.ema_count[rows] = 1.0
            self.ema_sum[rows] = vectors

    @torch.no_grad()
    def _initialize_by_kmeans(self, flat: torch.Tensor) -> None:
        centroids = kmeans(flat, self.num_codes)  # (K, D)
        _broadcast_from_rank0(centroids)
        self._set_codes(torch.arange(self.num_codes, device=flat.device), centroids)
        self.initialized.fill_(True)

    @torch.no_grad()
    def _ema_update(self, flat: torch.Tensor, indices: torch.Tensor, counts: torch.Tensor) -> None:
        """Appendix A.1: N_i <- γN_i + (1-γ)n_i, m_i <- γm_i + (1-γ)Σz, C_i = m_i / N_i."""
        sums = _all_reduce_sum(torch.zeros_like(self.ema_sum).index_add_(0, indices, flat))
        self.ema_count.mul_(self.ema_decay).add_(counts, alpha=1 - self.ema_decay)
        self.ema_sum.mul_(self.ema_decay).add_(sums, alpha=1 - self.ema_decay)
        total = self.ema_count.sum()
        smoothed = (self.ema_count + self.eps) / (total + self.num_codes * self.eps) * total
        self.codebook.copy_(self.ema_sum / smoothed.unsqueeze(1))

    @torch.no_grad()
    def _restart_dead_codes(self, flat: torch.Tensor, counts: torch.Tensor) -> None:
        """Re-seed codes unused for ``restart_after`` steps with random current encoder outputs."""
        self.steps_unused.add_(1).masked_fill_(counts > 0, 0)
        dead = torch.nonzero(self.steps_unused >= self.restart_after).flatten()  # (R,)
        if dead.numel() == 0:
            return
        choice = torch.randint(0, flat.shape[0], (dead.numel(),), device=flat.device)
        vectors = flat[choice].clone()  # (R, D)
        _broadcast_from_rank0(vectors)
        self._set_codes(dead, vectors)
        self.steps_unused[dead] = 0
        self.restarts.add_(dead.numel())


def perplexity_of(indices: torch.Tensor, num_codes: int) -> tuple[float, float]:
    """(perplexity, fraction of codes used) of a whole set of code indices (any shape)."""
    counts = torch.bincount(indices.flatten(), minlength=num_codes).double()
    probs = counts / counts.sum()
    entropy = -(probs[probs > 0] * probs[probs > 0].log()).sum().item()
    return math.exp(entropy), float((counts > 0).double().mean())
