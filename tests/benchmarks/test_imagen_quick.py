"""``benchmarks/imagen.py --quick`` runs every part end to end (two tiny stages trained for three
steps, a few images per part) and its report re-renders identically from the JSON alone."""

from __future__ import annotations

import pytest

from tests.benchmarks.test_quick_modes import run_quick


@pytest.mark.slow
def test_imagen_quick(tmp_path):
    """Fails if a part of the Imagen benchmark breaks, or if the markdown needs more than the JSON."""
    report, markdown = run_quick("imagen", tmp_path, "--threads", "1")
    assert [r["threshold"] for r in report["sweep"]["rows"]] == ["none", "static", "dynamic"] * 2
    assert report["sweep"]["real"]["joint"] == 1.0  # the pixel reader is right on real images
    assert report["peer_threshold"]["max_abs_difference"] < 1e-6  # diffusers' thresholding
    assert [s["kind"] for s in report["stages"]] == ["base", "super_resolution"]
    (aug,) = report["aug_ablations"]  # the SR stage replaced by itself: the code path only
    assert aug["size"] == 32 and len(aug["stages_before"]) == 1
    assert "augmentation_lowers_best_fd_at_32px" in report["goals"]
    assert "## Goals" in markdown and (tmp_path / "imagen_quick.png").is_file()
