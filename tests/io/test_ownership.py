"""Temporaries difflab alone names and removes, run-folder locks, outputs checked before work."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from difflab.errors import DifflabError
from difflab.io.atomic import (
    TEMP_PREFIX,
    atomic_path,
    check_output_path,
    remove_temporaries,
    write_bytes_atomic,
)
from difflab.io.lock import LOCK_FILE, lock_folder, release_folder
from difflab.io.validation import check_tree, quote

HOLD_LOCK = (
    "import sys, time\n"
    "from difflab.io.lock import lock_folder\n"
    "lock_folder(sys.argv[1])\n"
    "print('locked', flush=True)\n"
    "time.sleep(60)\n"
)


def dead_pid() -> int:
    """The id of a process that has ended."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_only_difflab_temporaries_of_ended_processes_are_removed(tmp_path):
    """Fails if remove_temporaries takes any ``.*.tmp`` (the user's file of issue 18.1) or the
    temporary of a writer that is still running."""
    (tmp_path / "sub").mkdir()
    foreign = tmp_path / "sub" / ".thesis.docx.tmp"
    foreign.write_text("x")
    stale = tmp_path / "sub" / f"{TEMP_PREFIX}{dead_pid()}.model.safetensors.abc.tmp"
    stale.write_text("half")
    live = tmp_path / f"{TEMP_PREFIX}{os.getppid()}.metrics.abc.tmp"
    live.write_text("being written")
    assert remove_temporaries(tmp_path) == [stale]
    assert foreign.exists() and live.exists() and not stale.exists()


def test_a_killed_conversions_staging_folder_is_removed_by_the_next(tmp_path):
    """Fails if remove_temporaries skips folders: a ``convert`` killed mid-write would leave its
    staging folder of partial weights beside the output for ever."""
    from difflab.convert.formats import write_folder_atomic

    staging = tmp_path / f"{TEMP_PREFIX}{dead_pid()}.dit.x1.tmp"
    (staging / "transformer").mkdir(parents=True)
    (staging / "transformer" / "part.safetensors").write_bytes(b"half")
    live = tmp_path / f"{TEMP_PREFIX}{os.getppid()}.other.x2.tmp"
    live.mkdir()
    write_folder_atomic(tmp_path / "dit", {"config.json": b"{}"})
    assert not staging.exists() and live.is_dir()
    assert (tmp_path / "dit" / "config.json").read_bytes() == b"{}"


def test_a_full_disk_is_one_sentence_and_the_old_file_stays(tmp_path, monkeypatch):
    """Fails if an ENOSPC escapes as an OSError or the half-written temporary is left."""
    target = tmp_path / "model.safetensors"
    write_bytes_atomic(target, b"old")

    def full(self, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(Path, "write_bytes", full)
    with (
        pytest.raises(
            DifflabError, match=r"No space left on device.*earlier version of it is intact"
        ),
        atomic_path(target) as tmp,
    ):
        tmp.write_bytes(b"new")
    monkeypatch.undo()
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["model.safetensors"]


def test_outputs_are_checked_before_work(tmp_path):
    """Fails if an output may be an input, a folder, or sit under a file (issue 18.4, 18.11)."""
    source = tmp_path / "state.safetensors"
    source.write_bytes(b"x")
    with pytest.raises(DifflabError, match="never overwrites its input"):
        check_output_path(tmp_path / "." / "state.safetensors", "OUT", [source])
    with pytest.raises(DifflabError, match="is a folder"):
        check_output_path(tmp_path, "--out")
    with pytest.raises(DifflabError, match=r"sits under .*state.safetensors, which is a file"):
        check_output_path(source / "a" / "x.png", "--out")
    assert check_output_path(tmp_path / "new" / "x.png", "--out") == tmp_path / "new" / "x.png"
    assert not (tmp_path / "new").exists()  # checking creates nothing
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.safetensors"]


def test_a_locked_folder_names_its_holder_and_kill_9_frees_it(tmp_path):
    """Fails if the lock is a marker file (kill -9 would leave it stale) or is not exclusive
    between processes (issue 18.2)."""
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(
            DifflabError, match=f"in use by another difflab run \\(process {holder.pid}\\)"
        ):
            lock_folder(tmp_path)
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait(timeout=10)
    finally:
        holder.kill()
        holder.stdout.close()
    assert (tmp_path / LOCK_FILE).exists()  # kill -9 leaves the file, but not the lock
    lock_folder(tmp_path)
    assert (tmp_path / LOCK_FILE).read_text().strip() == str(os.getpid())
    release_folder(tmp_path)
    assert not (tmp_path / LOCK_FILE).exists()


def test_parsed_documents_and_quoted_values_are_bounded():
    """Fails if an alias bomb is walked in full (it would take minutes) or quoted whole."""
    import yaml

    levels = ["a0: &a0 [" + ", ".join(["x"] * 9) + "]"]
    levels += [f"a{k}: &a{k} [" + ", ".join([f"*a{k - 1}"] * 9) + "]" for k in range(1, 9)]
    bomb = yaml.safe_load("{" + ", ".join(levels) + "}")  # 9^9 values when expanded
    start = time.perf_counter()
    with pytest.raises(DifflabError, match="more than 100,000 values"):
        check_tree(bomb, "the config")
    text = quote(bomb)
    assert time.perf_counter() - start < 2 and len(text) <= 80 and text.endswith("…")


def test_images_with_nan_are_refused_and_a_killed_writers_leftovers_removed(tmp_path):
    """Issue 18.9 and 18.5: NaN samples used to become an all-black grid with exit 0; a
    ``sample --out-dir`` killed mid-write left its temporaries for good."""
    import torch

    from difflab.io.images import save_grid, save_images

    images = torch.zeros(2, 1, 4, 4)
    images[1, 0, 0, 0] = float("nan")
    with pytest.raises(DifflabError, match=r"1 of 32 values .* are NaN or infinite"):
        save_grid(images, tmp_path / "grid.png")
    assert list(tmp_path.iterdir()) == []
    leftover = tmp_path / f"{TEMP_PREFIX}{dead_pid()}.sample_00000.png.x.tmp"
    leftover.write_bytes(b"half a png")
    saved = save_images(torch.zeros(2, 1, 4, 4), tmp_path)
    assert sorted(tmp_path.iterdir()) == saved
