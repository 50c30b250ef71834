"""``difflab convert``: the shipped DiT to diffusers and back, the dispatch to the U-Net
converters, and every bad input answered by one sentence with nothing left on disk."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import pytest
import safetensors.torch
import torch

from difflab.cli import main
from difflab.diffusion import NULL_LABEL, Conditioning
from difflab.io.checkpoint import (
    load_checkpoint,
    load_weights_strict,
    save_checkpoint,
    split_prefix,
    with_prefix,
)
from difflab.io.weights import weights_dir
from difflab.models import build_model, config_from_dict
from tests.convert.reference_dit import random_reference_state

diffusers = pytest.importorskip("diffusers")


def run_cli(argv: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    try:
        code = main([str(a) for a in argv])
    except SystemExit as stop:
        code = stop.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def files_below(folder: Path) -> list[str]:
    """Every path below ``folder``, hidden temporaries included."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def test_the_shipped_dit_goes_to_diffusers_and_back(tmp_path, capsys):
    hf = tmp_path / "hf"
    code, _, err = run_cli(["convert", "dit_mnist_s4", hf], capsys)
    assert code == 2 and "--allow-timestep-shift" in err and len(err.strip().splitlines()) == 1
    assert files_below(tmp_path) == []
    code, out, _ = run_cli(["convert", "dit_mnist_s4", hf, "--allow-timestep-shift"], capsys)
    assert code == 0 and "wrote" in out and "(difflab dit)" in out
    raw = json.loads((hf / "transformer" / "config.json").read_text())
    assert raw["_class_name"] == "DiTTransformer2DModel" and raw["num_embeds_ada_norm"] == 10
    assert raw["activation_fn"] == "gelu"  # the shipped model's exact GELU
    back = tmp_path / "back.safetensors"
    code, out, _ = run_cli(["convert", hf, back], capsys)
    assert code == 0 and "(diffusers dit)" in out
    _, meta = load_checkpoint(back, kind="diffusion")
    assert meta["model"]["position_layout"] == "reference"  # rewritten by a channel permutation
    assert meta["model"]["timestep_freq_shift"] == 1.0  # what the folder computes in diffusers
    assert meta["diffusion"]["schedule"] == "linear" and meta["diffusion"]["beta_end"] == 0.02
    # the imported checkpoint computes what diffusers computes, and samples from the CLI
    peer = diffusers.DiTTransformer2DModel.from_pretrained(hf, subfolder="transformer").eval()
    tensors, meta = load_checkpoint(back)
    net = build_model("dit", config_from_dict("dit", meta["model"])).eval()
    load_weights_strict(net, split_prefix(tensors, "model"), back)
    x = torch.randn(2, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    t, y = torch.tensor([10, 900]), torch.tensor([3, 10])
    with torch.no_grad():
        theirs = peer(x, t, y).sample
        ours = net(x, t, Conditioning(labels=torch.tensor([3, NULL_LABEL])))
    assert ((ours - theirs).abs().max() / theirs.abs().max()) < 1e-5
    grid = tmp_path / "grid.png"
    code, _, _ = run_cli(
        ["sample", back, "--steps", "2", "--n", "2", "--label", "3", "--out", grid], capsys
    )
    assert code == 0 and grid.stat().st_size > 0


def test_a_reference_state_dict_imports_through_the_cli(tmp_path, capsys):
    state = {k: v.float() for k, v in random_reference_state().items()}
    torch.save(state, tmp_path / "DiT.pt")
    out = tmp_path / "dit.safetensors"
    code, _, err = run_cli(["convert", tmp_path / "DiT.pt", out, "--num-heads", "2"], capsys)
    assert code == 2 and "--allow-pickle" in err and not out.exists()
    code, _, _ = run_cli(
        ["convert", tmp_path / "DiT.pt", out, "--allow-pickle", "--preset", "dit-tiny"], capsys
    )
    assert code == 0
    _, meta = load_checkpoint(out, kind="diffusion")
    assert meta["model"]["num_heads"] == 2 and meta["model"]["learn_sigma"] is True
    assert meta["converted_from"]["format"] == "facebookresearch/DiT"


class Tripwire:
    """Unpickling this creates the folder ``marker``: the proof that something was unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def test_allow_pickle_never_runs_code(tmp_path, capsys):
    marker = tmp_path / "unpickled"
    (tmp_path / "in").mkdir()
    with open(tmp_path / "in" / "evil.pt", "wb") as handle:
        pickle.dump({"x_embedder.proj.weight": Tripwire(marker)}, handle)
    for flags in ([], ["--allow-pickle"]):
        code, _, err = run_cli(
            ["convert", tmp_path / "in" / "evil.pt", tmp_path / "out.safetensors", *flags], capsys
        )
        assert code == 2 and len(err.strip().splitlines()) == 1
    assert not marker.exists() and not (tmp_path / "out.safetensors").exists()


@pytest.fixture()
def inputs(tmp_path: Path) -> Path:
    """A folder of sources, each bad in one way, and a good DiT checkpoint."""
    root = tmp_path / "in"
    root.mkdir()
    (root / "empty_folder").mkdir()
    (root / "not_a_model").mkdir()
    (root / "not_a_model" / "config.json").write_text(json.dumps({"_class_name": "AutoencoderKL"}))
    (root / "broken_json").mkdir()
    (root / "broken_json" / "config.json").write_text("{not json")
    (root / "no_weights").mkdir()
    (root / "no_weights" / "config.json").write_text(
        json.dumps({"_class_name": "DiTTransformer2DModel"})
    )
    (root / "text.safetensors").write_text("hello")
    safetensors.torch.save_file({"a": torch.zeros(1)}, root / "foreign.safetensors")
    state = {k: v.float() for k, v in random_reference_state().items()}
    state["blocks.0.mlp.fc1.weight"] = state["blocks.0.mlp.fc1.weight"][:, :16].contiguous()
    safetensors.torch.save_file(state, root / "misshapen.safetensors")
    good = {k: v.float() for k, v in random_reference_state().items()}
    safetensors.torch.save_file(good, root / "ref.safetensors")
    assert (
        main(
            [
                "convert",
                str(root / "ref.safetensors"),
                str(root / "dit.safetensors"),
                "--num-heads",
                "2",
            ]
        )
        == 0
    )
    (root / "existing.safetensors").write_bytes(b"keep me")
    (root / "existing_folder").mkdir()
    return root


BAD_INPUTS = [
    (["missing.safetensors", "out.safetensors"], "does not exist"),
    (["empty_folder", "out.safetensors"], "not a diffusers model or pipeline folder"),
    (["not_a_model", "out.safetensors"], "describes a 'AutoencoderKL'"),
    (["broken_json", "out.safetensors"], "could not read"),
    (["no_weights", "out.safetensors"], "has no diffusion_pytorch_model.safetensors"),
    (["text.safetensors", "out.safetensors"], "neither a safetensors file"),
    (["foreign.safetensors", "out.safetensors"], "of neither difflab"),
    (["misshapen.safetensors", "out.safetensors", "--num-heads", "2"], "has shape"),
    (["ref.safetensors", "out.safetensors", "--preset", "dit-xl-2"], "but preset dit-xl-2 has"),
    (["ref.safetensors", "out.safetensors", "--preset", "unet-tiny"], "not a DiT"),
    (["ref.safetensors", "out.safetensors"], "--num-heads"),
    (["ref.safetensors", "existing.safetensors", "--num-heads", "2"], "already exists"),
    (["ref.safetensors", "out.pt", "--num-heads", "2"], "must end in .safetensors"),
    (["ref.safetensors", "hf", "--to", "diffusers"], "convert it to difflab first"),
    (["dit.safetensors", "existing_folder", "--allow-timestep-shift"], "already exists"),
    (["dit.safetensors", "x.safetensors", "--to", "difflab"], "already a difflab checkpoint"),
    (["dit.safetensors", "hf.safetensors", "--allow-timestep-shift"], "must be a folder"),
    (["dit.safetensors", "hf"], "--allow-timestep-shift"),
]


@pytest.mark.parametrize(("args", "message"), BAD_INPUTS, ids=[m for _, m in BAD_INPUTS])
def test_bad_input_is_one_sentence_and_leaves_nothing(inputs, capsys, args, message):
    out = inputs.parent / "out"
    out.mkdir()
    before = files_below(inputs)
    argv = ["convert", inputs / args[0], out / args[1], *args[2:]]
    if args[1].startswith("existing"):
        argv[2] = inputs / args[1]
    code, stdout, err = run_cli(argv, capsys)
    assert code == 2, stdout
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("difflab convert: error:"), err
    assert message in lines[0] and "Traceback" not in err
    assert files_below(inputs) == before and files_below(out) == []
    assert (inputs / "existing.safetensors").read_bytes() == b"keep me"


def test_a_write_that_fails_leaves_no_folder(tmp_path, capsys, monkeypatch):
    """An error while the diffusers folder is being written removes the half-written copy."""
    config_src = weights_dir() / "dit_mnist_s4.safetensors"
    import difflab.convert.formats as formats

    def failing_fsync(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(formats.os, "fsync", failing_fsync)
    code, _, err = run_cli(
        ["convert", config_src, tmp_path / "hf", "--allow-timestep-shift"], capsys
    )
    assert code == 2 and "No space left on device" in err and "nothing was written" in err
    assert files_below(tmp_path) == []


def test_unet_sources_go_to_the_unet_converters(tmp_path, capsys, monkeypatch):
    import difflab.convert.unet as unet

    calls = []
    monkeypatch.setattr(
        unet, "export_unet_to_diffusers", lambda src, dst: calls.append(("export", src, dst))
    )
    monkeypatch.setattr(
        unet, "import_diffusers_unet", lambda src, dst: calls.append(("import", src, dst))
    )
    meta = {
        "kind": "diffusion",
        "arch": "unet",
        "model": {},
        "diffusion": {"schedule": "linear", "num_timesteps": 10},
        "data": {"name": "test", "image_size": 8, "channels": 1},
    }
    save_checkpoint(
        tmp_path / "unet.safetensors", with_prefix({"w": torch.zeros(1)}, "model"), meta
    )
    folder = tmp_path / "pipe"
    (folder / "unet").mkdir(parents=True)
    (folder / "unet" / "config.json").write_text(json.dumps({"_class_name": "UNet2DModel"}))
    assert run_cli(["convert", tmp_path / "unet.safetensors", tmp_path / "hf"], capsys)[0] == 0
    assert run_cli(["convert", folder, tmp_path / "u.safetensors"], capsys)[0] == 0
    assert calls == [
        ("export", tmp_path / "unet.safetensors", tmp_path / "hf"),
        ("import", folder, tmp_path / "u.safetensors"),
    ]
    code, _, err = run_cli(
        ["convert", folder, tmp_path / "v.safetensors", "--num-heads", "2"], capsys
    )
    assert code == 2 and "a U-Net needs neither" in err
