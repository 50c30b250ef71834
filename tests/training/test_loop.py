import json

import pytest
import torch

from difflab.config import load_config
from difflab.errors import DifflabError
from difflab.io.checkpoint import load_checkpoint
from difflab.pipelines import load_pipeline
from difflab.training import loop, train
from difflab.training.data_order import BatchStream
from difflab.training.state import STATE_FILE


def tiny_config(out_dir, *extra):
    return load_config(
        None,
        [
            "data.name=digits",
            "model.preset=unet-tiny",
            "model.dropout=0.1",
            "diffusion.num_timesteps=50",
            "train.batch_size=16",
            "train.lr=0.001",
            "train.log_every=1",
            "train.sample_every=100",
            "train.sample_steps=3",
            f"train.out_dir={out_dir}",
            *extra,
        ],
    )


def test_training_reduces_the_loss_and_writes_artifacts(tmp_path):
    path = train(
        tiny_config(tmp_path, "train.steps=60", "train.checkpoint_every=30"), progress=False
    )
    assert path == tmp_path / "model.safetensors"
    losses = [
        json.loads(line)["loss"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()
    ]
    assert len(losses) == 60
    assert sum(losses[-10:]) / 10 < 0.7 * sum(losses[:10]) / 10
    assert (tmp_path / "samples" / "step_0000060.png").exists()
    model = load_pipeline(path)
    assert model.description.step == 60 and model.image_shape == (1, 8, 8)
    assert model.generate(4, steps=3).shape == (4, 1, 8, 8)


def all_tensors(out_dir):
    return load_checkpoint(out_dir / STATE_FILE)[0]


class Interrupted(Exception):
    """Stands for a process killed right after a checkpoint."""


def stop_after_checkpoint(monkeypatch, config, step):
    """Train ``config`` until the checkpoint of ``step`` is written, then stop the run."""
    save = loop.save_training_state

    def save_then_stop(run, out_dir):
        save(run, out_dir)
        if run.step == step:
            raise Interrupted

    with monkeypatch.context() as patch:
        patch.setattr(loop, "save_training_state", save_then_stop)
        with pytest.raises(Interrupted):
            train(config, progress=False)


@pytest.mark.parametrize(
    "extra",
    [
        (),
        (
            "train.grad_accum=2",
            "train.bf16=true",
            "model.num_classes=10",
            "train.label_dropout=0.2",
        ),
        ("model.preset=dit-tiny", "model.num_classes=10", "train.label_dropout=0.2"),  # DiT
        ("model.learn_sigma=true", "train.vlb_weight=0.001"),  # L_hybrid
        (  # the recipe options of issue 17
            "model.prediction=v",
            "diffusion.schedule=cosine",
            "train.min_snr_gamma=5",
            "train.warmup_steps=2",
            "train.lr_decay=cosine",
            "train.ema_warmup=false",
        ),
    ],
    ids=["unet", "unet-conditional-accumulated-bf16", "dit-conditional", "unet-hybrid", "recipe"],
)
def test_resume_is_bit_identical_to_an_uninterrupted_run(tmp_path, monkeypatch, extra):
    """U-Net and DiT alike; fails if resuming drops the optimizer's moments (tried on the DiT).
    The L_hybrid run (learned Σ) checks that the vlb term adds no state outside the checkpoint;
    the recipe run that the cosine learning rate (a function of the step, horizon train.steps)
    and the EMA without warm-up resume exactly: its first part is stopped by an exception after
    the step-4 checkpoint (train.steps=8 throughout, since the horizon is part of the recipe)."""
    straight, split = tmp_path / "straight", tmp_path / "split"
    train(
        tiny_config(straight, "train.steps=8", "train.checkpoint_every=4", *extra), progress=False
    )
    if "train.lr_decay=cosine" in extra:
        config = tiny_config(split, "train.steps=8", "train.checkpoint_every=4", *extra)
        stop_after_checkpoint(monkeypatch, config, step=4)
    else:
        train(
            tiny_config(split, "train.steps=4", "train.checkpoint_every=4", *extra), progress=False
        )
    train(
        tiny_config(split, "train.steps=8", "train.checkpoint_every=4", *extra),
        resume=True,
        progress=False,
    )
    a, b = all_tensors(straight), all_tensors(split)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    logs = [(d / "metrics.jsonl").read_text() for d in (straight, split)]
    assert [json.loads(x)["loss"] for x in logs[0].splitlines()] == [
        json.loads(x)["loss"] for x in logs[1].splitlines()
    ]


def test_checkpoints_record_training_time_summed_over_resumes(tmp_path):
    """Wall-clock and process CPU seconds of the updates: in the model and the state file, and a
    resumed run adds its own to those it read back (fails if resume starts again from zero)."""
    train(tiny_config(tmp_path, "train.steps=2", "train.checkpoint_every=2"), progress=False)
    first = load_checkpoint(tmp_path / "model.safetensors")[1]
    assert first["train_seconds"] > 0 and first["train_cpu_seconds"] > 0
    state = load_checkpoint(tmp_path / STATE_FILE)[1]
    assert state["train_cpu_seconds"] == first["train_cpu_seconds"]
    config = tiny_config(tmp_path, "train.steps=4", "train.checkpoint_every=2")
    train(config, resume=True, progress=False)
    second = load_checkpoint(tmp_path / "model.safetensors")[1]
    assert second["step"] == 4
    assert second["train_seconds"] > first["train_seconds"]
    assert second["train_cpu_seconds"] > first["train_cpu_seconds"]


def test_resume_after_a_crash_drops_metrics_written_after_the_checkpoint(tmp_path):
    train(tiny_config(tmp_path, "train.steps=4", "train.checkpoint_every=2"), progress=False)
    with open(
        tmp_path / "metrics.jsonl", "a"
    ) as handle:  # lines a crashed run wrote past its checkpoint
        handle.write(json.dumps({"step": 99, "loss": 1.0}) + "\n")
    train(
        tiny_config(tmp_path, "train.steps=6", "train.checkpoint_every=2"),
        resume=True,
        progress=False,
    )
    steps = [
        json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()
    ]
    assert steps == [1, 2, 3, 4, 5, 6]


def test_resume_refuses_a_different_model_and_a_missing_run(tmp_path):
    train(tiny_config(tmp_path, "train.steps=2", "train.checkpoint_every=2"), progress=False)
    with pytest.raises(DifflabError, match="different model config"):
        train(
            tiny_config(tmp_path, "train.steps=4", "model.base_channels=16"),
            resume=True,
            progress=False,
        )
    with pytest.raises(DifflabError, match="already holds a run"):
        train(tiny_config(tmp_path, "train.steps=4"), progress=False)
    with pytest.raises(DifflabError, match="nothing to resume"):
        train(tiny_config(tmp_path / "new", "train.steps=4"), resume=True, progress=False)


@pytest.mark.parametrize(
    "skip, message",
    [
        (0, r"at step 2 \(the last good checkpoint is .*last.safetensors\)"),
        (2, r"at step 2, after skipping 2 such batches \(the last good checkpoint"),
    ],
)
def test_a_nan_loss_stops_with_the_step_number_and_the_last_checkpoint(tmp_path, skip, message):
    # lr 1e30: step 1 computes a finite loss, then its update breaks the weights; step 2 is NaN,
    # and so is every batch after it: skipping them (train.skip_nonfinite) cannot help
    with pytest.raises(DifflabError, match=message):
        train(
            tiny_config(
                tmp_path,
                "train.steps=5",
                "train.checkpoint_every=1",
                "train.lr=1e30",
                "train.grad_clip=0",
                f"train.skip_nonfinite={skip}",
            ),
            progress=False,
        )


def test_unwritable_output_folder_fails_before_training(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(DifflabError, match=r"sits under .*file, which is a file, not a folder"):
        train(tiny_config(blocker / "run", "train.steps=2"), progress=False)


def test_conditional_model_needs_labels_and_dropout_needs_a_conditional_model(tmp_path):
    with pytest.raises(DifflabError, match="label_dropout"):
        train(tiny_config(tmp_path, "train.label_dropout=0.1"), progress=False)


def test_batch_stream_covers_each_epoch_once_and_resumes():
    stream = BatchStream(10, 4, seed=3)
    first_epoch = torch.cat([stream.next(), stream.next(), stream.next()[:2]])
    assert sorted(first_epoch.tolist()) == list(range(10))
    state = stream.state()
    upcoming = stream.next()
    resumed = BatchStream(10, 4, seed=3, **state)
    assert torch.equal(resumed.next(), upcoming)


def poison_one_image_of_step_2(monkeypatch, batch_size=16):
    """Make the first image that step 2 draws NaN, so step 2 (and only it) has a NaN loss."""
    import difflab.training.loop as loop

    real_build = loop.build_run

    def build(config):
        run = real_build(config)
        stream = BatchStream(len(run.dataset), batch_size, config.train.seed)
        stream.next()
        run.dataset.images = run.dataset.images.clone()  # never a shared tensor
        run.dataset.images[stream.next()[0]] = float("nan")
        return run

    monkeypatch.setattr(loop, "build_run", build)


def test_skip_nonfinite_skips_a_bad_batch_and_logs_it(tmp_path, monkeypatch):
    poison_one_image_of_step_2(monkeypatch)
    train(tiny_config(tmp_path, "train.steps=4", "train.skip_nonfinite=1"), progress=False)
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert records[1] == {"step": 2, "skipped_nonfinite": 1}
    assert [r["step"] for r in records if "loss" in r] == [1, 2, 3, 4]
    tensors, meta = load_checkpoint(tmp_path / STATE_FILE)
    assert meta["step"] == 4 and meta["state"]["skipped"] == 1
    assert all(torch.isfinite(v).all() for k, v in tensors.items() if k.startswith("model."))


def test_without_skip_nonfinite_the_same_batch_stops_the_run(tmp_path, monkeypatch):
    poison_one_image_of_step_2(monkeypatch)
    with pytest.raises(DifflabError, match=r"the loss became nan at step 2 \(no checkpoint"):
        train(tiny_config(tmp_path, "train.steps=4"), progress=False)
