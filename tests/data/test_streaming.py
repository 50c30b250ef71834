"""Streaming image datasets: the uint8 store (written once, atomically, reused, rebuilt when stale),
item-for-item equality with the in-memory path, and the training order (BatchStream) read as
rank shards by DataLoader workers, resumed exactly.
"""

from __future__ import annotations

import os
import pickle
import socket
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from PIL import Image

from difflab.data import (
    ImageDataset,
    ShardedBatchLoader,
    StreamingImageDataset,
    load_configured_split,
    load_dataset,
    load_streaming_dataset,
)
from difflab.data import streaming as streaming_module
from difflab.data.streaming import (
    StaleStoreError,
    folder_image_store,
    open_image_store,
    sidecar_path,
    write_image_store,
)
from difflab.errors import DifflabError
from difflab.io.process_group import Distributed, current
from difflab.training.data_order import BatchStream

NUM_IMAGES = 27  # 2 classes; 25 train + 2 test; batches of 8 cross epoch boundaries
SIZE = 8


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """A labelled folder of random RGB(A) images of mixed sizes."""
    rng = np.random.default_rng(0)
    root = tmp_path / "images"
    for i in range(NUM_IMAGES):
        label = "cat" if i % 3 else "dog"
        (root / label).mkdir(parents=True, exist_ok=True)
        height, width = rng.integers(9, 20, size=2)
        mode = "RGBA" if i % 5 == 0 else "RGB"
        pixels = rng.integers(0, 256, size=(height, width, len(mode)), dtype=np.uint8)
        Image.fromarray(pixels, mode).save(root / label / f"{i:03d}.png")
    return root


@pytest.fixture
def stores(tmp_path: Path) -> Path:
    return tmp_path / "stores"


def test_store_items_equal_the_in_memory_ones(folder: Path, stores: Path):
    for split in ("train", "test"):
        memory = load_dataset(str(folder), split=split, image_size=SIZE)
        streamed = load_streaming_dataset(
            str(folder), split=split, image_size=SIZE, store_dir=stores
        )
        assert len(streamed) == len(memory) and streamed.name == memory.name
        assert streamed.class_names == memory.class_names == ("cat", "dog")
        assert (streamed.channels, streamed.image_size) == (3, SIZE)
        assert torch.equal(streamed.labels, memory.labels)
        assert torch.equal(streamed.images[torch.arange(len(memory))], memory.images)
        assert streamed.images.shape == memory.images.shape
        image, label = streamed[1]
        assert torch.equal(image, memory.images[1]) and label == memory.labels[1]
    limited = load_streaming_dataset(str(folder), image_size=SIZE, limit=5, store_dir=stores)
    assert torch.equal(
        limited.images[:], load_dataset(str(folder), image_size=SIZE, limit=5).images
    )
    assert len(list(stores.glob("*.npy"))) == 1  # one store serves both splits and any limit


def test_batch_stream_batches_match_and_ranks_partition(folder: Path, stores: Path):
    memory = load_dataset(str(folder), image_size=SIZE)
    streamed = load_streaming_dataset(str(folder), image_size=SIZE, store_dir=stores)
    batch, world = 8, 2
    loaders = [
        ShardedBatchLoader(
            streamed,
            BatchStream(len(streamed), batch, seed=3),
            group=Distributed(rank, world),
            num_workers=rank + 1,  # rank 0: one worker, rank 1: two
        )
        for rank in range(world)
    ]
    reference = BatchStream(len(memory), batch, seed=3)
    with loaders[0], loaders[1]:
        for _ in range(5):  # 40 draws from 25 images: crosses an epoch boundary
            index = reference.next()
            shards = [loader.next() for loader in loaders]
            assert all(torch.equal(s.index, index) for s in shards)
            together = torch.cat([s.index[s.part] for s in shards])
            assert torch.equal(together, index)  # the ranks' slices partition the batch
            assert torch.equal(torch.cat([s.images for s in shards]), memory.images[index])
            assert torch.equal(torch.cat([s.labels for s in shards]), memory.labels[index])
        assert loaders[0].state() == loaders[1].state() == reference.state()
    in_memory = ShardedBatchLoader(memory, BatchStream(len(memory), batch, seed=3))
    again = BatchStream(len(memory), batch, seed=3)
    first = in_memory.next()
    assert torch.equal(first.images, memory.images[again.next()])


