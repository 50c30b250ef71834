"""benchmarks/samplers.py ``--update``: re-measured cells replace the same (model, sampler, S)
cells of the existing report, the rest stay, and the report lists the change."""

from __future__ import annotations

import json

import pytest

from tests.benchmarks.test_quick_modes import benchmark


def cell(sampler: str, steps: int, fd: float) -> dict:
    return {"model": "mnist_fast", "sampler": sampler, "steps": steps, "nfe": steps, "fd": fd}


def test_update_replaces_only_the_remeasured_cells(tmp_path):
    """Fails if --update drops the cells it did not measure, keeps the stale copy of one it did,
    keeps old peer rows beside new ones, or does not record what changed."""
    samplers = benchmark("samplers")
    old = {
        "settings": {"models": ["mnist_fast"], "samplers": ["ddim", "heun"], "nfe": [5, 10]},
        "rows": {
            "mnist_fast": [cell("ddim", 5, 2.0), cell("heun", 3, 160.0), cell("heun", 5, 187.0)],
            "peer": [{"sampler": "heun", "steps": 5, "max_abs_diff": 1.0}],
        },
        "command": "the first run",
    }
    (tmp_path / "samplers_fast.json").write_text(json.dumps(old))
    args = samplers.parse_args(
        ["--out-dir", str(tmp_path), "--name", "samplers_fast", "--update", "--models",
         "mnist_fast", "--samplers", "heun", "--nfe", "5,20"]
    )  # fmt: skip
    settings = samplers.settings_from(args)
    new = {
        "mnist_fast": [cell("heun", 3, 1.5), cell("heun", 10, 1.2)],
        "peer": [{"sampler": "heun", "steps": 5, "max_abs_diff": 1e-6}],
    }
    report = samplers.updated(args, settings, new)
    rows = report["rows"]["mnist_fast"]
    assert sorted((r["sampler"], r["steps"], r["fd"]) for r in rows) == [
        ("ddim", 5, 2.0),
        ("heun", 3, 1.5),
        ("heun", 5, 187.0),
        ("heun", 10, 1.2),
    ]
    assert report["rows"]["peer"] == new["peer"]
    assert report["settings"]["nfe"] == [5, 10, 20] and report["command"] == "the first run"
    (change,) = report["updates"]
    assert change["cells"] == ["mnist_fast heun S=3", "mnist_fast heun S=10"]
    assert change["replaced"] == [cell("heun", 3, 160.0)]
    assert "--update" in change["command"]


def test_update_without_a_report_is_one_sentence(tmp_path):
    samplers = benchmark("samplers")
    args = samplers.parse_args(["--out-dir", str(tmp_path), "--update"])
    with pytest.raises(SystemExit, match=r"--update needs .*samplers\.json; run the benchmark"):
        samplers.updated(args, samplers.settings_from(args), {})
