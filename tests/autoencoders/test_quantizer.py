"""The vector quantiser: the seed's equations, the EMA update, restarts, k-means, DDP agreement."""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from difflab.autoencoders import VectorQuantizer, kmeans, nearest_code, perplexity_of
from difflab.errors import DifflabError


def test_nearest_code_matches_brute_force():
    generator = torch.Generator().manual_seed(0)
    z = torch.randn(300, 5, generator=generator)
    codebook = torch.randn(40, 5, generator=generator)
    brute = torch.stack([((codebook - row) ** 2).sum(1).argmin() for row in z])
    assert torch.equal(nearest_code(z, codebook), brute)


def test_quantised_values_are_codebook_rows_and_indices_point_at_them():
    torch.manual_seed(0)
    quantizer = VectorQuantizer(16, 3).eval()
    z_e = torch.randn(2, 3, 4, 5)
    out = quantizer(z_e)
    assert out.indices.shape == (2, 4, 5)
    expected = quantizer.codebook[out.indices].permute(0, 3, 1, 2)
    torch.testing.assert_close(out.z_q, expected)
    torch.testing.assert_close(quantizer.lookup(out.indices), expected)


def test_straight_through_gradient_is_the_decoders_gradient_at_z_q():
    torch.manual_seed(0)
    quantizer = VectorQuantizer(8, 4).eval()
    decoder = torch.nn.Conv2d(4, 2, 3, padding=1)
    z_e = torch.randn(1, 4, 3, 3, requires_grad=True)
    out = quantizer(z_e)
    decoder(out.z_q).square().sum().backward()
    z_q = quantizer.lookup(out.indices).detach().requires_grad_(True)
    decoder(z_q).square().sum().backward()
    torch.testing.assert_close(z_e.grad, z_q.grad)
    # and numerically: a finite difference of the decoder's loss at z_q
    step = 1e-3
    bump = torch.zeros_like(z_q)
    bump[0, 1, 2, 0] = step
    with torch.no_grad():
        plus = decoder(z_q + bump).square().sum()
        minus = decoder(z_q - bump).square().sum()
    assert abs((plus - minus).item() / (2 * step) - z_e.grad[0, 1, 2, 0].item()) < 1e-2


def test_each_loss_term_trains_only_what_the_seed_says():
    torch.manual_seed(0)
    quantizer = VectorQuantizer(8, 4, update="loss").train()
    encoder = torch.nn.Conv2d(1, 4, 1)
    x = torch.randn(2, 1, 3, 3)

    def grads(term: str) -> tuple[bool, bool]:
        encoder.zero_grad(), quantizer.zero_grad()
        out = quantizer(encoder(x))
        getattr(out, term).backward()
        encoder_grad = encoder.weight.grad is not None and encoder.weight.grad.abs().sum() > 0
        codebook_grad = (
            quantizer.codebook.grad is not None and quantizer.codebook.grad.abs().sum() > 0
        )
        return bool(encoder_grad), bool(codebook_grad)

    assert grads("commitment_loss") == (True, False)  # beta * ||z_e - sg(z_q)||^2: the encoder
    assert grads("codebook_loss") == (False, True)  # ||sg(z_e) - z_q||^2: the codebook


def test_ema_update_matches_its_formula():
    torch.manual_seed(0)
    decay, eps = 0.9, 1e-5
    quantizer = VectorQuantizer(3, 2, update="ema", ema_decay=decay, eps=eps).train()
    codebook = torch.tensor([[0.0, 0.0], [10.0, 10.0], [-10.0, 5.0]])
    quantizer._set_codes(torch.arange(3), codebook)
    z = torch.tensor([[1.0, 0.0], [0.0, 1.0], [9.0, 11.0]])  # two vectors to code 0, one to code 1
    quantizer(z.view(1, 3, 1, 2).permute(0, 3, 1, 2).contiguous().view(1, 2, 3, 1))
    counts = torch.tensor([2.0, 1.0, 0.0])
    sums = torch.tensor([[1.0, 1.0], [9.0, 11.0], [0.0, 0.0]])
    ema_count = decay * torch.ones(3) + (1 - decay) * counts
    ema_sum = decay * codebook + (1 - decay) * sums
    total = ema_count.sum()
    smoothed = (ema_count + eps) / (total + 3 * eps) * total
    torch.testing.assert_close(quantizer.ema_count, ema_count)
    torch.testing.assert_close(quantizer.ema_sum, ema_sum)
    torch.testing.assert_close(quantizer.codebook, ema_sum / smoothed[:, None])


