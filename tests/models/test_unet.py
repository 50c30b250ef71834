import pytest
import torch

from difflab.config import config_to_dict
from difflab.diffusion import (
    NULL_LABEL,
    Conditioning,
    Denoiser,
    NoiseSchedule,
    denoising_loss,
    timestep_sequence,
)
from difflab.errors import DifflabError
from difflab.io.checkpoint import (
    load_checkpoint,
    load_weights_strict,
    save_checkpoint,
    split_prefix,
    with_prefix,
)
from difflab.io.weights import resolve_checkpoint
from difflab.models import (
    PRESETS,
    UNet,
    UNetConfig,
    build_model,
    config_from_dict,
    model_config,
)
from difflab.nn import ResBlock, SpatialSelfAttention, SpatialTransformer
from difflab.samplers import ClassifierFreeGuidance, ddim_sample


def tiny(**overrides) -> UNet:
    return build_model(*model_config("unet-tiny", **overrides))


def perturb_zero_inits(net: UNet) -> UNet:
    """Give the zero-initialised output convolutions random weights, so every path matters."""
    torch.manual_seed(0)
    for module in net.modules():
        if isinstance(module, ResBlock):
            torch.nn.init.normal_(module.conv_out.weight, std=0.1)
    torch.nn.init.normal_(net.conv_out.weight, std=0.1)
    return net


@pytest.mark.parametrize("size", [8, 25, 28, 32])
def test_output_has_the_input_shape_for_odd_and_even_sizes(size):
    net = tiny(image_size=size, in_channels=3, out_channels=3, channel_mult=(1, 2, 2))
    x = torch.randn(2, 3, size, size)
    assert net(x, torch.tensor([0, 999])).shape == (2, 3, size, size)


def attention_sides(net: UNet, blocks: torch.nn.ModuleList, x: torch.Tensor) -> list[int]:
    """The sides (pixels) at which ``blocks``' attention sites run in one forward of ``net``."""
    sides: list[int] = []
    for block in blocks:
        if isinstance(block, torch.nn.ModuleList) and isinstance(block[1], SpatialSelfAttention):
            block[1].register_forward_hook(lambda _, args, out: sides.append(args[0].shape[-1]))
    net(x, torch.tensor([0]))
    return sides


def test_odd_sizes_attend_at_the_same_sides_on_the_way_up_as_on_the_way_down():
    """13 -> 7 -> 4 down: attention at 7 on both paths (fails if the decoder counts its side as
    4 -> 8 -> 16 and so never meets the resolution 7)."""
    net = tiny(image_size=13, channel_mult=(1, 2, 2), attention_resolutions=(7,))
    x = torch.randn(1, 1, 13, 13)
    assert attention_sides(net, net.down_blocks, x) == [7]
    assert attention_sides(net, net.up_blocks, x) == [7, 7]


def test_network_outputs_zero_at_initialisation():
    """Zero-initialised output convolution (ADM): the untrained model predicts eps = 0."""
    net = tiny()
    assert torch.count_nonzero(net(torch.randn(2, 1, 28, 28), torch.tensor([1, 2]))) == 0


def test_residual_and_attention_blocks_start_as_the_identity():
    block = ResBlock(8, 8, emb_dim=16)
    x = torch.randn(2, 8, 5, 5)
    assert torch.equal(block(x, torch.randn(2, 16)), x)
    assert torch.equal(SpatialSelfAttention(8, num_heads=2)(x), x)


def test_attention_matches_a_plain_softmax_implementation():
    torch.manual_seed(0)
    attention = SpatialSelfAttention(8, num_heads=2)
    torch.nn.init.normal_(attention.proj.weight)
    x = torch.randn(2, 8, 3, 5)
    tokens = attention.norm(x).flatten(2).transpose(1, 2)  # (B, 15, 8)
    q, k, v = attention.qkv(tokens).chunk(3, dim=-1)
    heads = [
        torch.softmax(
            q[..., h * 4 : (h + 1) * 4] @ k[..., h * 4 : (h + 1) * 4].transpose(1, 2) / 2, -1
        )
        @ v[..., h * 4 : (h + 1) * 4]
        for h in range(2)
    ]
    expected = x + attention.proj(torch.cat(heads, -1)).transpose(1, 2).reshape(2, 8, 3, 5)
    assert torch.allclose(attention(x), expected, atol=1e-5)