def test_resumed_loader_continues_exactly(folder: Path, stores: Path):
    streamed = load_streaming_dataset(str(folder), image_size=SIZE, store_dir=stores)
    with ShardedBatchLoader(
        streamed, BatchStream(len(streamed), 8, seed=1), num_workers=2, prefetch_factor=3
    ) as loader:
        for _ in range(4):
            loader.next()
        state = loader.state()  # what a checkpoint stores: batches taken, not prefetched
        assert state == {"epoch": 1, "position": 7}  # 32 draws from 25
        expected = [loader.next() for _ in range(3)]
    resumed_stream = BatchStream(len(streamed), 8, seed=1, **state)
    with ShardedBatchLoader(streamed, resumed_stream, num_workers=1) as resumed:
        for old in expected:
            new = resumed.next()
            assert torch.equal(new.index, old.index) and torch.equal(new.images, old.images)


def test_dataset_works_with_a_plain_dataloader(folder: Path, stores: Path):
    memory = load_dataset(str(folder), image_size=SIZE)
    streamed = load_streaming_dataset(str(folder), image_size=SIZE, store_dir=stores)
    streamed.read([0])  # opens the memory map, which must not travel to the workers
    clone = pickle.loads(pickle.dumps(streamed))
    assert torch.equal(clone.images[[2, 0]], memory.images[[2, 0]])
    loader = torch.utils.data.DataLoader(streamed, batch_size=10, num_workers=1)
    images = torch.cat([images for images, _ in loader])
    assert torch.equal(images, memory.images)


def test_store_is_reused_and_follows_the_folder(
    folder: Path, stores: Path, monkeypatch: pytest.MonkeyPatch
):
    first = folder_image_store(folder, image_size=SIZE, store_dir=stores)

    def no_decoding(*args: object) -> None:
        raise AssertionError("the store should have been reused")

    with monkeypatch.context() as patch:
        patch.setattr(streaming_module, "load_image", no_decoding)
        assert folder_image_store(folder, image_size=SIZE, store_dir=stores).path == first.path
    assert folder_image_store(folder, image_size=SIZE + 1, store_dir=stores).path != first.path
    one = next((folder / "cat").iterdir())
    os.utime(one, ns=(0, 0))  # an edited file: a new modification time
    touched = folder_image_store(folder, image_size=SIZE, store_dir=stores)
    assert touched.path != first.path
    Image.new("RGB", (12, 12), (1, 2, 3)).save(folder / "dog" / "new.png")
    grown = folder_image_store(folder, image_size=SIZE, store_dir=stores)
    assert grown.shape[0] == NUM_IMAGES + 1 and grown.path != touched.path


def test_interrupted_write_leaves_nothing(tmp_path: Path):
    path = tmp_path / "store.npy"
    key = {"source": "test"}
    good = np.full((2, 4, 4, 1), 7, dtype=np.uint8)
    write_image_store(path, (2, 4, 4, 1), [good], name="t", key=key, labels=[0, 1])

    def chunks_then_crash():
        yield good[:1]
        raise KeyboardInterrupt  # a kill in the middle of writing

    with pytest.raises(KeyboardInterrupt):
        write_image_store(path, (2, 4, 4, 1), chunks_then_crash(), name="t", key=key, labels=[0, 1])
    assert not sidecar_path(path).exists()  # the old store reads as stale, never half-new
    assert sorted(p.name for p in tmp_path.iterdir()) == ["store.npy"]  # no temporaries
    with pytest.raises(StaleStoreError, match=r"store.npy has no sidecar"):
        open_image_store(path, key)


def test_stale_or_damaged_stores_are_refused(tmp_path: Path):
    path = tmp_path / "store.npy"
    key = {"source": "test", "size": 4}
    pixels = np.arange(2 * 4 * 4 * 3, dtype=np.uint8).reshape(2, 4, 4, 3)
    write_image_store(path, pixels.shape, [pixels], name="t", key=key, labels=[0, 1])
    assert np.array_equal(open_image_store(path, key, verify=True).pixels(), pixels)
    with pytest.raises(StaleStoreError, match=r"made with other settings"):
        open_image_store(path, {**key, "size": 5})
    data = path.read_bytes()
    path.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    open_image_store(path, key)  # sizes alone do not see a flipped bit...
    with pytest.raises(StaleStoreError, match=r"is damaged"):
        open_image_store(path, key, verify=True)  # ...the checksum does
    path.write_bytes(data[:-10])
    with pytest.raises(StaleStoreError, match=r"cannot be read"):
        open_image_store(path, key)


