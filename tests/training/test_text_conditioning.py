"""Cross-attention conditioning on captions end to end: a tiny U-Net and its learned caption
encoder trained together (configs/text_digits_tiny.yaml: the digits captioned with their class
names), caption dropout, the checkpoint, sampling with a caption from Python and the CLI (with
classifier-free guidance), exact resume, the emoji's own captions, and the error sentences."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from difflab.cli import main
from difflab.config import load_config
from difflab.data import ImageDataset
from difflab.data import emoji as emoji_module
from difflab.data.emoji import EMOJI_FONT, EMOJI_TEST
from difflab.diffusion import Conditioning
from difflab.errors import DifflabError
from difflab.io.checkpoint import load_checkpoint
from difflab.models import caption_encoder_of
from difflab.pipelines import load_pipeline
from difflab.samplers import Guidance
from difflab.training import loop, train
from difflab.training.state import STATE_FILE
from tests.helpers import torchrun
from tests.training.test_latent_diffusion import save_autoencoder, tiny_autoencoder

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
TEXT_CONFIG = CONFIGS / "text_digits_tiny.yaml"


def text_args(out_dir: Path, *extra: str) -> list[str]:
    """Overrides that shorten configs/text_digits_tiny.yaml to a few steps of 8 images."""
    return [
        f"train.out_dir={out_dir}",
        "train.steps=3",
        "train.batch_size=8",
        "train.sample_steps=2",
        "train.log_every=1",
        *extra,
    ]


def text_config(out_dir: Path, *extra: str):
    """configs/text_digits_tiny.yaml shortened to a few steps of 8 images."""
    return load_config(TEXT_CONFIG, text_args(out_dir, *extra))


def run_cli(argv: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    try:
        code = main(argv)
    except SystemExit as stop:
        code = stop.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture(scope="module")
def text_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("text_run")
    return train(text_config(out), progress=False)


def test_the_checkpoint_holds_the_encoder_weights_and_vocabulary(text_checkpoint):
    tensors, meta = load_checkpoint(text_checkpoint)
    assert meta["text_encoder"]["vocabulary"] == [str(d) for d in range(10)]
    assert meta["text_encoder"]["config"]["dim"] == meta["model"]["context_dim"] == 16
    assert any(key.startswith("model.text_encoder.word_embedding") for key in tensors)
    assert (text_checkpoint.parent / "samples" / "step_0000003.png").exists()
    state = load_checkpoint(text_checkpoint.parent / STATE_FILE)[0]
    # the encoder is trained (optimizer moments) and averaged (EMA) with the U-Net
    assert any(key.startswith("ema.text_encoder.") for key in state)
    pipe = load_pipeline(text_checkpoint)
    trained = tensors["model.text_encoder.word_embedding.weight"]
    assert torch.equal(pipe.text_encoder.word_embedding.weight, trained)


def test_sampling_with_a_caption_and_classifier_free_guidance(text_checkpoint):
    pipe = load_pipeline(text_checkpoint)
    n = 4
    cond = pipe.caption_conditioning(["7"] * n)
    assert cond.tokens.shape == (n, 4, 16) and cond.token_mask.sum().item() == n
    guided = pipe.generate(n, cond, guidance=Guidance(guidance_scale=3), steps=3)
    plain = pipe.generate(n, cond, steps=3)
    assert guided.shape == (n, 1, 8, 8) and torch.isfinite(guided).all()
    assert not torch.equal(guided, plain)
    with pytest.raises(DifflabError, match=r"conditioned on captions; pass pipe\.caption_conditi"):
        pipe.generate(n, steps=3)


def test_cli_samples_with_captions_and_warns_of_unknown_words(text_checkpoint, tmp_path, capsys):
    out = tmp_path / "grid.png"
    code, stdout, stderr = run_cli(
        ["sample", str(text_checkpoint), "--caption", "7", "--caption", "seven 3", "--n", "4",
         "--steps", "2", "--guidance-scale", "3", "--device", "cpu", "--out", str(out)],
        capsys,
    )  # fmt: skip
    assert code == 0, stderr
    assert out.exists() and "guidance scale 3" in stdout
    assert "not in the model's vocabulary of 10 words and are read as unknown: seven" in stderr


def test_cli_error_sentences(text_checkpoint, tmp_path, capsys):
    out = str(tmp_path / "grid.png")
    base = ["--n", "2", "--steps", "2", "--device", "cpu", "--out", out]
    code, _, stderr = run_cli(["sample", str(text_checkpoint), *base], capsys)
    assert code != 0 and "is conditioned on captions; give --caption TEXT" in stderr
    plain = train(load_config(CONFIGS / "digits_tiny.yaml", [
        f"train.out_dir={tmp_path / 'plain'}", "train.steps=1", "train.sample_steps=2"
    ]), progress=False)  # fmt: skip
    code, _, stderr = run_cli(["sample", str(plain), "--caption", "7", *base], capsys)
    assert code != 0 and "was not trained on captions (it has no caption encoder)" in stderr
    assert len(stderr.strip().splitlines()) == 1


def test_a_dataset_without_captions_is_refused_by_name(tmp_path):
    config = text_config(tmp_path / "run", "model.text_encoder.captions=dataset")
    with pytest.raises(DifflabError, match="dataset 'digits' has no captions"):
        train(config, progress=False)
    assert not (tmp_path / "run").exists()
    plain = load_config(CONFIGS / "digits_tiny.yaml", [f"train.out_dir={tmp_path / 'p'}"])
    plain.model["text_encoder"] = {"max_length": 4}
    with pytest.raises(DifflabError, match=r"model\.text_encoder needs a network that cross-att"):
        train(plain, progress=False)


def test_dropped_captions_are_all_false_masks(tmp_path, monkeypatch):
    seen: list[Conditioning] = []

    def capture(net, schedule, x0, cond, *, noise, **options):
        seen.append(cond)
        return net(x0, noise[0], cond).pow(2).mean()

    monkeypatch.setattr(loop, "denoising_loss", capture)
    config = text_config(tmp_path, "train.steps=1", "train.batch_size=32",
                         "train.label_dropout=0.5")  # fmt: skip
    run = loop.build_run(config)
    loop.diffusion_loss(run, torch.arange(32))
    cond = seen[0]
    words = cond.token_mask.any(dim=1)  # (B,) every digit caption has one word
    assert 0 < words.sum() < 32
    assert (cond.tokens[~words] == 0).all() and cond.labels is None
    assert cond.token_mask[words].sum(dim=1).eq(1).all()


def test_resume_of_a_text_model_is_bit_identical(tmp_path):
    straight, split = tmp_path / "straight", tmp_path / "split"
    extra = ("train.checkpoint_every=2", "model.text_encoder.depth=1", "model.num_classes=10")
    train(text_config(straight, "train.steps=4", *extra), progress=False)
    train(text_config(split, "train.steps=2", *extra), progress=False)
    train(text_config(split, "train.steps=4", *extra), resume=True, progress=False)
    a, b = (load_checkpoint(d / STATE_FILE)[0] for d in (straight, split))
    assert a.keys() == b.keys() and any(k.startswith("model.text_encoder.") for k in a)
    for key in a:
        assert torch.equal(a[key], b[key]), key
    losses = [
        [json.loads(line)["loss"] for line in (d / "metrics.jsonl").read_text().splitlines()]
        for d in (straight, split)
    ]
    assert losses[0] == losses[1]
    with pytest.raises(DifflabError, match="another caption encoder"):
        train(text_config(split, "train.steps=6", *extra, "model.text_encoder.max_length=3"),
              resume=True, progress=False)  # fmt: skip


needs_emoji = pytest.mark.skipif(
    not (EMOJI_FONT.is_file() and EMOJI_TEST.is_file()),
    reason="the emoji packages are not installed (fonts-noto-color-emoji, unicode-data)",
)

FEW_EMOJI = """\
# group: Smileys & Emotion
# subgroup: face-smiling
1F600 ; fully-qualified # 😀 E1.0 grinning face
# group: People & Body
# subgroup: person
1F469 1F3FD ; fully-qualified # 👩🏽 E2.0 woman: medium skin tone
# group: Animals & Nature
# subgroup: animal-mammal
1F436 ; fully-qualified # 🐶 E0.6 dog face
1F431 ; fully-qualified # 🐱 E0.6 cat face
# group: Food & Drink
# subgroup: food-fruit
1F34E ; fully-qualified # 🍎 E0.6 red apple
1F34C ; fully-qualified # 🍌 E0.6 banana
"""


@needs_emoji
def test_emoji_captions_train_the_encoder(tmp_path, monkeypatch):
    listing = tmp_path / "emoji-test.txt"
    listing.write_text(FEW_EMOJI, encoding="utf-8")
    monkeypatch.setattr(emoji_module, "EMOJI_TEST", listing)
    monkeypatch.setenv("DIFFLAB_CACHE", str(tmp_path / "cache"))
    config = text_config(
        tmp_path / "run", "data.name=emoji", "data.image_size=8", "model.num_classes=9",
        "model.text_encoder.captions=dataset", "model.text_encoder.max_length=6",
    )  # fmt: skip
    run = loop.build_run(config)
    encoder = caption_encoder_of(run.net)
    words = set(encoder.tokenizer.words)
    assert words <= {"grinning", "face", "woman", "medium", "skin", "tone", "dog", "cat", "red",
                     "apple", "banana"} and "face" in words  # fmt: skip
    before = encoder.word_embedding.weight.clone()
    path = train(config, progress=False)
    after = load_checkpoint(path)[0]["model.text_encoder.word_embedding.weight"]
    assert not torch.equal(before, after)
    pipe = load_pipeline(path)
    images = pipe.generate(2, pipe.caption_conditioning(["dog face", "red apple"]), steps=2)
    assert images.shape == (2, 3, 8, 8)


def test_a_latent_text_model_trains_and_samples_through_the_decoder(tmp_path, capsys):
    autoencoder = save_autoencoder(tiny_autoencoder(), tmp_path / "ae.safetensors")
    path = train(text_config(tmp_path / "run", f"autoencoder={autoencoder}"), progress=False)
    out = tmp_path / "grid.png"
    code, _, stderr = run_cli(
        ["sample", str(path), "--caption", "3", "--n", "2", "--steps", "2", "--guidance-scale",
         "2", "--device", "cpu", "--out", str(out)],
        capsys,
    )  # fmt: skip
    assert code == 0, stderr
    assert load_pipeline(path).caption_conditioning(["3"]).tokens.shape == (1, 4, 16)
    # the latent training set keeps the captions of the images it encodes
    run = loop.build_run(text_config(tmp_path / "again", f"autoencoder={autoencoder}"))
    images = torch.zeros(3, 1, 8, 8)
    captioned = ImageDataset("toy", images, torch.zeros(3, dtype=torch.int64), (), ("a", "b", "c"))
    latents = loop.latent_dataset(captioned, run.latent_stage, run.config)
    assert latents.captions == ("a", "b", "c") and latents.images.shape == (3, 2, 4, 4)
    check_latent_inversion_and_interpolation(path, tmp_path, capsys)


def check_latent_inversion_and_interpolation(path: Path, tmp_path: Path, capsys) -> None:
    """DDIM inversion of a latent model inverts the scaled latents E(x)·latent_scale (fails if
    the scale is left out: the round trip then decodes z / 1.5, away from the autoencoder's own
    reconstruction) and decodes back; invert and interpolate read captions from the CLI."""
    pipe = load_pipeline(path)
    x0 = torch.rand(2, 1, 8, 8) * 2 - 1  # (2, 1, 8, 8)
    cond = pipe.caption_conditioning(["3", "5"])
    x_T = pipe.invert(x0, 50, conditioning=cond)
    assert x_T.shape == (2, 2, 4, 4)  # the latent, not the image
    round_trip = pipe.reconstruct(x_T, 50, conditioning=cond)  # (2, 1, 8, 8)
    autoencoded = pipe.decode(pipe.encode(x0))
    assert torch.mean((round_trip - autoencoded) ** 2) < 1e-3 * torch.mean(autoencoded**2)
    common = ["--steps", "2", "--device", "cpu"]
    code, out, err = run_cli(
        ["invert", str(path), "--data", "digits", "--n", "2", *common,
         "--out", str(tmp_path / "inv.png")],
        capsys,
    )  # fmt: skip
    assert code == 0 and "reconstruction MSE" in out, err
    code, _, err = run_cli(
        ["interpolate", str(path), "--points", "3", *common, "--out", str(tmp_path / "i.png")],
        capsys,
    )
    assert code == 2 and "give --caption TEXT" in err
    code, _, err = run_cli(
        ["interpolate", str(path), "--caption", "3", "--points", "3", *common,
         "--out", str(tmp_path / "i.png")],
        capsys,
    )  # fmt: skip
    assert code == 0 and (tmp_path / "i.png").is_file(), err


@pytest.mark.slow
def test_two_processes_train_the_encoder_as_one_process_does(tmp_path):
    """The encoder runs outside the data-parallel forward; its gradients must still be averaged."""
    one, two = tmp_path / "one", tmp_path / "two"
    extra = ["train.steps=2", "train.batch_size=16", "train.label_dropout=0.2"]
    train(text_config(one, *extra), progress=False)
    result = torchrun(2, "train", "--quiet", str(TEXT_CONFIG), *text_args(two, *extra))
    assert result.returncode == 0, result.stderr
    a, b = (load_checkpoint(d / STATE_FILE)[0] for d in (one, two))
    for prefix in ("model.text_encoder.", "ema.text_encoder."):
        keys = sorted(k for k in a if k.startswith(prefix))
        assert keys == sorted(k for k in b if k.startswith(prefix)) and keys
        for key in keys:
            torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-6)
