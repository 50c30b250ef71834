"""benchmarks/ddim_inversion.py --quick: runs end to end and writes a coherent report."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "benchmarks" / "ddim_inversion.py"


def run_script(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=REPO,
        env=env,
    )


@pytest.mark.slow
def test_quick_mode_writes_json_markdown_and_plot(tmp_path):
    done = run_script("--quick", "--out-dir", str(tmp_path))
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads((tmp_path / "ddim_inversion_quick.json").read_text())
    assert [row["steps"] for row in report["rows"]] == [5, 10]
    for row in report["rows"]:
        source, destination = row["source"]["mse_unit"], row["destination"]["mse_unit"]
        assert 0 < source < 1 and 0 < destination < 1
        assert math.isclose(row["ratio_source_over_destination"], source / destination)
        assert 0 <= row["destination_better_digits"] <= row["n"] == report["n"] == 4
    assert report["verdict"] in ("source", "destination", "mixed")
    assert report["default_eps_at"] in ("source", "destination")
    assert "torch" in report["machine"] and "cpu_flags" in report["machine"]
    markdown = (tmp_path / "ddim_inversion_quick.md").read_text()
    assert "| S |" in markdown and "eps at destination" in markdown
    assert (tmp_path / "ddim_inversion_quick.png").stat().st_size > 1000
    # the markdown is rendered from the JSON alone
    (tmp_path / "ddim_inversion_quick.md").unlink()
    again = run_script("--quick", "--out-dir", str(tmp_path), "--render-only")
    assert again.returncode == 0, again.stdout + again.stderr
    assert (tmp_path / "ddim_inversion_quick.md").read_text() == markdown


def test_committed_results_re_render_to_the_committed_markdown(tmp_path):
    results = REPO / "benchmarks" / "results"
    if not (results / "ddim_inversion.json").exists():
        pytest.skip("benchmarks/results/ddim_inversion.json is not committed")
    shutil.copy(results / "ddim_inversion.json", tmp_path)
    done = run_script("--render-only", "--out-dir", str(tmp_path))
    assert done.returncode == 0, done.stdout + done.stderr
    rendered = (tmp_path / "ddim_inversion.md").read_text()
    assert rendered == (results / "ddim_inversion.md").read_text()