def test_ema_z_q_is_the_codebook_before_this_steps_update():
    """Sonnet's VectorQuantizerEMA and vector-quantize-pytorch: quantise, then move the codebook."""
    torch.manual_seed(0)
    quantizer = VectorQuantizer(4, 3, update="ema", ema_decay=0.5).train()
    z_e = torch.randn(2, 3, 4, 4)
    before = quantizer.codebook.clone()
    out = quantizer(z_e)
    gathered = before[out.indices].permute(0, 3, 1, 2)  # (B, D, H, W)
    torch.testing.assert_close(out.z_q, gathered, rtol=0, atol=1e-6)
    torch.testing.assert_close(out.commitment_loss, torch.mean((z_e - gathered) ** 2))
    after = quantizer.codebook[out.indices].permute(0, 3, 1, 2)
    assert (after - gathered).abs().max() > 0.1  # the update moved the codes that were used


def test_restart_revives_a_deliberately_dead_code():
    torch.manual_seed(0)
    quantizer = VectorQuantizer(4, 2, restart_after=3).train()
    far = torch.tensor([[0.0, 0.0], [0.1, 0.0], [0.0, 0.1], [1e6, 1e6]])  # code 3: never nearest
    quantizer._set_codes(torch.arange(4), far)
    z_e = torch.randn(1, 2, 4, 4) * 0.1
    for _ in range(3):
        quantizer(z_e)
    assert int(quantizer.restarts) >= 1
    revived = quantizer.codebook[3]
    assert revived.abs().max() < 1  # re-seeded from an encoder output
    flat = z_e.permute(0, 2, 3, 1).reshape(-1, 2)
    assert (flat - revived).abs().sum(1).min() < 1e-6
    assert int(quantizer.steps_unused[3]) == 0


def test_no_training_updates_in_eval_mode():
    quantizer = VectorQuantizer(4, 2, update="ema", restart_after=1, kmeans_init=True).eval()
    before = quantizer.codebook.clone()
    quantizer(torch.randn(2, 2, 3, 3))
    assert torch.equal(quantizer.codebook, before)


def test_kmeans_initialisation_places_codes_on_the_clusters():
    torch.manual_seed(0)
    centres = torch.tensor([[5.0, 5.0], [-5.0, 5.0], [0.0, -5.0]])
    points = torch.cat([c + 0.1 * torch.randn(50, 2) for c in centres])
    found = kmeans(points, 3)
    distances = torch.cdist(centres, found).min(1).values
    assert distances.max() < 0.2
    quantizer = VectorQuantizer(3, 2, kmeans_init=True).train()
    quantizer(points.T.reshape(1, 2, 150, 1))
    assert bool(quantizer.initialized)
    assert torch.cdist(centres, quantizer.codebook).min(1).values.max() < 0.2


def test_perplexity_and_usage():
    perplexity, usage = perplexity_of(torch.tensor([0, 1, 2, 3]), 8)
    assert perplexity == pytest.approx(4.0) and usage == pytest.approx(0.5)


def test_bad_settings_are_refused():
    with pytest.raises(DifflabError, match="codebook update"):
        VectorQuantizer(4, 2, update="sgd")
    with pytest.raises(DifflabError, match="indices"):
        VectorQuantizer(4, 2).lookup(torch.tensor([[[4]]]))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _ddp_worker(rank: int, port: int, z_all: torch.Tensor, results: dict) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    torch.set_num_threads(1)
    torch.manual_seed(rank)  # different local RNGs: restarts must still agree
    quantizer = VectorQuantizer(6, 2, update="ema", restart_after=1).train()
    torch.manual_seed(0)
    quantizer._set_codes(torch.arange(6), torch.randn(6, 2))
    torch.manual_seed(rank)
    quantizer(z_all[rank : rank + 1])  # each rank sees its own half of the batch
    results[rank] = (quantizer.codebook.clone(), quantizer.ema_count.clone())
    dist.destroy_process_group()


def test_ddp_ranks_agree_and_match_one_process_on_the_whole_batch():
    z_all = torch.randn(2, 2, 3, 3)
    manager = mp.Manager()
    results = manager.dict()
    mp.spawn(_ddp_worker, args=(_free_port(), z_all, results), nprocs=2, join=True)
    (book0, count0), (book1, count1) = results[0], results[1]
    torch.testing.assert_close(count0, count1)
    torch.testing.assert_close(book0, book1)
    # the EMA counts are those of one process quantising both halves at once
    single = VectorQuantizer(6, 2, update="ema", restart_after=1).train()
    torch.manual_seed(0)
    single._set_codes(torch.arange(6), torch.randn(6, 2))
    single(z_all)
    torch.testing.assert_close(count0, single.ema_count)
