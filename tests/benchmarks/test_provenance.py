"""Every results file records the commit and the SHA-256 of the shipped weights it ran on, and
those hashes are the files shipped now (a retrained model makes the results that used it fail
here until they are rerun or marked stale)."""

from __future__ import annotations

import json
import re

import pytest

from difflab.io.checkpoint import load_checkpoint_meta
from difflab.io.weights import weights_dir
from tests.benchmarks.test_quick_modes import RESULTS, benchmark

RESULT_FILES = sorted(p for p in RESULTS.glob("*.json"))


@pytest.mark.parametrize("path", RESULT_FILES, ids=[p.stem for p in RESULT_FILES])
def test_results_record_their_commit_and_the_hashes_of_their_weights(path):
    """Fails when a shipped checkpoint changes after the results that used it (tried: a
    recorded hash with one digit changed), or when a results file records no provenance."""
    provenance = json.loads(path.read_text()).get("provenance")
    assert provenance, f"{path.name} records no provenance (benchmarks/common.publish adds it)"
    assert re.fullmatch(r"[0-9a-f]{40}", provenance["commit"] or ""), provenance
    if provenance.get("stale"):
        return  # the README says what changed since (see its Results section)
    common = benchmark("common")
    for name, recorded in provenance["weights"].items():
        shipped = weights_dir() / name
        assert shipped.is_file(), f"{path.name} ran on {name}, which is no longer shipped"
        assert common.sha256_of(shipped) == recorded, (
            f"{path.name} ran on another {name}: rerun the benchmark or mark it stale"
        )


def test_publish_records_the_weights_a_measurement_opened(tmp_path):
    common = benchmark("common")
    args = common.bench_parser("x", "quick").parse_args(["--out-dir", str(tmp_path)])

    def measure() -> dict:
        load_checkpoint_meta(weights_dir() / "mnist_ddim.safetensors")
        return {"value": 1}

    assert common.publish(args, "probe", measure, lambda report: "probe") == 0
    report = json.loads((tmp_path / "probe.json").read_text())
    shipped = weights_dir() / "mnist_ddim.safetensors"
    assert report["provenance"]["weights"] == {shipped.name: common.sha256_of(shipped)}
    assert re.fullmatch(r"[0-9a-f]{40}", report["provenance"]["commit"])
