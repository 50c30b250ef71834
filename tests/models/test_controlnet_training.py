"""Training, loading and sampling a ControlNet end to end on a tiny digits base (CLI and API)."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image

from difflab.cli import main
from difflab.config import load_config
from difflab.data import load_dataset
from difflab.data.hints import canny_hint, read_hint_image
from difflab.diffusion import Conditioning
from difflab.errors import DifflabError
from difflab.io.checkpoint import load_checkpoint
from difflab.io.weights import resolve_checkpoint
from difflab.metrics.features import file_digest
from difflab.models.controlnet import ControlledNetwork, ControlSettings
from difflab.pipelines import load_control_pipeline, load_pipeline
from difflab.training.control_loop import build_control_run, control_loss
from difflab.training.update import optimizer_update
from tests.cli.conftest import run_cli, train_tiny


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """A 3-step class-conditional digits U-Net (8x8, label dropout) to control."""
    out = tmp_path_factory.mktemp("base")
    assert train_tiny(out, "model.num_classes=10", "train.label_dropout=0.1") == 0
    return out / "model.safetensors"


def control_config(tmp_path: Path, base: Path, *extra: str) -> Path:
    path = tmp_path / "control.yaml"
    path.write_text(
        "kind: controlnet\n"
        "data: {name: digits, limit: 64}\n"
        f"model: {{base: {base}, base_sha256: {file_digest(base)}, hint: canny, hint_widths: [8]}}\n"
        "diffusion: {schedule: linear, num_timesteps: 100}\n"
        "train: {steps: 2, batch_size: 8, lr: 0.01, label_dropout: 0.5, sample_every: 2,\n"
        f"        sample_steps: 2, checkpoint_every: 1, log_every: 1, out_dir: {tmp_path / 'run'}}}\n"
        + "".join(f"{line}\n" for line in extra)
    )
    return path


@pytest.fixture(scope="module")
def controlnet(tmp_path_factory, base) -> Path:
    folder = tmp_path_factory.mktemp("control")
    assert main(["train", "--quiet", str(control_config(folder, base))]) == 0
    return folder / "run" / "model.safetensors"


def test_only_the_control_branch_trains_and_the_base_stays_bit_identical(tmp_path, base):
    """Fails if the base's weights reach the optimizer, the EMA or the checkpoint."""
    run = build_control_run(load_config(control_config(tmp_path, base)))
    before = {k: v.clone() for k, v in run.base.net.state_dict().items()}
    optimized = {id(p) for group in run.optimizer.param_groups for p in group["params"]}
    assert optimized == {id(p) for p in run.net.parameters()}
    assert not any(id(p) in optimized for p in run.base.net.parameters())
    for _ in range(2):
        optimizer_update(run, lambda index: control_loss(run, index))
    assert all(torch.equal(before[k], v) for k, v in run.base.net.state_dict().items())
    assert set(run.ema.state_dict()) == set(run.net.state_dict())


def test_the_checkpoint_holds_the_branch_and_the_base_hash_and_logs_edge_f1(controlnet, base):
    tensors, meta = load_checkpoint(controlnet, kind="controlnet")
    assert meta["base"]["sha256"] == file_digest(base) and meta["hint"] == "canny"
    assert meta["train_seconds"] > 0
    prefixes = {key.split(".")[1] for key in tensors}
    assert prefixes == {"copy", "hint_encoder", "zero_convs", "middle_zero_conv"}
    lines = [json.loads(line) for line in (controlnet.parent / "metrics.jsonl").open()]
    assert any("edge_f1" in line for line in lines)


def test_resume_continues_and_a_changed_base_is_refused(tmp_path, base, capsys):
    """Resume reaches the configured step; a base file whose bytes changed is refused by the
    config's pin, on resume and when the ControlNet is loaded."""
    mine = tmp_path / "base.safetensors"
    shutil.copy(base, mine)
    config = control_config(tmp_path, mine)
    assert main(["train", "--quiet", str(config), "train.steps=1"]) == 0
    assert main(["train", "--quiet", str(config), "--resume"]) == 0
    trained = tmp_path / "run" / "model.safetensors"
    assert load_checkpoint(trained)[1]["step"] == 2
    with mine.open("ab") as handle:  # the same weights, another file: another hash
        handle.write(b" ")
    code, _, err = run_cli(["train", str(config), "train.steps=3", "--resume"], capsys)
    assert code == 2 and "not the model.base_sha256" in err
    with pytest.raises(DifflabError, match="is not the base model"):
        load_pipeline(trained)


