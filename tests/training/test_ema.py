"""The EMA of the weights, checked against its formula written out here."""

from __future__ import annotations

import torch

from difflab.training.ema import EMA


def test_ema_follows_its_formula_with_warm_up_and_copies_buffers():
    """After update n: shadow = d_n shadow + (1 - d_n) w with d_n = min(decay, (1 + n) / (10 + n));
    buffers are copied. Fails if the shadow and the weights swap places in the average, or if the
    warm-up is dropped (tried: both)."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    ema = EMA(net, decay=0.9)
    expected = [p.detach().clone().double() for p in net.parameters()]
    for n in range(1, 31):
        with torch.no_grad():
            for p in net.parameters():
                p.add_(torch.randn_like(p))
        net(torch.randn(5, 3))  # moves BatchNorm's running statistics
        ema.update(net)
        d = min(0.9, (1 + n) / (10 + n))
        expected = [
            d * s + (1 - d) * p.detach().double()
            for s, p in zip(expected, net.parameters(), strict=True)
        ]
        for shadow, want in zip(ema.module.parameters(), expected, strict=True):
            torch.testing.assert_close(shadow.double(), want, rtol=1e-5, atol=1e-6)
    assert torch.equal(ema.module[1].running_mean, net[1].running_mean)
    assert ema.module[1].num_batches_tracked == 30
    assert not any(p.requires_grad for p in ema.module.parameters())
    assert ema.state_dict().keys() == net.state_dict().keys()


def test_ema_without_warm_up_uses_the_constant_decay_from_the_first_update():
    """``warmup=False``: shadow = decay shadow + (1 - decay) w from update 1 on. Fails if the
    flag is ignored (the warm-up's d_1 = 2/11 would move the shadow five times as far)."""
    net = torch.nn.Linear(2, 2)
    ema = EMA(net, decay=0.9, warmup=False)
    before = [p.detach().clone() for p in net.parameters()]
    with torch.no_grad():
        for p in net.parameters():
            p.add_(1.0)
    ema.update(net)
    assert ema.current_decay() == 0.9
    for shadow, old in zip(ema.module.parameters(), before, strict=True):
        torch.testing.assert_close(shadow, old + 0.1)