def test_attention_is_placed_at_the_requested_resolutions():
    net = tiny(image_size=28, channel_mult=(1, 2, 2), attention_resolutions=(14,))
    sizes = []
    hooks = [
        m.register_forward_hook(lambda m, i, o: sizes.append(o.shape[-1]))
        for m in net.modules()
        if isinstance(m, SpatialSelfAttention) and m is not net.mid_attention
    ]
    net(torch.randn(1, 1, 28, 28), torch.tensor([5]))
    for hook in hooks:
        hook.remove()
    assert sizes and set(sizes) == {14}


def test_class_labels_change_the_output_and_the_null_label_is_reserved():
    net = tiny(num_classes=10)
    assert net.label_embed.num_embeddings == 11  # 10 classes + "no label"
    perturb_zero_inits(net)
    x, t = torch.randn(3, 1, 28, 28), torch.tensor([10, 10, 10])
    out_a = net(x, t, Conditioning(labels=torch.tensor([0, 1, NULL_LABEL])))
    out_b = net(x, t, Conditioning(labels=torch.tensor([5, 1, NULL_LABEL])))
    assert not torch.allclose(out_a[0], out_b[0])
    assert torch.allclose(out_a[1:], out_b[1:])
    unlabelled = net(x, t, Conditioning())
    assert torch.allclose(unlabelled[2], out_a[2])  # no conditioning = the null label


def test_labels_out_of_range_are_rejected():
    net = tiny(num_classes=3)
    with pytest.raises(DifflabError, match=r"0\.\.2"):
        net(torch.randn(1, 1, 28, 28), torch.tensor([1]), Conditioning(labels=torch.tensor([3])))


def test_presets_build_and_unknown_keys_are_named():
    for name in (name for name, (arch, _) in PRESETS.items() if arch == "unet"):
        arch, config = model_config(name)
        assert arch == "unet" and isinstance(config, UNetConfig)
    with pytest.raises(DifflabError, match="base_chanels"):
        model_config("unet-tiny", base_chanels=4)
    with pytest.raises(DifflabError, match=r"model\.base_channels must be an integer"):
        model_config("unet-tiny", base_channels="wide")
    with pytest.raises(DifflabError, match="unknown model preset"):
        model_config("unet-huge")


def test_dropout_is_active_only_in_training_mode():
    net = perturb_zero_inits(tiny(dropout=0.5))
    x, t = torch.randn(1, 1, 28, 28), torch.tensor([3])
    net.eval()
    assert torch.equal(net(x, t), net(x, t))
    net.train()
    assert not torch.equal(net(x, t), net(x, t))


# --- cross-attention conditioning (Latent Diffusion): context_dim > 0 ----------------------------

TOKEN_WIDTH = 16  # unet-tiny-text's context_dim


def text_unet(**overrides) -> UNet:
    """unet-tiny-text on 3-channel 8x8 images, transformer blocks at 4x4 and in the middle."""
    values = dict(image_size=8, in_channels=3, out_channels=3, attention_resolutions=(4,))
    torch.manual_seed(0)
    return build_model(*model_config("unet-tiny-text", **{**values, **overrides}))


def randomise_zero_inits(net: torch.nn.Module) -> torch.nn.Module:
    """Random values for every all-zero parameter (output projections, null tokens)."""
    torch.manual_seed(1)
    with torch.no_grad():
        for parameter in net.parameters():
            if not parameter.any():
                parameter.normal_(std=0.1)
    return net


def captions(batch: int = 3, length: int = 4, seed: int = 2) -> Conditioning:
    """Token sequences with 4, 2 and 0 real tokens (the last one a dropped caption)."""
    generator = torch.Generator().manual_seed(seed)
    tokens = torch.randn(batch, length, TOKEN_WIDTH, generator=generator)
    real = torch.tensor([length, 2, 0, 1][:batch])
    return Conditioning(tokens=tokens, token_mask=torch.arange(length) < real[:, None])


