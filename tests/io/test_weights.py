"""Shipped checkpoints are found by name, from a source checkout and from an installed wheel."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from difflab.errors import DifflabError
from difflab.io.weights import resolve_checkpoint, shipped_names, weights_dir

ROOT = Path(__file__).resolve().parents[2]


def test_names_resolve_to_the_package_weights(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert "mnist_ddim" in shipped_names() and "dit_mnist_s4" in shipped_names()
    assert resolve_checkpoint("mnist_ddim") == weights_dir() / "mnist_ddim.safetensors"
    assert resolve_checkpoint("mnist_ddim.safetensors") == weights_dir() / "mnist_ddim.safetensors"
    own = tmp_path / "mnist_ddim.safetensors"
    own.write_bytes(b"x")
    assert resolve_checkpoint("mnist_ddim.safetensors") == Path("mnist_ddim.safetensors")
    with pytest.raises(DifflabError, match="not a shipped checkpoint; give a file or one of"):
        resolve_checkpoint("mnist_dim")
    with pytest.raises(DifflabError, match="does not exist"):
        resolve_checkpoint("some/dir/mnist_ddim")


def test_the_repository_weights_folder_is_the_package_one():
    assert (ROOT / "weights").resolve() == weights_dir().resolve()


@pytest.mark.slow
def test_an_installed_wheel_samples_a_shipped_model_from_another_directory(tmp_path):
    """Build the wheel, install it (unpacked, ahead of the editable checkout on sys.path), and
    run ``difflab sample mnist_ddim`` from a directory with no weights/ in it."""
    source, wheels = tmp_path / "source", tmp_path / "wheels"
    # build from a copy: setuptools writes build/ and *.egg-info beside the sources
    shutil.copytree(
        ROOT / "src", source / "src", ignore=shutil.ignore_patterns("*.egg-info", "__pycache__")
    )
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(wheels), str(source)],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    (wheel,) = wheels.glob("difflab-*.whl")
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        assert "difflab/weights/mnist_ddim.safetensors" in names
        archive.extractall(site)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site)}
    code = (
        "import sys, difflab; assert difflab.__file__.startswith(sys.argv[1]), difflab.__file__;"
        "from difflab.cli import main; sys.exit(main(sys.argv[2:]))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, str(site), "sample", "mnist_ddim", "--n", "2",
         "--steps", "2", "--out", "grid.png"],
        cwd=elsewhere, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert (elsewhere / "grid.png").is_file()
