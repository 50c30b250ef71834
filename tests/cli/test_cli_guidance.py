"""``difflab train`` of a noisy classifier and ``difflab sample`` with guidance, end to end."""

from pathlib import Path

import pytest
from PIL import Image

from difflab.cli import main
from difflab.io.checkpoint import load_checkpoint
from tests.cli.conftest import CONFIGS, run_cli, sampled_images, train_tiny

WEIGHTS = Path(__file__).resolve().parents[2] / "weights"


def train_classifier_cli(out_dir: Path, *overrides: str) -> None:
    """``difflab train configs/mnist_classifier.yaml`` for 2 steps on 64 images."""
    argv = [
        "train",
        "--quiet",
        str(CONFIGS / "mnist_classifier.yaml"),
        f"train.out_dir={out_dir}",
        "train.steps=2",
        "train.batch_size=8",
        "data.limit=64",
        *overrides,
    ]
    assert main(argv) == 0


@pytest.fixture(scope="session")
def digits_classifier(tmp_path_factory) -> Path:
    """A 2-step classifier for the 8×8 digits models of conftest (T = 100, like digits_tiny)."""
    out = tmp_path_factory.mktemp("clf_digits")
    train_classifier_cli(
        out, "data.name=digits", "model.preset=classifier-tiny", "diffusion.num_timesteps=100"
    )
    return out / "model.safetensors"


def test_train_the_mnist_classifier_config_for_two_steps(tmp_path, capsys):
    code, out, err = run_cli(
        [
            "train",
            "--quiet",
            str(CONFIGS / "mnist_classifier.yaml"),
            f"train.out_dir={tmp_path}",
            "train.steps=2",
            "train.batch_size=8",
            "data.limit=64",
        ],
        capsys,
    )
    assert code == 0, err
    assert "trained noisy classifier" in out and "t=0:" in out and "t=999:" in out
    meta = load_checkpoint(tmp_path / "model.safetensors", kind="classifier")[1]
    assert meta["model"]["image_size"] == 28 and meta["diffusion"]["num_timesteps"] == 1000
    assert (tmp_path / "accuracy_vs_t.json").exists()


def sample(checkpoint: Path, out: Path, *args: str) -> list[str]:
    return ["sample", str(checkpoint), "--steps", "2", "--n", "4", "--out", str(out), *args]


@pytest.mark.parametrize(
    "args",
    [
        ["--label", "3"],
        ["--labels", "0,1,2,3", "--classifier-scale", "10"],
        ["--labels", "1", "--sampler", "ddpm", "--classifier-scale", "2000"],  # Alg. 1 moves less
        ["--label", "5", "--sampler", "ddim", "--eta", "1", "--clip-x0"],
    ],
)
def test_classifier_guidance_of_an_unconditional_model(
    tiny_checkpoint, digits_classifier, tmp_path, capsys, args
):
    """Same seed with the classifier's scale as given vs 0: the images differ, and --clip-x0 keeps
    them in [-1, 1]. Fails if the CLI drops the guidance on its way to ``generate`` (tried)."""
    argv = sample(tiny_checkpoint, tmp_path / "guided.png", "--classifier", str(digits_classifier))
    guided = sampled_images([*argv, *args])
    assert "classifier scale" in capsys.readouterr().out
    unguided = sampled_images([*argv, *args, "--classifier-scale", "0"])
    assert (guided - unguided).abs().max() > 1e-4  # exactly 0 when the guidance is dropped
    if "--clip-x0" in args:
        assert guided.abs().max() <= 1 + 1e-6


def test_labels_all_grid_with_a_classifier(tiny_checkpoint, digits_classifier, tmp_path, capsys):
    out = tmp_path / "grid.png"
    argv = ["sample", str(tiny_checkpoint), "--steps", "2", "--n", "20", "--labels", "all"]
    code, _, err = run_cli(
        [*argv, "--classifier", str(digits_classifier), "--out", str(out)], capsys
    )
    assert code == 0, err
    assert Image.open(out).size == (2 * 10 + 2, 10 * 10 + 2)  # one row per class, as unguided


