"""Fuzzing the CLI as a hostile user would (hypothesis, bounded in examples and time).

Over CLI options, config values and checkpoint metadata, every run must end in bounded time with
either exit status 0 and a valid result, or exit status != 0 and exactly one line on stderr that
holds no traceback; and nothing outside the named output may change (the folder is hashed before
and after). Runs go through ``difflab.cli.main`` in-process (a subprocess costs ~2 s here).

Mutations these tests catch (tried): removing the finiteness check of numeric options (``--eta
nan`` exits 0), removing the 64-bit bound (``--seed 2**64`` is a traceback), removing the
top-level handler (any unexpected exception is a traceback), removing the metadata schema
(``data`` as a string is an AttributeError).
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from difflab.cli import build_parser
from difflab.io.checkpoint import load_checkpoint
from tests.cli.conftest import CONFIGS, run_cli
from tests.cli.test_bad_inputs import write_safetensors

SECONDS_PER_RUN = 20.0  # a run that takes longer is a hang for these tiny inputs
FUZZ = settings(
    max_examples=12,
    deadline=None,
    derandomize=True,  # the same examples every run: a failure reproduces
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

numbers = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([0, -1, 2**63, 2**64, -(2**63) - 1]),
    st.floats(allow_nan=True, allow_infinity=True),
)
json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), numbers, st.text(max_size=20)),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3)
    ),
    max_leaves=8,
)


def folder_hash(folder: Path, skip: Path | None = None) -> str:
    """SHA-256 over every path below ``folder`` and its bytes, leaving out ``skip``."""
    digest = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        if skip is not None and (path == skip or skip in path.parents):
            continue
        digest.update(str(path.relative_to(folder)).encode())
        if path.is_file():
            digest.update(path.read_bytes())
    return digest.hexdigest()


def check_run(argv: list[str], capsys, folder: Path, output: Path | None) -> int:
    """Run ``difflab argv``; assert the contract; return the exit status."""
    before = folder_hash(folder, output)
    start = time.perf_counter()
    code, _, err = run_cli(argv, capsys)
    elapsed = time.perf_counter() - start
    lines = [line for line in err.splitlines() if line.strip()]
    assert elapsed < SECONDS_PER_RUN, (argv, elapsed)
    assert "Traceback" not in err, (argv, err)
    if code != 0:
        assert len(lines) == 1, (argv, err)
    else:
        assert len(lines) <= 1, (argv, err)  # a caption or resume note at most
    assert folder_hash(folder, output) == before, argv
    return code


@given(
    option=st.sampled_from(["--eta", "--steps", "--seed", "--n", "--labels", "--guidance-scale"]),
    value=numbers,
)
@settings(FUZZ, max_examples=25)
def test_fuzzed_sample_options(option, value, tiny_checkpoint, tmp_path_factory, capsys):
    folder = tmp_path_factory.mktemp("fuzz_sample")
    out = folder / "grid.png"
    argv = ["sample", str(tiny_checkpoint), "--steps", "1", "--n", "1", "--out", str(out)]
    if option in ("--steps", "--n") and isinstance(value, int) and value > 4:
        value = 4  # a valid count: keep the run short
    code = check_run([*argv, option, str(value)], capsys, folder, out)
    if code == 0:
        assert out.is_file()


TRAIN_KEYS = (
    "train.lr",
    "train.weight_decay",
    "train.grad_clip",
    "train.ema_decay",
    "train.label_dropout",
    "train.warmup_steps",
    "train.seed",
    "train.skip_nonfinite",
    "train.batch_size",
    "train.grad_accum",
    "diffusion.num_timesteps",
    "diffusion.beta_start",
    "model.base_channels",
    "model.num_heads",
    "model.channel_mult",
    "data.limit",
    "data.image_size",
)


@given(key=st.sampled_from(TRAIN_KEYS), value=json_values)
@settings(FUZZ, max_examples=25)
def test_fuzzed_config_values(key, value, tiny_checkpoint, tmp_path_factory, capsys):
    """A config value of any JSON shape: a sentence, or a run that ends. ``--resume`` on the tiny
    run that finished its 3 steps checks config, data, model and state without training."""
    if isinstance(value, int) and not isinstance(value, bool) and 64 < value < 2**63:
        value = -value  # a valid huge size would train a huge model: make it a bad one
    folder = tmp_path_factory.mktemp("fuzz_config")
    run = folder / "run"
    (run / "checkpoints").mkdir(parents=True)
    source = tiny_checkpoint.parent
    (run / "checkpoints" / "last.safetensors").write_bytes(
        (source / "checkpoints" / "last.safetensors").read_bytes()
    )
    text = json.dumps(value) if not isinstance(value, float) or math.isfinite(value) else str(value)
    argv = [
        "train",
        "--quiet",
        str(CONFIGS / "digits_tiny.yaml"),
        f"train.out_dir={run}",
        "train.steps=3",
        "train.sample_steps=1",
        f"{key}={text}",
        "--resume",
    ]
    check_run(argv, capsys, folder, run / "metrics.jsonl")


META_PATHS = (
    ("kind",),
    ("arch",),
    ("step",),
    ("data",),
    ("data", "channels"),
    ("data", "image_size"),
    ("model",),
    ("model", "base_channels"),
    ("model", "channel_mult"),
    ("model", "num_classes"),
    ("model", "prediction"),
    ("diffusion", "num_timesteps"),
    ("diffusion", "schedule"),
    ("diffusion", "beta_end"),
)


@given(
    where=st.sampled_from(META_PATHS),
    value=json_values,
    command=st.sampled_from(["info", "sample"]),
)
@settings(FUZZ, max_examples=15)
def test_fuzzed_checkpoint_metadata(
    where, value, command, tiny_checkpoint, tmp_path_factory, capsys
):
    if isinstance(value, int) and not isinstance(value, bool) and 64 < value < 2**63:
        value = (
            -value
        )  # a huge valid width would allocate a huge network before its weights are read
    folder = tmp_path_factory.mktemp("fuzz_meta")
    tensors, meta = load_checkpoint(tiny_checkpoint)
    node = meta
    for key in where[:-1]:
        node = node[key]
    node[where[-1]] = value
    path = folder / "crafted.safetensors"
    write_safetensors(path, tensors, json.dumps(meta))
    out = folder / "grid.png"
    argv = ["info", str(path)]
    if command == "sample":
        argv = ["sample", str(path), "--steps", "1", "--n", "1", "--out", str(out)]
    code = check_run(argv, capsys, folder, out)
    if code == 0 and command == "sample":
        assert out.is_file()


@pytest.mark.parametrize("flag", ["--debug", None])
def test_an_unexpected_error_is_one_sentence_and_debug_shows_the_traceback(
    flag, monkeypatch, capsys
):
    """Fails if the top-level handler is removed or --debug stops showing the traceback."""

    def broken(args):
        raise ZeroDivisionError("a bug")

    parser = build_parser()
    parser._subparsers._group_actions[0].choices["info"].set_defaults(handler=broken)
    monkeypatch.setattr("difflab.cli.build_parser", lambda: parser)
    argv = ["info", "--presets"] + ([flag] if flag else [])
    code, _, err = run_cli(argv, capsys)
    assert code == 1
    assert err.strip().splitlines()[-1].endswith("run with --debug for the traceback.")
    assert "unexpected ZeroDivisionError (a bug)" in err
    assert ("Traceback" in err) == (flag == "--debug")


class ClosedPipe:
    """A stdout whose reader went away (``difflab info ... | head -1``)."""

    def write(self, text: str) -> int:
        raise BrokenPipeError(32, "Broken pipe")

    def flush(self) -> None:
        raise BrokenPipeError(32, "Broken pipe")


def test_a_closed_pipe_ends_quietly(tiny_checkpoint, monkeypatch, capsys):
    """Issue 18.17: a closed pipe is status 141 and nothing on stderr, not a BrokenPipeError
    traceback. Fails if the handler's BrokenPipeError branch is removed."""
    from difflab.cli import main

    monkeypatch.setattr(sys, "stdout", ClosedPipe())
    code = main(["info", str(tiny_checkpoint)])
    monkeypatch.undo()
    assert code == 141
    assert capsys.readouterr().err == ""
