"""DiffusionPipeline.generate: batching and seeds, precision, conditioning checks, the decode stage."""

from __future__ import annotations

import pytest
import torch

from difflab.cli.common import SAMPLE_DEFAULTS
from difflab.diffusion import Conditioning, NoiseSchedule
from difflab.errors import DifflabError
from difflab.models import build_model, model_config
from difflab.pipelines import DiffusionPipeline, load_pipeline
from difflab.samplers import DEFAULT_SAMPLER, DEFAULT_STEPS


def tiny_pipeline(**overrides) -> DiffusionPipeline:
    torch.manual_seed(0)
    net = build_model(*model_config("unet-tiny", image_size=8, **overrides))
    with torch.no_grad():
        for parameter in net.parameters():
            if not parameter.any():
                parameter.normal_(std=0.1)
    return DiffusionPipeline.from_network(net, NoiseSchedule.from_name("linear", 100))


def test_one_batch_equals_the_seeded_noise_run():
    pipe = tiny_pipeline()
    images = pipe.generate(3, seed=5, steps=4)
    again = pipe.generate(3, seed=5, steps=4)
    assert images.shape == (3, 1, 8, 8) and torch.equal(images, again)
    assert not torch.equal(images, pipe.generate(3, seed=6, steps=4))


def test_the_default_run_is_the_default_sampler_at_its_steps():
    """generate() without a sampler is DEFAULT_SAMPLER (DPM-Solver++(2M)) at DEFAULT_STEPS:
    the same images as naming them, DEFAULT_STEPS callbacks, and not DDIM's images. Fails if the
    API default drifts from the CLI's and the web app's (all read the same constants)."""
    pipe = tiny_pipeline()
    seen: list[int] = []
    default = pipe.generate(2, seed=1, callback=lambda info: seen.append(int(info.t)))
    named = pipe.generate(2, seed=1, sampler=DEFAULT_SAMPLER, steps=DEFAULT_STEPS)
    assert (DEFAULT_SAMPLER, DEFAULT_STEPS) == ("dpm++2m", 20) and SAMPLE_DEFAULTS == (
        DEFAULT_SAMPLER,
        DEFAULT_STEPS,
    )
    assert torch.equal(default, named) and len(seen) == DEFAULT_STEPS
    assert not torch.equal(default, pipe.generate(2, seed=1, sampler="ddim", steps=DEFAULT_STEPS))
    assert torch.isfinite(pipe.generate(2, seed=1, sampler="ddim", eta=0.5, steps=3)).all()


def test_batches_are_seeded_each_and_cover_n_with_progress():
    pipe = tiny_pipeline(num_classes=3)
    seen = []
    cond = Conditioning(labels=torch.tensor([0, 1, 2, 0, 1]))
    images = pipe.generate(
        5, cond, seed=1, steps=3, batch_size=2, progress=lambda d, n: seen.append((d, n))
    )
    assert images.shape == (5, 1, 8, 8) and seen == [(2, 5), (4, 5), (5, 5)]
    # batch i is the run of its own seed: the last batch alone reproduces the last image
    from difflab.pipelines import batch_seed

    last = pipe.generate(1, cond[4:], seed=batch_seed(1, 2), steps=3)
    assert torch.allclose(images[4:], last, atol=1e-6)


def test_fp64_runs_end_to_end_and_agrees_with_fp32():
    pipe = load_pipeline("mnist_ddim")
    fp32 = pipe.generate(2, seed=0, steps=5)
    pipe.set_precision("fp64")
    fp64 = pipe.generate(2, seed=0, steps=5)
    assert fp64.dtype == torch.float64 and fp32.dtype == torch.float32
    assert (fp64 - fp32.double()).abs().max() < 1e-3


def test_bf16_stays_close_to_fp32():
    pipe = load_pipeline("mnist_ddim", precision="bf16")
    low = pipe.generate(2, seed=0, steps=5)
    pipe.set_precision("fp32")
    assert low.dtype == torch.float32
    assert (low - pipe.generate(2, seed=0, steps=5)).abs().mean() < 0.1


class HalvingDecoder:
    """A stand-in autoencoder stage: encode(x) = x / 2, decode(z) = 2 z, with latent_scale 4."""

    latent_scale = 4.0

    def encode(self, x):
        return x / 2

    def decode(self, z):
        return 2 * z


