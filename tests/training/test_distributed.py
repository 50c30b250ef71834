"""Data-parallel training through torchrun: 2 CPU processes (gloo) against 1 process.

N processes with global batch B must take the steps one process with batch B takes (same data,
same noise, averaged gradients), up to the order of float additions in the gradient all-reduce.
"""

import json
import tempfile
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from difflab.config import load_config
from difflab.errors import DifflabError
from difflab.io.checkpoint import load_checkpoint
from difflab.io.process_group import SINGLE, Distributed, check_same_config, current
from difflab.training import train
from difflab.training.loop import build_run, diffusion_loss, restore_training_state
from difflab.training.state import STATE_FILE, open_run
from difflab.training.update import optimizer_update
from tests.cli.conftest import CONFIGS
from tests.helpers import torchrun

# class-conditional with label dropout and 2 accumulation micro-steps: every slicing path and no_sync
OVERRIDES = [
    "train.batch_size=16",
    "train.grad_accum=2",
    "train.log_every=1",
    "train.sample_steps=2",
    "train.checkpoint_every=2",
    "model.num_classes=10",
    "train.label_dropout=0.2",
]


TINY = CONFIGS / "digits_tiny.yaml"


def overrides(out_dir: Path, steps: int, *extra: str) -> list[str]:
    return [f"train.out_dir={out_dir}", f"train.steps={steps}", *OVERRIDES, *extra]


def train_args(out_dir: Path, steps: int, *extra: str) -> list[str]:
    return ["train", "--quiet", str(TINY), *overrides(out_dir, steps, *extra)]


def relative_difference(a: dict, b: dict, prefix: str) -> float:
    keys = sorted(k for k in a if k.startswith(prefix))
    assert keys and keys == sorted(k for k in b if k.startswith(prefix))
    va = torch.cat([a[k].double().flatten() for k in keys])
    vb = torch.cat([b[k].double().flatten() for k in keys])
    return float((va - vb).norm() / va.norm())


def losses(out_dir: Path) -> list[float]:
    lines = (out_dir / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line)["loss"] for line in lines]


@pytest.mark.slow
def test_two_processes_match_one_process_and_resume_from_the_same_step(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    train(load_config(TINY, overrides(one, 4)), progress=False)
    # 2 processes: steps 1-2, then all ranks resume from the checkpoint and run steps 3-4
    first = torchrun(2, *train_args(two, 2))
    assert first.returncode == 0, first.stderr
    assert first.stdout.count("trained model") == 1  # rank 0 alone reports (and writes)
    second = torchrun(2, *train_args(two, 4), "--resume")
    assert second.returncode == 0, second.stderr
    a, meta_a = load_checkpoint(one / STATE_FILE)
    b, meta_b = load_checkpoint(two / STATE_FILE)
    assert meta_a["step"] == meta_b["step"] == 4
    assert meta_a["state"]["position"] == meta_b["state"]["position"]  # the same data order
    assert relative_difference(a, b, "model.") < 1e-5
    assert relative_difference(a, b, "ema.") < 1e-5
    assert torch.equal(a["rng.train"], b["rng.train"])  # the same noise was drawn
    assert losses(one) == pytest.approx(losses(two), rel=1e-5)
    assert sorted(p.name for p in (two / "checkpoints").iterdir()) == ["last.safetensors"]


def test_a_batch_that_does_not_split_over_the_processes_is_refused(tmp_path):
    result = torchrun(2, *train_args(tmp_path / "run", 2, "train.batch_size=15"))
    assert result.returncode != 0
    # each process says one sentence (unless torchrun, seeing the first one fail, stops the other
    # before it speaks); torchrun then adds its own report of the failed processes
    sentences = [line for line in result.stderr.splitlines() if "difflab train: error:" in line]
    assert 1 <= len(sentences) <= 2
    assert all(line.endswith("make train.batch_size a multiple of 2.") for line in sentences)
    assert "difflab/" not in result.stderr.replace(str(tmp_path), "")  # no frame of difflab's
    assert not (tmp_path / "run" / "checkpoints").exists()


def reduced_gradients(out_dir: Path) -> dict[str, torch.Tensor]:
    """The gradients left on the network after one update of a fresh run (no clipping, so they
    are what DDP's all-reduce handed the optimizer), in this process's group."""
    config = load_config(TINY, overrides(out_dir, 1, "train.grad_clip=0"))
    run, _ = open_run(config, False, build_run, restore_training_state, group=current())
    optimizer_update(run, lambda index: diffusion_loss(run, index))
    return {name: p.grad.detach().clone() for name, p in run.net.named_parameters()}


def _gradients_of_rank(rank: int, store_dir: str, out_dir: str, results: dict) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"file://{store_dir}/store", rank=rank, world_size=2
    )
    try:
        grads = reduced_gradients(Path(out_dir))
        results[rank] = {name: grad.numpy() for name, grad in grads.items()}
    finally:
        dist.destroy_process_group()