def test_classifier_free_guidance_and_stacking(
    tiny_conditional_checkpoint, digits_classifier, tmp_path, capsys
):
    """Each flag changes the images at the same seed: w = 3 vs the conditional model (w = 1), a
    classifier on top of CFG vs CFG alone, dynamic thresholding vs none (and it bounds them).
    Fails if the CLI drops the guidance on its way to ``generate`` (tried)."""
    out = tmp_path / "cfg.png"
    plain = sampled_images(sample(tiny_conditional_checkpoint, out, "--labels", "all"))
    guided = sampled_images(
        sample(tiny_conditional_checkpoint, out, "--labels", "all", "--guidance-scale", "3")
    )
    assert "guidance scale 3" in capsys.readouterr().out
    assert (guided - plain).abs().max() > 1e-3
    cfg = ["--label", "7", "--guidance-scale", "2", "--sampler", "ddpm"]
    classifier = ["--classifier", str(digits_classifier), "--classifier-scale", "2000"]
    alone = sampled_images(sample(tiny_conditional_checkpoint, out, *cfg))
    both = sampled_images(sample(tiny_conditional_checkpoint, out, *cfg, *classifier))
    assert "guidance scale 2, classifier scale 2000" in capsys.readouterr().out
    assert (both - alone).abs().max() > 1e-4
    cfg = ["--label", "7", "--guidance-scale", "3"]
    unthresholded = sampled_images(sample(tiny_conditional_checkpoint, out, *cfg))
    dynamic = sampled_images(
        sample(tiny_conditional_checkpoint, out, *cfg, "--dynamic-threshold", "0.995")
    )
    assert "guidance scale 3, dynamic thresholding p=0.995" in capsys.readouterr().out
    assert unthresholded.abs().max() > 1 and dynamic.abs().max() <= 1 + 1e-6


@pytest.fixture(scope="session")
def mnist_classifier(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("clf_mnist")
    train_classifier_cli(out, "model.preset=classifier-tiny")
    return out / "model.safetensors"


@pytest.fixture(scope="session")
def conditional_without_dropout(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("run_cond_no_dropout")
    assert train_tiny(out, "model.num_classes=10", "train.steps=1") == 0
    return out / "model.safetensors"


def test_bad_guidance_input_is_one_sentence_and_writes_nothing(
    tiny_checkpoint,
    tiny_conditional_checkpoint,
    conditional_without_dropout,
    digits_classifier,
    mnist_classifier,
    tmp_path,
    capsys,
):
    never = tmp_path / "never.png"
    clf = str(digits_classifier)
    cases = {
        "CFG on a model trained without label dropout": (
            sample(conditional_without_dropout, never, "--label", "1", "--guidance-scale", "2"),
            "had train.label_dropout = 0",
        ),
        "a diffusion checkpoint as classifier": (
            sample(tiny_checkpoint, never, "--label", "1", "--classifier", str(tiny_checkpoint)),
            "holds a 'diffusion' checkpoint, not a noisy classifier",
        ),
        "the clean feature CNN as classifier": (
            sample(
                tiny_checkpoint,
                never,
                "--label",
                "1",
                "--classifier",
                str(WEIGHTS / "mnist_cnn.safetensors"),
            ),
            "holds a 'feature-cnn' checkpoint",
        ),
        "a classifier of another image size": (
            sample(tiny_checkpoint, never, "--label", "1", "--classifier", str(mnist_classifier)),
            "the classifier takes 1×28×28 images but the model makes 1×8×8 ones",
        ),
        "no labels for the classifier": (
            sample(tiny_checkpoint, never, "--classifier", clf),
            "needs target labels",
        ),
        "a label out of range": (
            sample(tiny_checkpoint, never, "--label", "12", "--classifier", clf),
            "0..9 for the classifier",
        ),
        "CFG on an unconditional model": (
            sample(tiny_checkpoint, never, "--label", "1", "--guidance-scale", "2"),
            "needs a conditional model",
        ),
        "CFG without labels": (
            sample(tiny_conditional_checkpoint, never, "--guidance-scale", "2"),
            "needs target labels",
        ),
        "a scale without a classifier": (
            sample(tiny_checkpoint, never, "--label", "1", "--classifier-scale", "2"),
            "--classifier-scale needs --classifier",
        ),
        "a negative classifier scale": (
            sample(
                tiny_checkpoint,
                never,
                "--label",
                "1",
                "--classifier",
                clf,
                "--classifier-scale",
                "-1",
            ),
            "--classifier-scale must be a finite number >= 0",
        ),
        "a non-finite guidance scale": (
            sample(tiny_conditional_checkpoint, never, "--label", "1", "--guidance-scale", "nan"),
            "--guidance-scale must be a finite number, got nan",
        ),
        "a dynamic-threshold percentile above 1": (
            sample(tiny_checkpoint, never, "--dynamic-threshold", "99.5"),
            "--dynamic-threshold must lie in (0, 1]",
        ),
        "both thresholdings": (
            sample(tiny_checkpoint, never, "--dynamic-threshold", "0.9", "--clip-x0"),
            "either --clip-x0 or --dynamic-threshold",
        ),
    }
    for name, (argv, message) in cases.items():
        code, _, err = run_cli(argv, capsys)
        lines = [line for line in err.strip().splitlines() if line]
        assert code == 2, (name, err)
        assert len(lines) == 1 and lines[0].endswith("."), (name, err)
        assert message in lines[0], (name, err)
    assert not never.exists()


def test_train_refuses_an_unknown_kind(tmp_path, capsys):
    code, _, err = run_cli(
        ["train", str(CONFIGS / "digits_tiny.yaml"), "kind=gan", f"train.out_dir={tmp_path}"],
        capsys,
    )
    assert code == 2 and "config kind 'gan' is not trainable" in err
