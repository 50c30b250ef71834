"""The GPU path: device selection, channels_last, and CUDA runs that agree with the CPU.

Tests marked ``device`` need a CUDA GPU and are skipped without one; ``scripts/gpu_check.sh`` runs
them (``pytest -m device``) on a GPU machine. ``make test`` never needs a GPU.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from difflab.io.checkpoint import load_checkpoint
from difflab.io.device import autocast, select_device
from difflab.pipelines import load_pipeline
from difflab.training import train
from difflab.training.classifier_loop import train_classifier
from difflab.training.loop import build_run, diffusion_loss, restore_training_state
from difflab.training.state import STATE_FILE, open_run
from difflab.training.update import optimizer_update
from tests.training.test_classifier_loop import tiny_config as classifier_config
from tests.training.test_loop import tiny_config

needs_cuda = pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA GPU (run scripts/gpu_check.sh there)"
)
CUDA = torch.device("cuda") if torch.cuda.is_available() else None


def losses(out_dir):
    lines = (out_dir / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line)["loss"] for line in lines]


def weights(out_dir) -> torch.Tensor:
    tensors = load_checkpoint(out_dir / STATE_FILE)[0]
    return torch.cat(
        [v.double().flatten() for k, v in sorted(tensors.items()) if k[:6] == "model."]
    )


def relative_difference(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / a.norm())


@pytest.mark.device
def test_auto_picks_the_gpu_when_there_is_one_and_cpu_is_always_the_cpu():
    assert select_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert select_device("cpu") == torch.device("cpu")
    with autocast(True, torch.device("cpu")):
        assert torch.get_autocast_dtype("cpu") == torch.bfloat16 and torch.is_autocast_enabled(
            "cpu"
        )
    with autocast(False, torch.device("cpu")):
        assert not torch.is_autocast_enabled("cpu")


def opened_run(out_dir, *extra):
    """A diffusion run opened as ``difflab train`` opens it (no step taken)."""
    config = tiny_config(out_dir, "model.dropout=0", *extra)
    return open_run(config, False, build_run, restore_training_state)[0]


def test_channels_last_and_compile_reach_the_model_that_training_calls(tmp_path):
    """``train.channels_last``: weights (model and EMA) and activations in that memory format;
    ``train.compile``: the forward module is torch.compile's wrapper of the network. Fails if
    either flag is ignored (tried both; equal losses alone still pass with channels_last ignored).
    A compiled CPU training run is not in the suite: inductor took 556 s for 2 steps of the tiny
    U-Net on this 2-core machine (eager: 25 s, both while other jobs ran), so only the device test
    (``pytest -m device``) trains compiled."""
    run = opened_run(tmp_path / "run", "train.channels_last=true", "train.compile=true")
    assert isinstance(run.forward_module(), torch._dynamo.eval_frame.OptimizedModule)
    assert run.forward_module()._orig_mod is run.net
    convolutions = [m for m in run.net.modules() if isinstance(m, torch.nn.Conv2d)]
    ema_convolutions = [m for m in run.ema.module.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convolutions and ema_convolutions
    for conv in convolutions + ema_convolutions:
        assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    formats = []
    convolutions[-1].register_forward_hook(
        lambda module, inputs, output: formats.append(
            output.is_contiguous(memory_format=torch.channels_last)
        )
    )
    run.model = run.net  # one eager update: compiling would take minutes here
    optimizer_update(run, lambda index: diffusion_loss(run, index))
    assert formats == [True]  # the activations follow the weights
    plain = opened_run(tmp_path / "plain")
    wide = [m for m in plain.net.modules() if isinstance(m, torch.nn.Conv2d) and m.in_channels > 1]
    assert not wide[0].weight.is_contiguous(memory_format=torch.channels_last)
    assert plain.forward_module() is plain.net  # and nothing compiled by default


def test_channels_last_trains_like_the_default_memory_format(tmp_path):
    common = ("train.steps=3", "train.checkpoint_every=3", "model.dropout=0")
    train(tiny_config(tmp_path / "a", *common), progress=False)
    train(tiny_config(tmp_path / "b", *common, "train.channels_last=true"), progress=False)
    assert losses(tmp_path / "a") == pytest.approx(losses(tmp_path / "b"), rel=1e-5)
    assert relative_difference(weights(tmp_path / "a"), weights(tmp_path / "b")) < 1e-4


@pytest.mark.device
@needs_cuda
@pytest.mark.parametrize(
    "extra, tolerance",
    [((), 1e-3), (("train.bf16=true", "train.channels_last=true"), 5e-2)],
)
def test_training_on_cuda_follows_the_cpu(tmp_path, extra, tolerance):
    common = ("train.steps=3", "train.checkpoint_every=3", "model.dropout=0", *extra)
    train(tiny_config(tmp_path / "cpu", *common), progress=False)
    train(tiny_config(tmp_path / "cuda", *common), progress=False, device=CUDA)
    assert losses(tmp_path / "cpu") == pytest.approx(losses(tmp_path / "cuda"), rel=tolerance)
    # the checkpoint written on the GPU loads and samples on the CPU
    model = load_pipeline(tmp_path / "cuda" / "model.safetensors")
    assert torch.isfinite(model.generate(2, steps=2)).all()


@pytest.mark.device
@needs_cuda
def test_resume_on_cuda_continues_a_run(tmp_path):
    train(tiny_config(tmp_path, "train.steps=2"), progress=False, device=CUDA)
    train(tiny_config(tmp_path, "train.steps=4"), resume=True, progress=False, device=CUDA)
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [1, 2, 3, 4]


@pytest.mark.device
@needs_cuda
def test_torch_compile_on_cuda_trains_like_eager(tmp_path):
    common = ("train.steps=2", "train.checkpoint_every=2", "model.dropout=0")
    train(tiny_config(tmp_path / "eager", *common), progress=False, device=CUDA)
    compiled = tiny_config(tmp_path / "compiled", *common, "train.compile=true")
    train(compiled, progress=False, device=CUDA)
    assert losses(tmp_path / "eager") == pytest.approx(losses(tmp_path / "compiled"), rel=1e-3)


@pytest.mark.device
@needs_cuda
def test_classifier_training_and_its_evaluation_run_on_cuda(tmp_path):
    path = train_classifier(
        classifier_config(tmp_path, "train.steps=2"), progress=False, device=CUDA
    )
    assert load_checkpoint(path)[1]["accuracy_vs_t"]


@pytest.mark.device
@needs_cuda
def test_sampling_on_cuda_matches_the_cpu(tmp_path):
    train(tiny_config(tmp_path, "train.steps=2"), progress=False)
    on_cpu = load_pipeline(tmp_path / "model.safetensors")
    on_gpu = load_pipeline(tmp_path / "model.safetensors", CUDA)
    for eta in (0.0, 1.0):  # the noise is drawn on the CPU, so a seed gives the same images
        a = on_cpu.generate(4, steps=5, eta=eta, seed=3)
        b = on_gpu.generate(4, steps=5, eta=eta, seed=3).cpu()
        assert (a - b).abs().max().item() < 1e-3


def test_the_gpu_benchmark_runs_on_the_cpu_as_a_smoke_test(tmp_path):
    """benchmarks/gpu_throughput.py (scripts/gpu_check.sh's benchmark) in --quick mode on the CPU."""
    root = Path(__file__).resolve().parents[2]
    out = tmp_path / "gpu.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(root / "src")}
    command = [sys.executable, str(root / "benchmarks" / "gpu_throughput.py"), "--device", "cpu"]
    result = subprocess.run(
        [*command, "--quick", "--out", str(out)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(out.read_text())
    assert report["device"] == "cpu" and report["tests"] is None
    assert set(report["training"]) == {"batch", "fp32", "bf16", "bf16_channels_last"}
    assert all(report["training"][k]["images_per_s"] > 0 for k in ("fp32", "bf16"))
