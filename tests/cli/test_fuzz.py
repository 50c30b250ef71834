"""Fuzzing the CLI as a hostile user would (hypothesis, bounded in examples and time).

Over the numeric options of sample, interpolate and invert, config values and checkpoint metadata, every run must end in bounded time with
either exit status 0 and a valid result, or exit status != 0 and exactly one line on stderr that
holds no traceback; and nothing outside the named output may change (the folder is hashed before
and after). Runs go through ``difflab.cli.main`` in-process (a subprocess costs ~2 s here).

A failure must be a sentence of the validation layer (exit 2), not the safety net's "unexpected
..." (exit 1), so each hostile-values corpus below fails when its check is removed (tried: the CLI's
check of numeric options, the checkpoint metadata schema, the 64-bit bound of config integers);
the hypothesis tests add random values.
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
    if code != 0:  # a sentence of the validation layer, not the safety net's "unexpected ..."
        assert code == 2 and len(lines) == 1 and "error: unexpected " not in err, (argv, err)
    else:
        assert len(lines) <= 1, (argv, err)  # a caption or resume note at most
    assert folder_hash(folder, output) == before, argv
    return code


GENERATION_OPTIONS = (  # (command, option) pairs with a numeric value
    *(
        ("sample", option)
        for option in (
            "--eta",
            "--steps",
            "--seed",
            "--n",
            "--label",
            "--labels",
            "--guidance-scale",
            "--dynamic-threshold",
            "--temperature",
        )
    ),
    *(("interpolate", option) for option in ("--points", "--seed-b")),
    *(("invert", option) for option in ("--n", "--steps", "--seed")),
)
SMALL_COUNTS = ("--steps", "--n", "--points")  # valid ones are cut to 3: keep runs short


@given(choice=st.sampled_from(GENERATION_OPTIONS), value=numbers)
@settings(FUZZ, max_examples=6)
def test_fuzzed_generation_options(choice, value, tiny_checkpoint, tmp_path_factory, capsys):
    command, option = choice
    folder = tmp_path_factory.mktemp("fuzz_generate")
    out = folder / "grid.png"
    argv = [command, str(tiny_checkpoint), "--steps", "1", "--out", str(out)]
    argv += {"sample": ["--n", "1"], "interpolate": ["--points", "2"], "invert": ["--n", "1"]}[
        command
    ]
    if command == "invert":
        argv += ["--data", "digits"]
    if option in SMALL_COUNTS and isinstance(value, int) and value > 3:
        value = 3
    code = check_run([*argv, option, str(value)], capsys, folder, out)
    if code == 0:
        assert out.is_file()


HOSTILE = ("nan", "-inf", str(2**64), str(-(2**63) - 1), "-1")


def test_hostile_values_of_every_numeric_option(tiny_checkpoint, tmp_path, capsys):
    """Each numeric option of sample, interpolate and invert given each of NaN, -inf, beyond 64
    bits (both signs) and -1: a sentence of the validation layer or a valid result.

    Fails if the CLI's check of numeric options is removed (``--seed 2**64`` becomes an
    "unexpected ValueError" from torch) or a NaN eta writes a black grid."""
    for command, option in GENERATION_OPTIONS:
        for value in HOSTILE:
            out = tmp_path / "grid.png"
            argv = [command, str(tiny_checkpoint), "--steps", "1", "--out", str(out)]
            argv += {"sample": ["--n", "1"], "interpolate": ["--points", "2"]}.get(
                command, ["--n", "1", "--data", "digits"]
            )
            if check_run([*argv, option, value], capsys, tmp_path, out) == 0:
                assert out.is_file()
                out.unlink()


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


def resume_argv(tiny_checkpoint: Path, folder: Path, override: str) -> list[str]:
    """``train --resume`` of a copy of the tiny run (which finished its 3 steps) with one
    override: config, data, model and state are all checked, and nothing is trained."""
    run = folder / "run"
    (run / "checkpoints").mkdir(parents=True, exist_ok=True)
    (run / "checkpoints" / "last.safetensors").write_bytes(
        (tiny_checkpoint.parent / "checkpoints" / "last.safetensors").read_bytes()
    )
    return [
        "train",
        "--quiet",
        str(CONFIGS / "digits_tiny.yaml"),
        f"train.out_dir={run}",
        "train.steps=3",
        "train.sample_steps=1",
        override,
        "--resume",
    ]


def yaml_text(value) -> str:
    return json.dumps(value) if not isinstance(value, float) or math.isfinite(value) else str(value)


@given(key=st.sampled_from(TRAIN_KEYS), value=json_values)
@settings(FUZZ, max_examples=8)
def test_fuzzed_config_values(key, value, tiny_checkpoint, tmp_path_factory, capsys):
    """A config value of any JSON shape: a sentence, or a resume that ends."""
    if isinstance(value, int) and not isinstance(value, bool) and 64 < value < 2**63:
        value = -value  # a valid huge size would train a huge model: make it a bad one
    folder = tmp_path_factory.mktemp("fuzz_config")
    argv = resume_argv(tiny_checkpoint, folder, f"{key}={yaml_text(value)}")
    check_run(argv, capsys, folder, folder / "run" / "metrics.jsonl")


def test_hostile_values_of_every_config_key(tiny_checkpoint, tmp_path, capsys):
    """Each of TRAIN_KEYS set to null, a string, -1, 2**70 and .nan.

    Fails if config integers lose their 64-bit bound (tried: ``train.seed=2**70`` reaches
    torch.manual_seed, an "unexpected ValueError"); the other checks overlap (a negative width is
    also caught by the meta-device build), so one removed check need not fail here."""
    for key in TRAIN_KEYS:
        for value in (*HOSTILE_JSON, ".nan"):
            text = value if value == ".nan" else yaml_text(value)
            argv = resume_argv(tiny_checkpoint, tmp_path, f"{key}={text}")
            check_run(argv, capsys, tmp_path, tmp_path / "run" / "metrics.jsonl")


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


def crafted_checkpoint(source: Path, folder: Path, where: tuple[str, ...], value) -> Path:
    """A copy of ``source`` whose JSON entry ``where`` is ``value``."""
    tensors, meta = load_checkpoint(source)
    node = meta
    for key in where[:-1]:
        node = node[key]
    node[where[-1]] = value
    path = folder / "crafted.safetensors"
    write_safetensors(path, tensors, json.dumps(meta))
    return path


def check_crafted(path: Path, command: str, folder: Path, capsys) -> None:
    out = folder / "grid.png"
    argv = ["info", str(path)]
    if command == "sample":
        argv = ["sample", str(path), "--steps", "1", "--n", "1", "--out", str(out)]
    if check_run(argv, capsys, folder, out) == 0 and command == "sample":
        assert out.is_file()
        out.unlink()


@given(
    where=st.sampled_from(META_PATHS),
    value=json_values,
    command=st.sampled_from(["info", "sample"]),
)
@settings(FUZZ, max_examples=6)
def test_fuzzed_checkpoint_metadata(
    where, value, command, tiny_checkpoint, tmp_path_factory, capsys
):
    folder = tmp_path_factory.mktemp("fuzz_meta")
    check_crafted(
        crafted_checkpoint(tiny_checkpoint, folder, where, value), command, folder, capsys
    )


HOSTILE_JSON = (None, "x", -1, 2**70)


def test_hostile_values_of_every_metadata_entry(tiny_checkpoint, tmp_path, capsys):
    """Each entry of META_PATHS set to null, a string, -1 and 2**70, then sampled.

    Fails if the checkpoint metadata schema (io.checkpoint.check_meta) is removed: ``data`` as a
    string or a list becomes an "unexpected AttributeError"."""
    for where in META_PATHS:
        for value in HOSTILE_JSON:
            path = crafted_checkpoint(tiny_checkpoint, tmp_path, where, value)
            check_crafted(path, "sample", tmp_path, capsys)
            path.unlink()


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