def noisy_images(batch: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(3)
    return torch.randn(batch, 3, 8, 8, generator=generator), torch.tensor([5, 50, 95][:batch])


def test_conditioning_fields_name_what_the_network_reads():
    assert tiny().conditioning_fields == ()
    assert tiny(num_classes=3).conditioning_fields == ("labels",)
    assert text_unet().conditioning_fields == ("tokens", "token_mask")
    assert text_unet(num_classes=3).conditioning_fields == ("labels", "tokens", "token_mask")


def test_without_context_dim_the_network_is_the_plain_adm_unet():
    """Checkpoints saved before context_dim (their JSON lacks it) rebuild the same modules and
    load strictly; tokens given to such a network are ignored."""
    path = resolve_checkpoint("mnist_ddim")
    tensors, meta = load_checkpoint(path, kind="diffusion")
    assert "context_dim" not in meta["model"]
    config = config_from_dict("unet", meta["model"])
    assert config.context_dim == 0 and config.transformer_depth == 1
    net = build_model("unet", config)
    load_weights_strict(net, split_prefix(tensors, "ema") or split_prefix(tensors, "model"), path)
    assert not any(isinstance(m, SpatialTransformer) for m in net.modules())
    plain = perturb_zero_inits(tiny(image_size=8, attention_resolutions=(4,))).eval()
    x, t = torch.randn(3, 1, 8, 8), torch.tensor([1, 2, 3])
    assert torch.equal(plain(x, t, captions()), plain(x, t, Conditioning()))


def test_transformer_blocks_take_the_attention_sites_and_start_as_the_identity():
    net = text_unet(transformer_depth=2)
    sites = [m for m in net.modules() if isinstance(m, SpatialTransformer)]
    assert net.mid_attention in sites and len(sites) == 4  # 4x4: one down, two up; the middle
    assert all(len(site.blocks) == 2 for site in sites)
    assert not any(isinstance(m, SpatialSelfAttention) for m in net.modules())
    x, t = noisy_images()
    assert torch.count_nonzero(net(x, t, captions())) == 0


def test_the_tokens_steer_the_output_and_padding_does_not():
    net = randomise_zero_inits(text_unet()).eval()
    x, t = noisy_images()
    cond = captions()
    out = net(x, t, cond)
    tokens = cond.tokens.clone()
    tokens[1, 0] += 1.0  # a real token of sample 1
    moved = net(x, t, Conditioning(tokens=tokens, token_mask=cond.token_mask))
    assert not torch.allclose(moved[1], out[1], atol=1e-4)
    assert torch.equal(moved[[0, 2]], out[[0, 2]])
    padded = cond.tokens.clone()
    padded[1, 2:] = 100.0  # sample 1's padding
    padded[2] = -3.0  # sample 2's tokens are all masked out
    same = net(x, t, Conditioning(tokens=padded, token_mask=cond.token_mask))
    assert torch.allclose(same, out, atol=1e-5)
    empty = Conditioning(
        tokens=torch.zeros(3, 0, TOKEN_WIDTH), token_mask=torch.zeros(3, 0, dtype=torch.bool)
    )
    assert torch.allclose(net(x, t, empty)[2], out[2], atol=1e-5)  # dropped = no tokens at all


def test_missing_or_misshapen_tokens_are_one_clear_error():
    net = text_unet()
    x, t = noisy_images()
    cond = captions()
    with pytest.raises(DifflabError, match=r"context_dim=16.*Conditioning\(tokens="):
        net(x, t, Conditioning(labels=torch.tensor([0, 1, 2])))
    with pytest.raises(DifflabError, match=r"\(3, 4, 8\).*\(B=3, L, 16\)"):
        net(x, t, Conditioning(tokens=cond.tokens[..., :8], token_mask=cond.token_mask))
    with pytest.raises(DifflabError, match=r"\(B=2, L, 16\)"):
        net(x[:2], t[:2], cond)
    with pytest.raises(DifflabError, match="token_mask has shape"):
        net(x, t, Conditioning(tokens=cond.tokens, token_mask=cond.token_mask[:, :2]))
    with pytest.raises(DifflabError, match="context_dim must be 0 or more"):
        tiny(context_dim=-1)
    with pytest.raises(DifflabError, match="transformer_depth=2"):
        tiny(transformer_depth=2)


def test_gradients_reach_every_parameter_of_the_cross_attention():
    net = randomise_zero_inits(text_unet(num_classes=3))
    x0, _ = noisy_images()
    cond = captions()
    cond = Conditioning(
        labels=torch.tensor([0, 1, 2]), tokens=cond.tokens, token_mask=cond.token_mask
    )
    schedule = NoiseSchedule.from_name("linear", 100)
    generator = torch.Generator().manual_seed(4)
    denoising_loss(net, schedule, x0.clamp(-1, 1), cond, generator=generator).backward()
    starved = [name for name, p in net.named_parameters() if p.grad is None or not p.grad.any()]
    assert not starved
    assert any("cross_attention.to_k" in name for name, _ in net.named_parameters())


def test_training_learns_a_target_only_the_tokens_explain():
    """Each sample's target is +P or -P (P a fixed horizontal ramp) by which of two words its
    caption holds (with masked-out noise tokens beside it). A network blind to the tokens cannot
    get below the loss of predicting 0, mean(P^2) / 4; a few Adam steps get well under it."""
    torch.manual_seed(0)
    net = build_model(*model_config("unet-tiny-text", image_size=4, attention_resolutions=(4,)))
    generator = torch.Generator().manual_seed(5)
    words = torch.randn(2, TOKEN_WIDTH, generator=generator)
    which = torch.arange(8) % 2
    ramp = 0.5 * torch.linspace(-1, 1, 4)  # (W,)
    target = torch.where(which == 0, 1.0, -1.0)[:, None, None, None] * ramp  # (8, 1, 4, 4)
    blind_loss = ramp.square().mean().item()
    mask = torch.arange(3) < 1  # one real token, two padded
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-2, foreach=True)
    losses = []
    for _ in range(20):
        tokens = torch.randn(8, 3, TOKEN_WIDTH, generator=generator)  # (B, L, D)
        tokens[:, 0] = words[which]
        cond = Conditioning(tokens=tokens, token_mask=mask.expand(8, 3))
        x = 0.1 * torch.randn(8, 1, 4, 4, generator=generator)
        t = torch.randint(0, 100, (8,), generator=generator)
        loss = (net(x, t, cond) - target).square().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[0] == pytest.approx(blind_loss)  # zero output at initialisation
    assert min(losses[-3:]) < 0.5 * blind_loss