def test_loading_sampling_and_the_sampling_controls(controlnet, base):
    """The pipeline of a ControlNet checkpoint generates with a hint under every control; scale 0
    is the base exactly; two ControlNets run together. Fails if a control setting is ignored."""
    pipe = load_pipeline(controlnet)
    assert isinstance(pipe.net, ControlledNetwork)
    hint = canny_hint(torch.rand(2, 1, 8, 8) * 2 - 1)
    cond = Conditioning(labels=torch.tensor([1, 2]), control=hint)
    plain = pipe.generate(2, cond, steps=2)
    assert plain.shape == (2, 1, 8, 8)
    zero = pipe.generate(2, cond, steps=2, control_scale=0.0)
    base_pipe = load_pipeline(base)
    assert torch.equal(zero, base_pipe.generate(2, Conditioning(labels=cond.labels), steps=2))
    late = ControlSettings(start=0.5, end=1.0, guess_mode=True)
    assert pipe.generate(2, cond, steps=2, control=late).shape == (2, 1, 8, 8)
    with pytest.raises(DifflabError, match="blank"):
        pipe.generate(2, Conditioning(labels=cond.labels, control=torch.zeros(2, 1, 8, 8)))
    two = load_control_pipeline([controlnet, controlnet])
    assert two.generate(2, cond, steps=2, control_scale=[1.0, 0.0]).shape == (2, 1, 8, 8)


def test_sample_cli_with_a_hint_image_and_its_bad_inputs(controlnet, tmp_path, capsys):
    hint_png = tmp_path / "edges.png"
    pixels = torch.zeros(8, 8, dtype=torch.uint8)
    pixels[2:6, 2:6] = 255
    Image.fromarray(pixels.numpy()).save(hint_png)
    out = tmp_path / "s.png"
    args = ["sample", str(controlnet), "--n", "2", "--steps", "2", "--out", str(out)]
    code, _, err = run_cli([*args, "--hint", str(hint_png), "--label", "3",
                                  "--guidance-scale", "3", "--control-scale", "0.5"], capsys)  # fmt: skip
    assert code == 0 and out.is_file(), err
    assert read_hint_image(hint_png).shape == (1, 8, 8)
    blank = tmp_path / "blank.png"
    Image.fromarray(torch.zeros(8, 8, dtype=torch.uint8).numpy()).save(blank)
    wrong = tmp_path / "wrong.png"
    Image.fromarray(torch.zeros(9, 9, dtype=torch.uint8).numpy()).save(wrong)
    for extra, words in [
        ([], "pass a hint"),
        (["--hint", str(blank)], "blank"),
        (["--hint", str(wrong)], "resize it to 8x8"),
        (["--hint", str(hint_png), "--control-scale", "x"], "--control-scale"),
    ]:
        code, _, err = run_cli([*args, *extra], capsys)
        last = err.strip().splitlines()[-1]  # one sentence, after any notice
        assert code == 2 and words in last and err.count("error:") == 1, err


@pytest.mark.parametrize(
    ("name", "base"), [("controlnet_mnist_canny", "unet"), ("controlnet_mnist_dit_scribble", "dit")]
)
def test_shipped_controlnets_load_with_their_base_and_follow_a_hint(name, base):
    """The shipped fp16 ControlNets record their config, training time and base hash, load with
    the shipped base, and generate from a hint."""
    tensors, meta = load_checkpoint(resolve_checkpoint(name), kind="controlnet")
    assert all(v.dtype == torch.float16 for v in tensors.values() if v.is_floating_point())
    assert meta["weights_dtype"] == "float16" and meta["train_seconds"] > 0
    assert (
        meta["model"]["base_arch"] == base and meta["experiment"]["train"]["steps"] == meta["step"]
    )
    pipe = load_pipeline(name)
    hint = canny_hint(load_dataset("mnist", split="test", limit=2).images)
    cond = Conditioning(labels=torch.tensor([1, 2]), control=hint)
    assert pipe.generate(2, cond, steps=2).shape == (2, 1, 28, 28)