def test_small_datasets_are_not_streamed(tmp_path: Path):
    with pytest.raises(DifflabError, match=r"digits: is small enough for memory .*load_dataset"):
        load_streaming_dataset("digits", store_dir=tmp_path)
    with pytest.raises(DifflabError, match=r"split must be 'train' or 'test'"):
        load_streaming_dataset("emoji", split="val")


def test_rows_must_index_the_store(tmp_path: Path):
    path = tmp_path / "store.npy"
    pixels = np.zeros((3, 2, 2, 1), dtype=np.uint8)
    store = write_image_store(path, pixels.shape, [pixels], name="t", key={}, labels=[0, 0, 0])
    with pytest.raises(ValueError, match=r"rows must be a 1-d index"):
        StreamingImageDataset(store, [0, 3])
    with pytest.raises(IndexError):
        StreamingImageDataset(store).read([5])


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _rank_worker(rank: int, port: int, folder: Path, stores: Path, out: Path) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    if rank == 1:  # only rank 0 may decode: the others wait for its store

        def no_decoding(*args: object) -> None:
            raise AssertionError("rank 1 decoded images")

        streaming_module.load_image = no_decoding  # type: ignore[assignment]  # forked copy
    try:
        group = current()
        dataset = load_streaming_dataset(
            str(folder), image_size=SIZE, store_dir=stores, group=group
        )
        loader = ShardedBatchLoader(dataset, BatchStream(len(dataset), 8, seed=5), group=group)
        shards = [loader.next() for _ in range(4)]
        torch.save([(s.index, s.images, s.labels) for s in shards], out / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_torchrun_ranks_build_once_and_read_their_shards(
    folder: Path, stores: Path, tmp_path: Path
):
    mp.start_processes(
        _rank_worker,
        args=(_free_port(), folder, stores, tmp_path),
        nprocs=2,
        join=True,
        start_method="fork",  # no re-import: a second, not several
    )
    memory = load_dataset(str(folder), image_size=SIZE)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    reference = BatchStream(len(memory), 8, seed=5)
    for (index0, images0, labels0), (index1, images1, labels1) in zip(*ranks, strict=True):
        index = reference.next()
        assert torch.equal(index0, index) and torch.equal(index1, index)
        assert torch.equal(torch.cat([images0, images1]), memory.images[index])
        assert torch.equal(torch.cat([labels0, labels1]), memory.labels[index])
    assert len(list(stores.glob("*.npy"))) == 1


def test_a_config_can_ask_for_streaming(folder: Path, tmp_path: Path, monkeypatch):
    monkeypatch.setenv("DIFFLAB_CACHE", str(tmp_path / "cache"))
    data = SimpleNamespace(
        name=str(folder), data_dir=None, image_size=SIZE, channels=None, pad_to_32=False, limit=4
    )
    assert isinstance(load_configured_split(data, "train"), ImageDataset)
    data.streaming = True
    streamed = load_configured_split(data, "train")
    assert isinstance(streamed, StreamingImageDataset) and len(streamed) == 4
    assert list((tmp_path / "cache" / "data" / "stores").glob("folder-images-*.npy"))
    data.pad_to_32 = True
    with pytest.raises(DifflabError, match=r"data.pad_to_32 applies to 28×28 datasets"):
        load_configured_split(data, "train")


def test_single_items_and_bad_files(folder: Path, stores: Path):
    memory = load_dataset(str(folder), image_size=SIZE)
    streamed = load_streaming_dataset(str(folder), image_size=SIZE, store_dir=stores)
    assert torch.equal(streamed.images[3], memory.images[3])  # (C, S, S), as a tensor gives
    assert torch.equal(streamed.images[torch.tensor(3)], memory.images[3])
    assert torch.equal(streamed.images[-1], memory.images[-1])
    (folder / "dog" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(DifflabError, match=r"broken.png cannot be read as an image"):
        folder_image_store(folder, image_size=SIZE, store_dir=stores / "new")
    assert not list((stores / "new").glob("*"))  # nothing half-written