def test_the_autoencoder_stage_decodes_scaled_latents():
    """generate decodes z / latent_scale; encode gives E(x)·latent_scale, and inversion works on
    those latents (fails if either side forgets the scale)."""
    pipe = tiny_pipeline()
    latents = pipe.generate(2, seed=3, steps=3)
    pipe.autoencoder = HalvingDecoder()
    assert torch.allclose(pipe.generate(2, seed=3, steps=3), 2 * latents / 4.0)
    images = torch.randn(2, 1, 8, 8)
    assert torch.allclose(pipe.encode(images), images / 2 * 4.0)
    assert torch.allclose(pipe.decode(pipe.encode(images)), images)
    x_T = pipe.invert(images, 3)  # inverts encode(images), not the images
    pipe.autoencoder = None
    assert torch.equal(x_T, pipe.invert(images * 2, 3))


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(n=0), "at least 1"),
        (dict(n=2, sampler="nope"), "unknown sampler 'nope'; choose one of ddim, ddpm"),
        (dict(n=2, eta=float("nan")), "eta must be a finite number"),
        (dict(n=2, eta=0.5), "eta = 0.5 changes nothing with the dpm\\+\\+2m sampler"),
        (dict(n=2, sampler="heun", eta=1), "choose the ddim sampler"),
        (dict(n=2, batch_size=0), "batch size must be at least 1"),
        (dict(n=3, conditioning=Conditioning(labels=torch.tensor([1, 2]))), "conditioning for 2"),
        (
            dict(n=2, conditioning=Conditioning(labels=torch.tensor([1, 9]))),
            "labels must lie in 0..2",
        ),
    ],
)
def test_bad_arguments_are_one_sentence(kwargs, message):
    pipe = tiny_pipeline(num_classes=3)
    with pytest.raises(DifflabError, match=message):
        pipe.generate(steps=2, **kwargs)
    with pytest.raises(DifflabError, match="unknown precision"):
        pipe.set_precision("fp16")


@pytest.mark.parametrize(
    ("schedule", "prediction", "sampler", "expected"),
    [
        ("cosine", "v", "dpm++2m", "trailing"),
        ("cosine", "v", "ddim", "trailing"),
        ("cosine", "eps", "dpm++2m", "karras"),
        ("linear", "v", "dpm++2m", "karras"),
        ("linear", "eps", "ddim", "uniform"),
    ],
)
def test_default_spacing_is_the_models_and_an_explicit_one_wins(
    schedule, prediction, sampler, expected
):
    """generate() without a spacing visits auto_spacing's timesteps (recorded by the callback);
    an explicit spacing is used as given. Fails if "auto" is ignored or overrides the caller."""
    torch.manual_seed(0)
    net = build_model(*model_config("unet-tiny", image_size=8, prediction=prediction))
    pipe = DiffusionPipeline.from_network(net, NoiseSchedule.from_name(schedule, 100))
    assert pipe.auto_spacing(sampler) == expected

    def visited(**spacing) -> list[int]:
        seen: list[int] = []
        pipe.generate(
            1, steps=4, sampler=sampler, callback=lambda i: seen.append(int(i.t)), **spacing
        )
        return seen

    assert visited() == pipe.timesteps(4, expected).tolist()
    assert visited(spacing="uniform") == pipe.timesteps(4, "uniform").tolist()


def test_classifier_guidance_keeps_a_cosine_v_model_off_the_last_timestep():
    """Under classifier guidance "auto" is uniform on the cosine schedule (the eps shift moves x0
    by sqrt(1 - a) / sqrt(a) times the classifier's gradient, ~2e4 at t = T - 1); without it,
    trailing. Fails if auto_spacing ignores the guidance it is given."""
    from difflab.samplers import Guidance

    net = build_model(*model_config("unet-tiny", image_size=8, prediction="v"))
    pipe = DiffusionPipeline.from_network(net, NoiseSchedule.from_name("cosine", 100))
    classifier = lambda x, t: torch.zeros(len(x), 10)  # noqa: E731 (never called here)
    assert pipe.auto_spacing("dpm++2m", Guidance(classifier, 1.0)) == "uniform"
    assert pipe.auto_spacing("dpm++2m", Guidance(classifier, 0.0)) == "trailing"
    assert pipe.auto_spacing("dpm++2m", Guidance(guidance_scale=3.0)) == "trailing"
