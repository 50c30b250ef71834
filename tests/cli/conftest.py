from pathlib import Path

import pytest
import torch

import difflab.cli.generate
from difflab.cli import main

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def run_cli(argv: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    """``difflab ARGV`` in-process: (exit code, stdout, stderr); argparse's exits included."""
    try:
        code = main(argv)
    except SystemExit as stop:
        code = stop.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def sampled_images(argv: list[str]) -> torch.Tensor:
    """The images ``difflab ARGV`` (sample, invert, interpolate) hands to its PNG grid, before
    the PNG's clamping and rounding: ``(N, C, H, W)`` floats. Fails if the command fails."""
    grids: list[torch.Tensor] = []
    real_save_grid = difflab.cli.generate.save_grid

    def keep(images: torch.Tensor, *args, **kwargs) -> None:
        grids.append(images.detach().cpu().clone())
        real_save_grid(images, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(difflab.cli.generate, "save_grid", keep)
        assert main(argv) == 0, argv
    assert len(grids) == 1
    return grids[0]


def train_tiny(out_dir: Path, *overrides: str) -> int:
    """``difflab train configs/digits_tiny.yaml`` shortened to a few steps."""
    return main(
        [
            "train",
            "--quiet",
            str(CONFIGS / "digits_tiny.yaml"),
            f"train.out_dir={out_dir}",
            "train.steps=3",
            "train.sample_steps=2",
            *overrides,
        ]
    )


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A real (3-step) unconditional checkpoint."""
    out = tmp_path_factory.mktemp("run")
    assert train_tiny(out) == 0
    return out / "model.safetensors"


@pytest.fixture(scope="session")
def tiny_conditional_checkpoint(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("run_cond")
    assert train_tiny(out, "model.num_classes=10", "train.label_dropout=0.1") == 0
    return out / "model.safetensors"
