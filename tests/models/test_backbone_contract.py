"""The network contract every backbone passes: ``net(x_t, t, cond) -> (B, C, H, W)`` + ``.prediction``.

One test class, run for each backbone's tiny preset. A new backbone joins by adding its preset
(and the overrides that make it small) to ``BACKBONES``; nothing else changes. What is checked
is what samplers, guidance, training and checkpoints rely on, not how the network computes.
"""

from __future__ import annotations

from typing import Any

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
from difflab.io.checkpoint import (
    load_checkpoint,
    load_weights_strict,
    save_checkpoint,
    split_prefix,
    with_prefix,
)
from difflab.models import build_model, config_from_dict, model_config
from difflab.pipelines import DiffusionPipeline
from difflab.samplers import (
    SAMPLERS,
    ClassifierFreeGuidance,
    ClassifierGuidance,
    Guidance,
    ddim_sample,
    ddpm_sample,
)

# preset -> overrides that keep it tiny; every backbone runs on the same 3-channel 8x8 images
BACKBONES: dict[str, dict[str, Any]] = {
    "unet-tiny": dict(channel_mult=(1, 2), attention_resolutions=(4,)),
    "dit-tiny": dict(patch_size=2),
}
SIZE, CHANNELS, CLASSES = 8, 3, 4


# backbones that read more than labels join the wrapper x sampler x field test below
FIELD_BACKBONES: dict[str, dict[str, Any]] = {
    **BACKBONES,
    "unet-tiny-text": dict(channel_mult=(1, 2), attention_resolutions=(4,)),
}


def build(preset: str, **overrides: Any) -> torch.nn.Module:
    values = dict(image_size=SIZE, in_channels=CHANNELS, out_channels=CHANNELS, num_classes=CLASSES)
    torch.manual_seed(0)
    return build_model(*model_config(preset, **{**values, **FIELD_BACKBONES[preset], **overrides}))


def perturb_zero_inits(net: torch.nn.Module) -> torch.nn.Module:
    """Random values for every all-zero parameter (zero-initialised outputs, gates, biases)."""
    torch.manual_seed(1)
    with torch.no_grad():
        for parameter in net.parameters():
            if not parameter.any():
                parameter.normal_(std=0.1)
    return net


def inputs(batch: int = 4) -> tuple[torch.Tensor, torch.Tensor, Conditioning]:
    generator = torch.Generator().manual_seed(2)
    x_t = torch.randn(batch, CHANNELS, SIZE, SIZE, generator=generator)
    t = torch.randint(0, 100, (batch,), generator=generator)
    return x_t, t, Conditioning(labels=torch.arange(batch) % CLASSES)


