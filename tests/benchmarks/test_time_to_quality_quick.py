"""``benchmarks/time_to_quality.py --quick``: checkpoints at CPU marks, scores, resume, goals."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.benchmarks.test_quick_modes import at_repo_root, benchmark, run_quick

__all__ = ["at_repo_root"]  # the fixture: the scripts read configs/ from the repository root


def test_quick_mode_saves_a_checkpoint_per_mark_scores_each_and_resumes(tmp_path, at_repo_root):
    """Fails if a checkpoint is saved before its CPU mark, if the new recipe's horizon does not
    stop its run, if a score or a sampling variant is missing, or if a second run trains or
    scores anything again."""
    module = benchmark("time_to_quality")
    report, markdown = run_quick("time_to_quality", tmp_path)
    rows = {row["recipe"]: row for row in report["rows"]}
    assert set(rows) == {"new", "old"}
    old = rows["old"]["checkpoints"]
    assert [c["mark_minutes"] for c in old] == list(module.QUICK.marks)
    assert all(c["cpu_seconds"] >= c["mark_minutes"] * 60 for c in old)
    assert old[0]["step"] < old[1]["step"]
    for row in rows.values():
        for checkpoint in row["checkpoints"]:
            assert (tmp_path / "time_to_quality_quick_runs" / row["recipe"]).is_dir()
            assert checkpoint["fd"] > 0 and checkpoint["n"] == module.QUICK.n
    assert rows["new"]["checkpoints"][-1]["step"] <= module.QUICK.horizon
    variants = report["variants"]  # scored on the new recipe's last checkpoint
    assert [v["variant"] for v in variants] == list(module.VARIANTS)
    assert {v["checkpoint"] for v in variants} == {rows["new"]["checkpoints"][-1]["path"]}
    assert variants[0]["n"] == module.QUICK.n and "static x0 clipping" in markdown
    assert "FD ≤ 0.2" in markdown and "| new |" in markdown and "| old |" in markdown

    scores = tmp_path / "time_to_quality_quick_runs" / "scores.json"
    logs = sorted((tmp_path / "time_to_quality_quick_runs").glob("*/log.json"))
    before = [p.read_text() for p in [scores, *logs]]
    assert module.main(["--quick", "--out-dir", str(tmp_path)]) == 0
    assert [p.read_text() for p in [scores, *logs]] == before  # nothing retrained or rescored
    again = json.loads((tmp_path / "time_to_quality_quick.json").read_text())
    assert [r["checkpoints"] for r in again["rows"]] == [r["checkpoints"] for r in report["rows"]]


def test_first_mark_below_reads_the_first_checkpoint_at_or_under_a_threshold():
    module = benchmark("time_to_quality")
    row = {"checkpoints": [{"cpu_seconds": 600, "fd": 2.0}, {"cpu_seconds": 1200, "fd": 0.9}]}
    assert module.first_mark_below(row, 1.0) == 20.0
    assert module.first_mark_below(row, 0.9) == 20.0
    assert module.first_mark_below(row, 0.5) is None


def test_a_job_claimed_by_a_live_process_is_skipped_and_a_dead_ones_claim_is_taken_over(tmp_path):
    """Fails if two scoring processes could take the same job, or if a killed one's claim
    blocked its job for ever."""
    module = benchmark("time_to_quality")
    claim = tmp_path / ".job.claim"
    assert module.claim_job(claim) and claim.read_text() == str(os.getpid())
    assert not module.claim_job(claim)  # held by this (live) process
    ended = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        text=True,
        capture_output=True,
        check=True,
    )
    claim.write_text(ended.stdout.strip())  # the claim of a process that has ended
    assert module.claim_job(claim) and claim.read_text() == str(os.getpid())
