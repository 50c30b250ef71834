"""Failure modes of a training run (issue 18): a full disk, a killed writer's leftovers, a second
run on a folder, changed data on resume, a closed pipe."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from difflab.data import load_dataset
from difflab.errors import DifflabError
from difflab.io.atomic import TEMP_PREFIX
from difflab.io.checkpoint import load_checkpoint
from difflab.io.lock import LOCK_FILE
from difflab.training import progress
from difflab.training.data_order import BatchStream, check_same_data, dataset_identity
from difflab.training.progress import JsonlLog
from difflab.training.state import trim_log
from tests.cli.conftest import CONFIGS, run_cli
from tests.io.test_ownership import HOLD_LOCK

TINY = str(CONFIGS / "digits_tiny.yaml")


def train_argv(out_dir: Path, *extra: str) -> list[str]:
    return [
        "train",
        "--quiet",
        TINY,
        f"train.out_dir={out_dir}",
        "train.steps=3",
        "train.checkpoint_every=1",
        "train.log_every=1",
        "train.sample_every=100",
        "train.sample_steps=1",
        "data.limit=64",
        *extra,
    ]


def test_a_full_disk_then_resume_ends_with_the_weights_of_an_uninterrupted_run(
    tmp_path, monkeypatch, capsys
):
    """ENOSPC while writing the metrics line of step 2 (simulated: the write is cut in half):
    one sentence, no partial line; freeing space and ``--resume`` from step 1's checkpoint give
    bit for bit the weights of a run that never failed.

    Fails if a metric line can be half-written, if the resume dies on it, or if the resumed run
    differs (data order, RNG or optimizer state not restored).
    """
    code, _, _ = run_cli(train_argv(tmp_path / "whole"), capsys)
    assert code == 0
    real_write = os.write
    calls = {"lines": 0}

    def disk_fills_at_step_2(fd, data):
        if data.startswith(b'{"step": 2'):
            calls["lines"] += 1
            return real_write(fd, data[: len(data) // 2])  # a short write: the disk is full
        return real_write(fd, data)

    monkeypatch.setattr(progress.os, "write", disk_fills_at_step_2)
    run = tmp_path / "full"
    code, _, err = run_cli(train_argv(run), capsys)
    assert code == 2 and calls["lines"] == 1
    assert "No space left on device" in err and "last checkpoint is intact" in err
    assert len(err.strip().splitlines()) == 1
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [1]  # whole lines only
    monkeypatch.undo()
    with open(run / "metrics.jsonl", "a") as handle:  # a line a crash cut short, for the note
        handle.write('{"step": 2, "lo')
    code, _, err = run_cli([*train_argv(run), "--resume"], capsys)
    assert code == 0
    assert "dropped 1 malformed line(s)" in err
    whole, _ = load_checkpoint(tmp_path / "whole" / "model.safetensors")
    resumed, _ = load_checkpoint(run / "model.safetensors")
    assert whole.keys() == resumed.keys()
    assert all(torch.equal(whole[k], resumed[k]) for k in whole)
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3]
    assert not (run / LOCK_FILE).exists()  # the lock is given back when the run ends


def test_a_failed_run_removes_no_file_it_did_not_write(tmp_path, capsys):
    """Issue 18.1: a user's ``.thesis.docx.tmp`` below train.out_dir survives a run that fails on
    bad input; so does a stale difflab temporary (removed only once the inputs pass)."""
    scratch = tmp_path / "scratch"
    (scratch / "sub").mkdir(parents=True)
    thesis = scratch / "sub" / ".thesis.docx.tmp"
    thesis.write_text("x")
    stale = scratch / f"{TEMP_PREFIX}999999999.model.safetensors.x.tmp"
    stale.write_text("half")
    bad = tmp_path / "images"
    bad.mkdir()
    (bad / "a.png").write_bytes(os.urandom(64))
    argv = train_argv(scratch, "data.name=folder", f"data.data_dir={bad}", "data.image_size=8")
    before = sorted(p.relative_to(scratch) for p in scratch.rglob("*"))
    code, _, err = run_cli(argv, capsys)
    assert code == 2 and "a.png cannot be read as an image" in err
    assert sorted(p.relative_to(scratch) for p in scratch.rglob("*")) == before


def test_changed_data_is_refused_and_a_bad_position_never_loops():
    """Issue 18.6. Fails if the identity ignores pixels or labels, or BatchStream accepts a
    position outside the data (its next() looped forever)."""
    data = load_dataset("digits", split="train", limit=16)
    identity = dataset_identity(data)
    assert identity == dataset_identity(data) and identity["size"] == 16
    data.images[3, 0, 2, 2] += 0.5
    changed = dataset_identity(data)
    with pytest.raises(DifflabError, match="same 16 images count but different pixels"):
        check_same_data(identity, changed, Path("last.safetensors"))
    with pytest.raises(DifflabError, match="16 images then, 5 now"):
        check_same_data(identity, {**identity, "size": 5}, Path("last.safetensors"))
    for position in (-7, 16, 100):
        with pytest.raises(ValueError, match=f"data position {position}"):
            BatchStream(16, 4, 0, 0, position)


def test_metric_lines_are_whole_or_absent(tmp_path, monkeypatch):
    """A failing append leaves the file as it was; trim_log drops a malformed line with a note."""
    log = JsonlLog(tmp_path / "metrics.jsonl")
    log.write({"step": 1, "loss": 0.5})

    def no_space(fd, data):
        os.ftruncate(fd, os.fstat(fd).st_size)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(progress.os, "write", no_space)
    with pytest.raises(DifflabError, match="last checkpoint is intact"):
        log.write({"step": 2, "loss": 0.4})
    monkeypatch.undo()
    assert log.path.read_text() == '{"step": 1, "loss": 0.5}\n'
    log.path.write_text('{"step": 1}\n{"step": 2}\n[1, 2\n{"step": 3}\n')
    note = trim_log(log.path, 2)
    assert note is not None and "dropped 1 malformed line(s)" in note
    assert log.path.read_text() == '{"step": 1}\n{"step": 2}\n'


def test_a_second_run_on_a_held_folder_names_the_holder_and_changes_nothing(tmp_path, capsys):
    """Issue 18.2: while another process holds train.out_dir (here a small Python process that
    took the lock as a training run does), ``difflab train`` and ``--resume`` exit 2 naming it,
    and the folder stays as it was. Fails if open_run stops taking the lock."""
    run = tmp_path / "run"
    run.mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(run)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        before = sorted((p.name, p.read_bytes()) for p in run.iterdir())
        for extra in ([], ["--resume"]):
            code, _, err = run_cli([*train_argv(run), *extra], capsys)
            assert code == 2, err
            assert f"in use by another difflab run (process {holder.pid})" in err
            assert sorted((p.name, p.read_bytes()) for p in run.iterdir()) == before
    finally:
        holder.kill()
        holder.wait(timeout=10)
        holder.stdout.close()