def test_classifier_free_guidance_with_captions_of_unequal_length():
    """The unchanged CFG wrapper and DDIM sampler; the captions were padded by Conditioning.cat,
    and the batched (dropped, conditional) forward equals the two branches run apart."""
    net = randomise_zero_inits(text_unet()).eval()
    denoiser = Denoiser(net, NoiseSchedule.from_name("linear", 100))
    generator = torch.Generator().manual_seed(6)
    short = Conditioning(
        tokens=torch.randn(1, 2, TOKEN_WIDTH, generator=generator),
        token_mask=torch.ones(1, 2, dtype=torch.bool),
    )
    cond = Conditioning.cat([short, captions(batch=2, length=5)])  # L = 5, sample 0 padded
    assert cond.tokens.shape == (3, 5, TOKEN_WIDTH)
    guided = ClassifierFreeGuidance(denoiser, guidance_scale=3.0)
    x_t, t = noisy_images()
    with torch.no_grad():
        both = guided(x_t, t, cond)
        apart = [denoiser(x_t, t, c).eps for c in (cond.dropped(), cond)]
        assert torch.allclose(both.eps, -2.0 * apart[0] + 3.0 * apart[1], atol=1e-5)
        timesteps = timestep_sequence(100, 4)
        images = ddim_sample(guided, x_t, timesteps, cond)
        plain = ddim_sample(denoiser, x_t, timesteps, cond)
    assert images.shape == x_t.shape and torch.isfinite(images).all()
    assert not torch.allclose(images, plain)


def test_float64_and_bf16_autocast_run_with_tokens():
    net = randomise_zero_inits(text_unet()).eval()
    x, t = noisy_images()
    cond = captions()
    reference = net(x, t, cond)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = net(x, t, cond)
    assert torch.isfinite(low).all()
    assert (low.float() - reference).abs().max() < 0.05 * reference.abs().max()
    double = net.double()(x.double(), t, cond)  # float32 tokens are cast to x_t's dtype
    assert double.dtype == torch.float64
    assert torch.allclose(double.float(), reference, atol=1e-5)


def test_a_text_unet_checkpoint_round_trips(tmp_path):
    net = randomise_zero_inits(text_unet(transformer_depth=2)).eval()
    path = save_checkpoint(
        tmp_path / "net.safetensors",
        with_prefix(net.state_dict(), "model"),
        {"kind": "diffusion", "arch": "unet", "model": config_to_dict(net.config)},
    )
    tensors, meta = load_checkpoint(path, kind="diffusion")
    config = config_from_dict("unet", meta["model"])
    assert config == net.config and config.context_dim == TOKEN_WIDTH
    restored = build_model("unet", config).eval()
    load_weights_strict(restored, split_prefix(tensors, "model"), path)
    x, t = noisy_images()
    assert torch.equal(restored(x, t, captions()), net(x, t, captions()))
