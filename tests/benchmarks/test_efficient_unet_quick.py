"""``benchmarks/efficient_unet.py --quick`` runs end to end (two layouts of the Imagen base stage
trained for three steps, timed, sampled and scored) and its report re-renders from the JSON."""

from __future__ import annotations

import pytest

from tests.benchmarks.test_quick_modes import run_quick


@pytest.mark.slow
def test_efficient_unet_quick(tmp_path):
    """Fails if a part breaks, if the layouts' networks are not the configs' (the efficient one
    must run fewer FLOPs with resample_first), or if the markdown needs more than the JSON."""
    report, markdown = run_quick("efficient_unet", tmp_path, "--threads", "1")
    standard, efficient = report["layouts"]["standard"], report["layouts"]["efficient"]
    assert not standard["resample_first"] and efficient["resample_first"]
    assert efficient["num_res_blocks"] == [1, 1, 2] and standard["num_res_blocks"] == [1, 1, 1]
    ratios = report["ratios"]["efficient"]
    assert ratios["forward_flops"] < 0.5 and ratios["parameters"] > 1
    assert all(
        v > 0 for layout in report["layouts"].values() for v in layout["held_out_loss"]["bands"]
    )
    assert (
        "## The paper's claims here" in markdown
        and (tmp_path / "efficient_unet_quick.png").is_file()
    )
