"""The Imagen stage loop's optimisation settings: learning-rate warm-up and decay, checked config."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from difflab.errors import DifflabError
from difflab.training import imagen_loop
from difflab.training.imagen_loop import imagen_stage_config, train_imagen_stage
from difflab.training.update import learning_rate
from tests.data.test_colour_digits import write_square_mnist
from tests.pipelines.test_cascade import TINY_MODEL


def tiny_base(folder: Path, **train) -> dict:
    return dict(
        stage="base",
        data=dict(size=8, count=24, data_dir=str(folder)),
        text_encoder={"max_length": 16},
        model=dict(TINY_MODEL, prediction="v"),
        diffusion={"schedule": "cosine", "num_timesteps": 50},
        train=dict(batch_size=4, log_every=100, out=str(folder / "base.safetensors"), **train),
    )


def test_each_update_uses_the_warmed_up_then_decayed_learning_rate(tmp_path, monkeypatch):
    """Fails if the stage loop trains at a constant train.lr while the config asks for a linear
    warm-up and a cosine decay (the schedule difflab train uses: training.update.learning_rate)."""
    folder = Path(write_square_mnist(tmp_path, 24, 10))
    config = imagen_stage_config(
        tiny_base(folder, steps=6, lr=1e-3, warmup_steps=2, lr_decay="cosine", lr_floor=0.0),
        "base",
    )
    seen: list[float] = []
    build = imagen_loop.build_optimizer

    def recording_optimizer(net, train):
        optimizer = build(net, train)
        step = optimizer.step

        def recorded_step(*args, **kwargs):
            seen.append(optimizer.param_groups[0]["lr"])
            return step(*args, **kwargs)

        optimizer.step = recorded_step
        return optimizer

    monkeypatch.setattr(imagen_loop, "build_optimizer", recording_optimizer)
    train_imagen_stage(config, progress=False)
    expected = [learning_rate(config.train, step) for step in range(6)]  # type: ignore[arg-type]
    assert seen == pytest.approx(expected)
    assert seen[0] == pytest.approx(5e-4) and seen[1] == pytest.approx(1e-3)  # warm-up
    assert seen[1] > seen[3] > seen[5] > 0  # the cosine towards lr_floor * lr = 0 at step 6
    assert torch.isfinite(torch.tensor(seen)).all()


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("lr_decay", "linear", "lr_decay must be one of constant, cosine and lr_floor lie in"),
        ("lr_floor", 1.5, "lr_decay must be one of constant, cosine and lr_floor lie in"),
        ("warmup_steps", -1, "base.train.warmup_steps must be 0 or more, got -1."),
    ],
)
def test_learning_rate_settings_are_checked(tmp_path, key, value, message):
    """Fails if an unknown decay, a floor above lr or a negative warm-up reaches the loop."""
    with pytest.raises(DifflabError, match=message):
        imagen_stage_config(tiny_base(tmp_path, **{key: value}), "base")