class LinearNoisyClassifier(torch.nn.Module):
    """A fixed random linear map of x_t to class logits: enough to give guidance a gradient."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(4)
        self.linear = torch.nn.Linear(CHANNELS * SIZE * SIZE, CLASSES)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.linear(x_t.flatten(1))  # (B, K)


@pytest.fixture(params=list(BACKBONES))
def preset(request: pytest.FixtureRequest) -> str:
    return request.param


class TestBackboneContract:
    schedule = NoiseSchedule.from_name("linear", 100)

    def test_output_has_the_input_shape_and_a_prediction_type(self, preset):
        net = build(preset)
        x_t, t, cond = inputs()
        out = net(x_t, t, cond)
        assert out.shape == x_t.shape and out.dtype == torch.float32
        assert net.prediction in ("eps", "x0", "v")
        assert net.config.num_classes == CLASSES

    def test_output_is_zero_at_initialisation(self, preset):
        x_t, t, cond = inputs()
        assert torch.count_nonzero(build(preset)(x_t, t, cond)) == 0

    def test_ddim_and_ddpm_sampling_run(self, preset):
        denoiser = Denoiser(perturb_zero_inits(build(preset)).eval(), self.schedule)
        x_T, _, cond = inputs()
        timesteps = timestep_sequence(100, 4)
        with torch.no_grad():
            ddim = ddim_sample(denoiser, x_T, timesteps, cond, eta=0.0)
            ddpm = ddpm_sample(
                denoiser, x_T, timesteps, cond, generator=torch.Generator().manual_seed(0)
            )
        for images in (ddim, ddpm):
            assert images.shape == x_T.shape and torch.isfinite(images).all()
        assert not torch.allclose(ddim, ddpm)

    def test_classifier_free_and_classifier_guidance_run_unchanged(self, preset):
        """The same guidance wrappers and sampler code as for every other backbone."""
        denoiser = Denoiser(perturb_zero_inits(build(preset)).eval(), self.schedule)
        guided = ClassifierGuidance(
            ClassifierFreeGuidance(denoiser, guidance_scale=3.0),
            LinearNoisyClassifier(),
            classifier_scale=2.0,
        )
        x_T, _, cond = inputs()
        timesteps = timestep_sequence(100, 4)
        with torch.no_grad():
            plain = ddim_sample(denoiser, x_T, timesteps, cond)
            images = ddim_sample(guided, x_T, timesteps, cond)
        assert images.shape == x_T.shape and torch.isfinite(images).all()
        assert not torch.allclose(images, plain)

    def test_eval_mode_is_deterministic_even_with_dropout(self, preset):
        net = perturb_zero_inits(build(preset, dropout=0.5))
        x_t, t, cond = inputs()
        net.eval()
        assert torch.equal(net(x_t, t, cond), net(x_t, t, cond))
        net.train()
        assert not torch.equal(net(x_t, t, cond), net(x_t, t, cond))

    def test_each_sample_is_independent_of_the_rest_of_the_batch(self, preset):
        """What batched classifier-free guidance (cond and unconditional in one call) needs."""
        net = perturb_zero_inits(build(preset)).eval()
        x_t, t, cond = inputs()
        both = Conditioning.cat([cond, cond.dropped()])
        batched = net(torch.cat([x_t, x_t]), torch.cat([t, t]), both)
        assert torch.allclose(batched[:4], net(x_t, t, cond), atol=1e-5)
        assert torch.allclose(batched[4:], net(x_t, t, cond.dropped()), atol=1e-5)

    def test_class_conditioning_is_honoured(self, preset):
        net = perturb_zero_inits(build(preset)).eval()
        x_t, t, _ = inputs(3)
        a = net(x_t, t, Conditioning(labels=torch.tensor([0, 1, NULL_LABEL])))
        b = net(x_t, t, Conditioning(labels=torch.tensor([3, 1, NULL_LABEL])))
        assert not torch.allclose(a[0], b[0])
        assert torch.equal(a[1:], b[1:])
        assert torch.equal(net(x_t, t, Conditioning())[2], a[2])  # no labels = the null label
        unconditional = perturb_zero_inits(build(preset, num_classes=0)).eval()
        labelled = Conditioning(labels=torch.tensor([0, 1, 2]))
        assert torch.equal(unconditional(x_t, t, labelled), unconditional(x_t, t, Conditioning()))

    def test_bf16_autocast_works_and_stays_close(self, preset):
        net = perturb_zero_inits(build(preset)).eval()
        x_t, t, cond = inputs()
        reference = net(x_t, t, cond)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = net(x_t, t, cond)
            loss = denoising_loss(net, self.schedule, x_t.clamp(-1, 1), cond)
        loss.backward()
        assert low.shape == reference.shape and torch.isfinite(low).all()
        assert (low.float() - reference).abs().max() < 0.05 * reference.abs().max()
        assert all(torch.isfinite(p.grad).all() for p in net.parameters() if p.grad is not None)

    def test_gradients_reach_every_parameter(self, preset):
        net = perturb_zero_inits(build(preset))
        x0, _, cond = inputs()
        generator = torch.Generator().manual_seed(3)
        denoising_loss(net, self.schedule, x0.clamp(-1, 1), cond, generator=generator).backward()
        starved = [name for name, p in net.named_parameters() if p.grad is None or not p.grad.any()]
        assert not starved

    def test_checkpoint_round_trip_reproduces_outputs_exactly(self, preset, tmp_path):
        net = perturb_zero_inits(build(preset)).eval()
        arch, _ = model_config(preset)
        path = save_checkpoint(
            tmp_path / "net.safetensors",
            with_prefix(net.state_dict(), "model"),
            {"kind": "diffusion", "arch": arch, "model": config_to_dict(net.config)},
        )
        tensors, meta = load_checkpoint(path, kind="diffusion")
        config = config_from_dict(meta["arch"], meta["model"])
        assert config == net.config
        restored = build_model(meta["arch"], config).eval()
        load_weights_strict(restored, split_prefix(tensors, "model"), path)
        x_t, t, cond = inputs()
        assert torch.equal(restored(x_t, t, cond), net(x_t, t, cond))


# ------------------------------------------------------------ wrappers x samplers x fields

WRAPPER_SETS: dict[str, dict[str, Any]] = {
    "none": {},
    "classifier-free": dict(guidance_scale=3.0),
    "static threshold": dict(threshold="static"),
    "dynamic threshold": dict(threshold="dynamic", threshold_percentile=0.9),
    "classifier": dict(classifier_scale=2.0, use_classifier=True),
    "all three": dict(
        guidance_scale=3.0, threshold="dynamic", classifier_scale=2.0, use_classifier=True
    ),
}


def conditioning_for(fields: tuple[str, ...], net: torch.nn.Module, batch: int) -> Conditioning:
    """A Conditioning with every field ``fields`` names, shaped for ``net`` and ``batch``."""
    generator = torch.Generator().manual_seed(5)
    values: dict[str, torch.Tensor] = {}
    if "labels" in fields:
        values["labels"] = torch.arange(batch) % CLASSES
    if "tokens" in fields:
        width = net.config.context_dim
        values["tokens"] = torch.randn(batch, 3, width, generator=generator)
        values["token_mask"] = torch.tensor([[True, True, False]]).expand(batch, 3).clone()
    if "control" in fields:
        values["control"] = torch.rand(batch, CHANNELS, SIZE, SIZE, generator=generator) * 2 - 1
    if "low_res" in fields:
        values["low_res"] = torch.rand(batch, CHANNELS, SIZE // 2, SIZE // 2, generator=generator)
        values["noise_level"] = torch.rand(batch, generator=generator)
    return Conditioning(**values)


# the wrapper matrix runs one sampler per guidance algorithm (a sampler sees only the outermost
# wrapper, and only `ancestral` changes which wrappers it gets); every other registered sampler
# runs once through the whole stack on the backbone with the most fields
MATRIX_SAMPLERS = tuple(next(n for n, s in SAMPLERS.items() if s.ancestral == a) for a in (0, 1))


@pytest.mark.parametrize("wrappers", list(WRAPPER_SETS))
@pytest.mark.parametrize("sampler", MATRIX_SAMPLERS)
@pytest.mark.parametrize("backbone", list(FIELD_BACKBONES))
def test_every_wrapper_and_sampler_runs_with_every_declared_field(backbone, sampler, wrappers):
    """The pipeline's generate over the wrapper stack, with a Conditioning holding each field
    the backbone declares."""
    run_through_the_stack(backbone, sampler, wrappers)


@pytest.mark.parametrize("sampler", [name for name in SAMPLERS if name not in MATRIX_SAMPLERS])
def test_every_registered_sampler_runs_through_the_whole_stack(sampler):
    """Each other sampler under classifier-free + thresholding + classifier guidance, with labels
    and tokens. Fails if a sampler bypasses the wrappers or breaks on a conditional backbone."""
    run_through_the_stack("unet-tiny-text", sampler, "all three")
    run_through_the_stack("unet-tiny-text", sampler, "classifier-free")


def run_through_the_stack(backbone: str, sampler: str, wrappers: str) -> None:
    net = perturb_zero_inits(build(backbone))
    pipeline = DiffusionPipeline.from_network(net, NoiseSchedule.from_name("linear", 100))
    fields = pipeline.description.conditioning_fields
    options = dict(WRAPPER_SETS[wrappers])
    classifier = LinearNoisyClassifier() if options.pop("use_classifier", False) else None
    if options.get("guidance_scale") is not None and not fields:
        pytest.skip("classifier-free guidance needs a conditional backbone")
    guidance = Guidance(classifier=classifier, **options) if WRAPPER_SETS[wrappers] else None
    cond = conditioning_for(fields or (("labels",) if classifier else ()), net, 4)
    images = pipeline.generate(4, cond, sampler=sampler, steps=3, seed=0, guidance=guidance)
    assert images.shape == (4, CHANNELS, SIZE, SIZE) and torch.isfinite(images).all()
    if guidance is not None and guidance.threshold is None:
        plain = pipeline.generate(4, cond, sampler=sampler, steps=3, seed=0)
        assert not torch.allclose(images, plain)