def test_two_processes_hand_the_optimizer_the_gradient_of_one_process(tmp_path):
    """AdamW hides a constant gradient factor (a summing all-reduce changed the weights by 2.6e-6),
    so the reduced gradients themselves are compared with one process's gradient of the whole
    batch (class-conditional, label dropout, 2 accumulation micro-steps). Fails if the gradients
    are summed over the ranks instead of averaged (tried: relative difference 1.0)."""
    single = reduced_gradients(tmp_path / "one")
    with tempfile.TemporaryDirectory() as store_dir, mp.Manager() as manager:
        results = manager.dict()
        # forked, not spawned: the children start with torch and difflab already imported
        mp.start_processes(
            _gradients_of_rank,
            args=(store_dir, str(tmp_path / "two"), results),
            nprocs=2,
            start_method="fork",
        )
        ranks = dict(results)
    assert set(ranks) == {0, 1}
    for rank in ranks.values():
        grads = {name: torch.from_numpy(value) for name, value in rank.items()}
        assert relative_difference(single, grads, "") < 1e-5


def _check_configs(rank: int, store_dir: str, results: dict) -> None:
    dist.init_process_group(
        "gloo", init_method=f"file://{store_dir}/store", rank=rank, world_size=2
    )
    try:
        check_same_config(current(), {"train": {"lr": 0.001 if rank == 0 else 0.002}})
    except DifflabError as error:
        results[rank] = str(error)
    finally:
        dist.destroy_process_group()


def test_ranks_with_different_configs_all_stop_with_one_sentence_naming_the_rank():
    with tempfile.TemporaryDirectory() as store_dir, mp.Manager() as manager:
        results = manager.dict()
        mp.start_processes(_check_configs, args=(store_dir, results), nprocs=2, start_method="fork")
        messages = dict(results)
    assert set(messages) == {0, 1}  # every rank stops, none waits for the others
    assert messages[0] == messages[1]
    assert messages[0].startswith("rank 1 was given a different config than rank 0")


def test_a_single_process_has_no_group_and_shards_nothing():
    assert current() == SINGLE and not SINGLE.active
    assert SINGLE.shard(7) == slice(0, 7) and SINGLE.all_mean(2.5) == 2.5
    assert Distributed(rank=1, world_size=4).shard(8) == slice(2, 4)
    with pytest.raises(DifflabError, match="multiple of 4"):
        Distributed(rank=1, world_size=4).shard(6)


VQVAE_OVERRIDES = [
    "data.name=digits",
    "data.image_size=28",
    "model.preset=vqvae-tiny",
    "model.codebook_update=ema",
    "model.kmeans_init=false",  # random draws made on rank 0 alone differ from one process's
    "model.restart_after=0",
    "train.batch_size=16",
    "train.warmup_steps=0",
    "train.log_every=1",
    "train.steps=3",
]


@pytest.mark.slow
def test_vqvae_two_processes_match_one_process(tmp_path):
    from difflab.training.vqvae_loop import train_vqvae

    one, two = tmp_path / "one", tmp_path / "two"
    config = CONFIGS / "vqvae_mnist.yaml"
    train_vqvae(load_config(config, [*VQVAE_OVERRIDES, f"train.out_dir={one}"]), progress=False)
    result = torchrun(2, "train", "--quiet", str(config), *VQVAE_OVERRIDES, f"train.out_dir={two}")
    assert result.returncode == 0, result.stderr
    a, _ = load_checkpoint(one / STATE_FILE)
    b, _ = load_checkpoint(two / STATE_FILE)
    # the EMA codebook moved by the all-reduced counts and sums of both halves of every batch
    assert relative_difference(a, b, "model.quantizer.ema_") < 1e-5
    assert relative_difference(a, b, "model.") < 1e-5
    assert losses(one) == pytest.approx(losses(two), rel=1e-5)
