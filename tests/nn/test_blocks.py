"""ADM's residual blocks: BigGAN-style resampling inside the block, rescaled residuals, AdaGN."""

import pytest
import torch
import torch.nn.functional as F

from difflab.nn import ResBlock
from difflab.nn.blocks import enlarge, halve


def randomised(block: ResBlock) -> ResBlock:
    """The block with every parameter drawn at random (its last conv is no longer zero)."""
    torch.manual_seed(1)
    with torch.no_grad():
        for p in block.parameters():
            p.normal_(0, 0.3)
    return block


@pytest.mark.parametrize(
    ("size", "resample", "target", "expected"),
    [
        (28, "down", None, 14),
        (7, "down", None, 4),
        (25, "down", None, 13),
        (7, "up", (14, 14), 14),
        (4, "up", (7, 7), 7),
        (13, "up", (25, 25), 25),
        (5, "up", None, 10),
    ],
)
def test_resampling_blocks_give_the_sizes_of_downsample_and_upsample(
    size, resample, target, expected
):
    """Down: ceil(H/2), as the stride-2 convolution; up: the given (skip's) size, else 2H, so
    7 -> 14 -> 28 and 25 -> 13 -> 25 round-trip. Fails if the pooling floors odd sides."""
    block = ResBlock(4, 6, 8, resample=resample)
    out = block(torch.randn(2, 4, size, size), torch.randn(2, 8), target)
    assert out.shape == (2, 6, expected, expected)


@pytest.mark.parametrize("resample", ["down", "up"])
def test_a_resampling_block_starts_as_the_resampled_identity(resample):
    """The zero-initialised last convolution leaves skip(x) resampled: x pooled or enlarged.
    Fails if conv_out starts random or the skip path is not resampled with the hidden one."""
    block = ResBlock(4, 4, 8, resample=resample)
    x = torch.randn(2, 4, 7, 7)
    out = block(x, torch.randn(2, 8), (14, 14))
    expected = halve(x) if resample == "down" else enlarge(x, (14, 14))
    assert torch.equal(out, expected)


def test_halving_averages_the_pixels_inside_an_odd_edge():
    """The 2x2 window cut by an odd edge averages only its pixels (no zero padding counted)."""
    x = torch.arange(9.0).reshape(1, 1, 3, 3)
    assert halve(x).flatten().tolist() == [2.0, 3.5, 6.5, 8.0]


@pytest.mark.parametrize("resample", ["down", "up"])
def test_the_hidden_path_resamples_after_the_first_norm_and_activation(resample):
    """ADM's order: norm, SiLU, resample, conv (both paths resampled). Fails if the block
    resamples before the norm or after the first convolution, or forgets the skip path."""
    block = randomised(ResBlock(4, 6, 8, resample=resample))
    x, emb = torch.randn(2, 4, 7, 7), torch.randn(2, 8)
    resampled = halve if resample == "down" else lambda t: enlarge(t, (13, 13))
    h = block.conv_in(resampled(F.silu(block.norm_in(x))))
    scale, shift = block.emb_proj(F.silu(emb))[:, :, None, None].chunk(2, dim=1)
    h = block.conv_out(F.silu(block.norm_out(h) * (1 + scale) + shift))
    expected = block.skip(resampled(x)) + h
    assert torch.allclose(block(x, emb, (13, 13)), expected, atol=1e-6)


@pytest.mark.parametrize("resample", ["none", "down", "up"])
def test_rescaled_residuals_divide_the_output_by_sqrt_2(resample):
    """Same weights with and without ``rescale``: the outputs differ by exactly 1/sqrt(2).
    Fails if the factor is applied to one path only or not at all."""
    plain = randomised(ResBlock(4, 6, 8, resample=resample))
    scaled = ResBlock(4, 6, 8, resample=resample, rescale=True)
    scaled.load_state_dict(plain.state_dict())
    x, emb = torch.randn(2, 4, 6, 6), torch.randn(2, 8)
    assert torch.allclose(scaled(x, emb), plain(x, emb) * 2**-0.5, atol=1e-6)


def test_addition_instead_of_adagn_adds_the_projected_embedding_before_the_norm():
    """``scale_shift=False`` (Table 3's alternative to AdaGN): norm(h + W emb), no scale."""
    block = randomised(ResBlock(4, 4, 8, scale_shift=False))
    assert block.emb_proj.out_features == 4  # one value per channel, not (scale, shift)
    x, emb = torch.randn(2, 4, 5, 5), torch.randn(2, 8)
    h = block.conv_in(F.silu(block.norm_in(x))) + block.emb_proj(F.silu(emb))[:, :, None, None]
    expected = x + block.conv_out(F.silu(block.norm_out(h)))
    assert torch.allclose(block(x, emb), expected, atol=1e-6)


def test_an_unknown_resample_mode_is_refused():
    with pytest.raises(ValueError, match="resample"):
        ResBlock(4, 4, 8, resample="sideways")
