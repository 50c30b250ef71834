"""benchmarks/ddim_inversion.py --quick: runs end to end and writes a coherent report."""

from __future__ import annotations

import importlib
import json
import math
import shutil
import sys
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[2]
BENCHMARKS = REPO / "benchmarks"


def ddim_inversion() -> ModuleType:
    if str(BENCHMARKS) not in sys.path:
        sys.path.insert(0, str(BENCHMARKS))
    return importlib.import_module("ddim_inversion")


def run_script(*args: str) -> int:
    """The benchmark's ``main`` in this process (a subprocess would pay torch's import again)."""
    return ddim_inversion().main(list(args))


@pytest.mark.slow
def test_quick_mode_writes_json_markdown_and_plot(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    assert run_script("--quick", "--out-dir", str(tmp_path)) == 0
    report = json.loads((tmp_path / "ddim_inversion_quick.json").read_text())
    assert [row["steps"] for row in report["rows"]] == [2, 4]
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
    assert run_script("--quick", "--out-dir", str(tmp_path), "--render-only") == 0
    assert (tmp_path / "ddim_inversion_quick.md").read_text() == markdown


def test_committed_results_re_render_to_the_committed_markdown(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    results = REPO / "benchmarks" / "results"
    if not (results / "ddim_inversion.json").exists():
        pytest.skip("benchmarks/results/ddim_inversion.json is not committed")
    shutil.copy(results / "ddim_inversion.json", tmp_path)
    assert run_script("--render-only", "--out-dir", str(tmp_path)) == 0
    rendered = (tmp_path / "ddim_inversion.md").read_text()
    assert rendered == (results / "ddim_inversion.md").read_text()
