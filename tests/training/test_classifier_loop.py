"""Training the noisy classifier: cross-entropy on x_t at random t, checkpoints, resume."""

import json

import pytest
import torch

from difflab.config import load_config
from difflab.diffusion import NoiseSchedule
from difflab.errors import DifflabError
from difflab.io.checkpoint import load_checkpoint
from difflab.pipelines import load_noisy_classifier
from difflab.training.classifier_loop import (
    ACCURACY_FILE,
    accuracy_by_timestep,
    evaluation_timesteps,
    train_classifier,
)
from difflab.training.state import STATE_FILE


def tiny_config(out_dir, *extra):
    return load_config(
        None,
        [
            "kind=classifier",
            "data.name=digits",
            "model.preset=classifier-tiny",
            "diffusion.num_timesteps=50",
            "train.batch_size=32",
            "train.lr=0.003",
            "train.log_every=1",
            "train.ema_decay=0.9",
            f"train.out_dir={out_dir}",
            *extra,
        ],
    )


def test_training_learns_digits_and_reports_accuracy_by_timestep(tmp_path):
    path = train_classifier(tiny_config(tmp_path, "train.steps=60"), progress=False)
    assert path == tmp_path / "model.safetensors"
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == 60 and {"loss", "accuracy", "lr"} <= set(records[0])
    losses = [r["loss"] for r in records]
    assert sum(losses[-10:]) / 10 < 0.8 * sum(losses[:10]) / 10
    table = json.loads((tmp_path / ACCURACY_FILE).read_text())["accuracy_vs_t"]
    assert [row["t"] for row in table] == evaluation_timesteps(50)
    # nearly clean digits are recognised well above chance (0.1), pure noise is not
    assert table[0]["accuracy"] > 0.5 and table[0]["accuracy"] > table[-1]["accuracy"]
    tensors, meta = load_checkpoint(path, kind="classifier")
    assert meta["arch"] == "noisy-classifier" and meta["step"] == 60
    assert meta["accuracy_vs_t"] == table and all(k.startswith("model.") for k in tensors)
    classifier = load_noisy_classifier(path)
    assert classifier.config.image_size == 8 and not classifier.training
    assert all(not p.requires_grad for p in classifier.parameters())


def test_resume_continues_bit_for_bit(tmp_path):
    straight = tmp_path / "straight"
    train_classifier(tiny_config(straight, "train.steps=4"), progress=False)
    split = tmp_path / "split"
    train_classifier(
        tiny_config(split, "train.steps=2", "train.checkpoint_every=2"), progress=False
    )
    train_classifier(tiny_config(split, "train.steps=4"), resume=True, progress=False)
    a, b = load_checkpoint(straight / STATE_FILE)[0], load_checkpoint(split / STATE_FILE)[0]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert len((split / "metrics.jsonl").read_text().splitlines()) == 4


@pytest.mark.parametrize(
    "extra,message",
    [
        (("kind=diffusion",), "kind: classifier"),
        (("model.preset=unet-tiny",), "unknown classifier preset"),
        (("train.label_dropout=0.1",), "label_dropout"),
        (("model.num_classes=5",), "has 10 classes"),
        (("train.steps=0",), "train.steps must be at least 1"),
    ],
)
def test_bad_configs_are_one_clear_sentence(tmp_path, extra, message):
    with pytest.raises(DifflabError, match=message):
        train_classifier(tiny_config(tmp_path, "train.steps=2", *extra), progress=False)


def test_an_existing_run_is_not_overwritten(tmp_path):
    train_classifier(tiny_config(tmp_path, "train.steps=1"), progress=False)
    with pytest.raises(DifflabError, match="already holds a run"):
        train_classifier(tiny_config(tmp_path, "train.steps=1"), progress=False)


def test_accuracy_by_timestep_of_an_oracle_and_of_chance():
    schedule = NoiseSchedule.from_name("linear", 100)
    images = torch.cat([-torch.ones(20, 1, 4, 4), torch.ones(20, 1, 4, 4)])
    labels = torch.cat([torch.zeros(20), torch.ones(20)]).long()

    class MeanSign(torch.nn.Module):
        def forward(self, x_t, t):
            mean = x_t.flatten(1).mean(1, keepdim=True)
            return torch.cat([-mean, mean], dim=1)

    rows = accuracy_by_timestep(MeanSign(), schedule, images, labels, [0, 99], batch_size=16)
    assert rows[0]["t"] == 0 and rows[0]["accuracy"] == 1.0
    assert rows[1]["alpha_bar"] == pytest.approx(float(schedule.alpha_bar[99]))
    assert evaluation_timesteps(1000) == [0, 111, 222, 333, 444, 555, 666, 777, 888, 999]
