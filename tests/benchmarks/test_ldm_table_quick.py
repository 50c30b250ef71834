"""``benchmarks/ldm_table.py --quick`` runs end to end and its report re-renders from the JSON.

Two of the autoencoders (the VQ one and the one trained with the GAN switched on) and the shipped
models cover every autoencoder path in seconds: 8 emoji of 32 px, 2 steps, base_channels 8; the pixel-vs-latent part
(a probe and a run per space, sampling, FD-VGG16) is the slow test. Runs in this process, like
tests/benchmarks/test_quick_modes.py.
"""

from __future__ import annotations

import importlib
import json
import shutil
import sys
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[2]
BENCHMARKS = REPO / "benchmarks"
RESULTS = BENCHMARKS / "results"

pytest.importorskip("skimage")


def ldm_table() -> ModuleType:
    if str(BENCHMARKS) not in sys.path:
        sys.path.insert(0, str(BENCHMARKS))
    return importlib.import_module("ldm_table")


def test_quick_mode_writes_json_markdown_and_plot(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    args = ["--quick", "--out-dir", str(tmp_path), "--parts", "autoencoders,shipped"]
    args += ["--variants", "f4-vq,f4-gan"]
    assert ldm_table().main(args) == 0
    report = json.loads((tmp_path / "ldm_table_quick.json").read_text())
    rows = {row["variant"]: row for row in report["autoencoders"]}
    assert set(rows) == {"f4-vq", "f4-gan"}
    assert rows["f4-vq"]["latent_shape"] == [3, 8, 8]
    assert 0 < rows["f4-vq"]["codebook_usage"] <= 1
    for row in rows.values():
        assert row["lpips_alex"] >= 0 and row["rfd_vgg16"] >= 0 and -1 <= row["ssim"] <= 1
        assert row["encode_images_per_s"] > 0 and row["decode_images_per_s"] > 0
    shipped = report["shipped"]
    assert shipped["autoencoder"]["latent_shape"] == [3, 8, 8]
    assert shipped["autoencoder"]["training"]["steps"] > 0  # its record travels with the file
    assert [r["guidance_scale"] for r in shipped["latent_model"]["samples"]] == [1.0, 3.0]
    assert all(r["fd_vgg16"] >= 0 for r in shipped["latent_model"]["samples"])
    markdown = (tmp_path / "ldm_table_quick.md").read_text()
    assert "| f4-gan | 4 | KL | L1 + LPIPS + GAN | 3x8x8 |" in markdown
    assert "| ae_emoji_f4 | 3x8x8 |" in markdown and "| ldm_emoji | 3 |" in markdown
    assert (tmp_path / "ldm_table_quick.png").stat().st_size > 1000
    (tmp_path / "ldm_table_quick.md").unlink()
    assert ldm_table().main([*args, "--render-only"]) == 0
    assert (tmp_path / "ldm_table_quick.md").read_text() == markdown


@pytest.mark.slow
def test_quick_pixel_vs_latent(tmp_path, monkeypatch):
    """Pixels (U-Net) and a DiT on f = 4 latents; the goals compare U-Nets only (fails if the DiT
    row stood in for the f = 4 U-Net)."""
    monkeypatch.chdir(REPO)
    args = ["--quick", "--out-dir", str(tmp_path), "--parts", "latent"]
    assert ldm_table().main([*args, "--latent-runs", "ldm-f1,dit-f4"]) == 0
    report = json.loads((tmp_path / "ldm_table_quick.json").read_text())
    rows = report["pixel_vs_latent"]
    assert [(row["f"], row["network"]) for row in rows] == [(1, "unet-mnist"), (4, "dit-mnist-s-2")]
    for row in rows:
        assert row["fd_vgg16"] >= 0 and row["sample_seconds_per_image"] > 0 and row["gflops"] > 0
        assert row["train_steps"] >= 2 and row["train_images_per_s"] > 0
    assert report["latent_goals"] == {}
    markdown = (tmp_path / "ldm_table_quick.md").read_text()
    assert "## Pixel vs latent diffusion" in markdown
    assert "| latent f = 4 | dit-mnist-s-2 |" in markdown
    assert "## Reconstruction" not in markdown


def test_committed_results_re_render_to_the_committed_markdown(tmp_path):
    if not (RESULTS / "ldm_table.json").exists():
        pytest.skip("benchmarks/results/ldm_table.json is not committed")
    shutil.copy(RESULTS / "ldm_table.json", tmp_path)
    assert ldm_table().main(["--render-only", "--out-dir", str(tmp_path)]) == 0
    assert (tmp_path / "ldm_table.md").read_text() == (RESULTS / "ldm_table.md").read_text()
