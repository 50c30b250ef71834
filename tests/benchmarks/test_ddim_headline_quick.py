"""benchmarks/ddim_tables.py run on a subset of its cells (what ``make bench-ddim-headline`` runs):
``--steps``, ``--etas``, ``--n-inversion 0``, ``--seeds 1``, ``--no-figures`` and ``--name``."""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType

import pytest

from tests.benchmarks.test_quick_modes import REPO, benchmark


def ddim_tables() -> ModuleType:
    return benchmark("ddim_tables")


def run_and_rerender(out: Path, *args: str) -> tuple[dict, str]:
    """``ddim_tables.py --quick --out-dir OUT --name headline ARGS`` on the v-prediction,
    cosine-schedule mnist_fast; its JSON and markdown, checked to re-render identically."""
    script = ddim_tables()
    common = ["--quick", "--out-dir", str(out), "--name", "headline", "--threads", "1"]
    argv = [*common, "--checkpoint", "weights/mnist_fast.safetensors", *args]
    assert script.main(argv) == 0
    markdown = (out / "headline_quick.md").read_text()
    (out / "headline_quick.md").unlink()
    assert script.main([*common, "--render-only"]) == 0
    assert (out / "headline_quick.md").read_text() == markdown
    return json.loads((out / "headline_quick.json").read_text()), markdown


@pytest.mark.slow
def test_subset_runs_only_the_requested_cells_and_computes_the_goal_from_them(
    tmp_path, monkeypatch
):
    """Fails if --etas is ignored (more cells), if the goal ratio is not FD(η=0, S=20) /
    FD(η=1, longest S), if --n-inversion 0 or --seeds 1 still run Table 2 or the SE cells, if
    --no-figures still draws, or if --name does not rename the JSON and markdown."""
    monkeypatch.chdir(REPO)
    sizes = ["--n", "4", "--n-1000", "4", "--n-inversion", "0", "--seeds", "1"]
    report, markdown = run_and_rerender(
        tmp_path, "--steps", "20", "--etas", "1.0,0", *sizes, "--no-figures"
    )
    cells = {(r["variant"], r["steps"]): r["fd"] for r in report["table1"]}
    assert set(cells) == {("η=0.0", 20), ("η=1.0", 20)}
    assert all(r["n"] == 4 and r["seed"] == 0 for r in report["table1"])
    assert report["standard_error_cells"] == [] and report["standard_error"] is None
    assert report["goal_matched_n_cells"] == [] and report["table2"] == []
    headline, sigma_hat = report["goals"]
    assert headline["ratio"] == pytest.approx(cells["η=0.0", 20] / cells["η=1.0", 20])
    assert headline["passed"] == (headline["ratio"] <= 1.3)
    assert sigma_hat["passed"] is None and "not run" in sigma_hat["detail"]
    assert report["settings"]["variants"] == ["η=0.0", "η=1.0"] and report["figures"] is None
    assert report["name"] == "headline_quick" and not list(tmp_path.glob("*.png"))
    assert "--steps 20 --etas 0,1 --no-figures" in report["command"]
    assert "| η=1.0 |" in markdown and "| η=0.2 |" not in markdown and "| σ̂ |" not in markdown
    assert "n/a: Table 2 reconstruction MSE" in markdown and "Not run (--n-inversion 0)" in markdown
    assert "Not drawn (--no-figures)." in markdown


@pytest.mark.slow
def test_named_run_draws_name_prefixed_figures(tmp_path, monkeypatch):
    """Fails if the PNGs keep the ``ddim_`` prefix (a subset run would overwrite the full
    tables' figures), or if the seeds of the standard-error cell (η = 0) run without its row."""
    monkeypatch.chdir(REPO)
    argv = ["--steps", "2", "--etas", "sigma_hat", "--n", "4", "--n-1000", "4"]
    report, markdown = run_and_rerender(tmp_path, *argv, "--n-inversion", "0")
    assert [(r["variant"], r["steps"]) for r in report["table1"]] == [("σ̂", 2)]
    assert report["standard_error_cells"] == []  # the quick mode's 2 seeds need the η=0 row
    kinds = ("consistency", "fd_vs_steps", "interpolation")
    assert sorted(p.name for p in tmp_path.glob("*.png")) == [
        f"headline_{kind}_quick.png" for kind in kinds
    ]
    assert "`headline_fd_vs_steps_quick.png`" in markdown
    assert "n/a: η=0, S=20 reaches FD" in markdown  # goal (1)'s cells were not run


def test_steps_and_etas_parse_to_the_table_order():
    """Fails if --steps is not sorted and deduplicated or --etas not matched by value."""
    script = ddim_tables()
    assert script.table1_steps("1000, 20,20") == (20, 1000)
    assert script.table1_variants("sigma_hat,1.0,0") == ("η=0.0", "η=1.0", "σ̂")


@pytest.mark.parametrize(
    "argv",
    [
        ["--etas", "0.3"],
        ["--etas", ","],
        ["--steps", "0,20"],
        ["--steps", "x"],
        ["--n-inversion", "1"],
        ["--name", "../x"],
    ],
)
def test_bad_subset_flags_are_one_sentence(argv, capsys):
    """Fails if an η outside Table 1's rows, S < 1, one inversion digit or a path as --name
    is accepted."""
    with pytest.raises(SystemExit) as exit_info:
        ddim_tables().parse_args(argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and ("error: --" in err or "error: argument --" in err)


def test_etas_1000_restricts_only_the_longest_column():
    """The headline's cells: both rows at S = 20, only η = 1 at S = 1000 (the 1000-step ODE
    cell alone costs as much as the rest). Fails if --etas-1000 drops rows at other S or is
    ignored at the longest one."""
    script = ddim_tables()
    settings = script.Settings(
        steps=(20, 1000), variants=("η=0.0", "η=1.0"), full_variants=("η=1.0",), seeds=1
    )
    cells = {(c.steps, c.variant.label) for c in script.fd_cells(settings) if c.part == "table1"}
    assert cells == {(20, "η=0.0"), (20, "η=1.0"), (1000, "η=1.0")}
