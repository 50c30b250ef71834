"""A corpus of malformed inputs through the CLI: each one gets one clear sentence and leaves nothing.

For every case: exit status != 0, exactly one line on stderr that ends with a full stop and holds
no traceback, and the output folder exactly as it was (no grid, no run folder, no partial file).
A pickle that would create a folder when unpickled proves that no file is ever unpickled.
"""

from __future__ import annotations

import gzip
import json
import os
import pickle
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import torch
from PIL import Image

from difflab.io.checkpoint import METADATA_KEY, load_checkpoint
from difflab.io.weights import weights_dir
from tests.cli.conftest import CONFIGS, run_cli

TINY = str(CONFIGS / "digits_tiny.yaml")


class Tripwire:
    """Unpickling this creates the folder ``marker``: the proof that something was unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


@dataclass
class Inputs:
    """The malformed files, made once; ``out`` is an empty folder for each case's outputs."""

    root: Path
    checkpoint: Path
    marker: Path
    out: Path = Path()

    def file(self, name: str) -> str:
        return str(self.root / name)

    def sample(self, checkpoint: str, *args: str) -> list[str]:
        out = str(self.out / "grid.png")
        return ["sample", checkpoint, "--steps", "2", "--n", "2", "--out", out, *args]

    def train(self, *overrides: str, config: str = TINY) -> list[str]:
        run_dir = f"train.out_dir={self.out / 'run'}"
        return ["train", "--quiet", config, run_dir, "train.steps=2", *overrides]

    def train_folder(self, folder: str) -> list[str]:
        return self.train(
            "data.name=folder", f"data.data_dir={self.file(folder)}", "data.image_size=8"
        )

    def train_mnist(self, folder: str) -> list[str]:
        return self.train("data.name=mnist", f"data.data_dir={self.file(folder)}")

    def resume(self, state: str) -> list[str]:
        """``train --resume`` on a run folder whose state file is ``state``."""
        run = self.out / "run" / "checkpoints"
        run.mkdir(parents=True)
        (run / "last.safetensors").write_bytes((self.root / state).read_bytes())
        return [*self.train(), "--resume"]


def write_safetensors(path: Path, tensors: dict, meta: dict | str | None) -> None:
    metadata = (
        None
        if meta is None
        else {METADATA_KEY: meta if isinstance(meta, str) else json.dumps(meta)}
    )
    path.write_bytes(safetensors.torch.save(tensors, metadata=metadata))


def png_bytes(size: tuple[int, int] = (8, 8), mode: str = "L") -> bytes:
    import io

    buffer = io.BytesIO()
    Image.new(mode, size, 128).save(buffer, format="PNG")
    return buffer.getvalue()


def jpeg_bytes() -> bytes:
    import io

    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(
        buffer, format="JPEG"
    )
    return buffer.getvalue()


def with_dimensions(png: bytes, width: int, height: int) -> bytes:
    """The PNG with its IHDR chunk claiming ``width`` × ``height`` (CRC recomputed)."""
    ihdr = bytearray(png[12:29])  # b"IHDR" + 13 bytes of fields
    ihdr[4:12] = struct.pack(">II", width, height)
    return png[:12] + bytes(ihdr) + struct.pack(">I", zlib.crc32(ihdr)) + png[33:]


def idx_bytes(magic: int, dims: tuple[int, ...], data: bytes) -> bytes:
    return struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in dims) + data


def make_idx_folder(folder: Path, *, images: bytes | None = None, labels: bytes | None = None):
    """An MNIST-layout folder of 4 images per split; ``images``/``labels`` replace the train files."""
    folder.mkdir()
    pixels = bytes(4 * 28 * 28)
    for prefix in ("train", "t10k"):
        good_images = idx_bytes(0x803, (4, 28, 28), pixels)
        good_labels = idx_bytes(0x801, (4,), bytes([0, 1, 2, 3]))
        is_train = prefix == "train"
        (folder / f"{prefix}-images-idx3-ubyte").write_bytes(
            images if is_train and images is not None else good_images
        )
        (folder / f"{prefix}-labels-idx1-ubyte").write_bytes(
            labels if is_train and labels is not None else good_labels
        )


def image_folder(root: Path, name: str, files: dict[str, bytes]) -> None:
    folder = root / name
    folder.mkdir()
    for file_name, data in files.items():
        (folder / file_name).write_bytes(data)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, tiny_checkpoint) -> Inputs:
    root = tmp_path_factory.mktemp("bad_inputs")
    made = Inputs(root, tiny_checkpoint, root / "UNPICKLED")
    good = tiny_checkpoint.read_bytes()
    tensors, meta = load_checkpoint(tiny_checkpoint)
    key = sorted(tensors)[0]

    (root / "zero.safetensors").write_bytes(b"")
    (root / "truncated.safetensors").write_bytes(good[: len(good) // 2])
    (root / "garbage.safetensors").write_bytes(struct.pack("<Q", 20) + b"{not json at all!!!}")
    (root / "tripwire.pkl").write_bytes(pickle.dumps(Tripwire(made.marker)))
    (root / "tripwire.pt").write_bytes(pickle.dumps(Tripwire(made.marker)))
    torch.save({"w": torch.ones(2)}, root / "zip.pt")
    write_safetensors(root / "no_meta.safetensors", tensors, None)
    write_safetensors(root / "bad_meta.safetensors", tensors, "{broken")
    write_safetensors(
        root / "missing.safetensors", {k: v for k, v in tensors.items() if k != key}, meta
    )
    write_safetensors(root / "extra.safetensors", {**tensors, "model.extra": torch.ones(3)}, meta)
    write_safetensors(root / "shape.safetensors", {**tensors, key: torch.ones(7, 7)}, meta)
    write_safetensors(root / "classifier_kind.safetensors", tensors, {**meta, "kind": "classifier"})
    write_safetensors(
        root / "no_arch.safetensors", tensors, {k: v for k, v in meta.items() if k != "arch"}
    )
    write_safetensors(root / "odd_arch.safetensors", tensors, {**meta, "arch": "gan"})
    (root / "a_folder.safetensors").mkdir()

    configs = {
        "empty.yaml": b"",
        "binary.yaml": bytes(range(128, 256)),
        "syntax.yaml": b"train: {steps: 3\n",
        "list.yaml": b"- a\n- b\n",
        "section.yaml": b"trainer:\n  steps: 3\n",
    }
    for name, data in configs.items():
        (root / name).write_bytes(data)

    png = png_bytes()
    image_folder(root, "png_corrupt", {"a.png": png, "b.png": os.urandom(64)})
    # every file damaged, so that the training split (not only the test split) holds one
    short_png, short_jpeg = png_bytes((64, 64))[:60], jpeg_bytes()[:200]
    image_folder(root, "png_truncated", {"a.png": short_png, "b.png": short_png})
    image_folder(root, "jpeg_truncated", {"a.jpg": short_jpeg, "b.jpg": short_jpeg})
    image_folder(root, "png_zero", {"a.png": png, "b.png": b""})
    image_folder(root, "png_enormous", {"a.png": png, "b.png": with_dimensions(png, 10**5, 10**5)})
    image_folder(root, "text_as_jpeg", {"a.png": png, "notes.jpg": b"just some text\n" * 10})
    image_folder(root, "no_images", {"readme.txt": b"no images here\n"})

    make_idx_folder(root / "idx_truncated", images=idx_bytes(0x803, (4, 28, 28), bytes(100)))
    make_idx_folder(root / "idx_zero", images=b"")
    make_idx_folder(root / "idx_magic", images=idx_bytes(0x901, (4, 28, 28), bytes(4 * 784)))
    make_idx_folder(root / "idx_gzip", images=gzip.compress(bytes(5000))[:30])
    make_idx_folder(root / "idx_counts", labels=idx_bytes(0x801, (3,), bytes([0, 1, 2])))
    return made


CASES: dict[str, Callable[[Inputs], list[str]]] = {
    # checkpoints
    "zero-byte checkpoint": lambda i: i.sample(i.file("zero.safetensors")),
    "truncated checkpoint": lambda i: i.sample(i.file("truncated.safetensors")),
    "checkpoint header not JSON": lambda i: ["info", i.file("garbage.safetensors")],
    "pickle (.pkl) as checkpoint": lambda i: i.sample(i.file("tripwire.pkl")),
    "pickle (.pt) to info": lambda i: ["info", i.file("tripwire.pt")],
    "torch.save zip as checkpoint": lambda i: i.sample(i.file("zip.pt")),
    "pickle to export": lambda i: ["export", i.file("tripwire.pkl"), str(i.out / "w.safetensors")],
    "safetensors without difflab metadata": lambda i: i.sample(i.file("no_meta.safetensors")),
    "damaged metadata JSON": lambda i: i.sample(i.file("bad_meta.safetensors")),
    "missing tensor": lambda i: i.sample(i.file("missing.safetensors")),
    "extra tensor": lambda i: i.sample(i.file("extra.safetensors")),
    "tensor of the wrong shape": lambda i: i.sample(i.file("shape.safetensors")),
    "checkpoint of another kind": lambda i: i.sample(i.file("classifier_kind.safetensors")),
    "diffusion model as --classifier": lambda i: i.sample(
        str(i.checkpoint), "--classifier", str(i.checkpoint), "--label", "1"
    ),
    "checkpoint without arch": lambda i: i.sample(i.file("no_arch.safetensors")),
    "checkpoint of an unknown arch": lambda i: i.sample(i.file("odd_arch.safetensors")),
    "folder as checkpoint": lambda i: i.sample(i.file("a_folder.safetensors")),
    "resume from a truncated state": lambda i: i.resume("truncated.safetensors"),
    "resume from a pickle state": lambda i: i.resume("tripwire.pkl"),
    # configs
    "empty config file": lambda i: i.train(config=i.file("empty.yaml")),
    "binary config file": lambda i: i.train(config=i.file("binary.yaml")),
    "YAML syntax error": lambda i: i.train(config=i.file("syntax.yaml")),
    "config is a list": lambda i: i.train(config=i.file("list.yaml")),
    "unknown config section": lambda i: i.train(config=i.file("section.yaml")),
    "mistyped config key": lambda i: i.train("train.stepz=3"),
    "wrong value type": lambda i: i.train("train.lr=fast"),
    "unknown kind": lambda i: i.train("kind=gan"),
    "unknown preset": lambda i: i.train("model.preset=unet-huge"),
    "unknown model field": lambda i: i.train("model.wings=2"),
    "zero steps": lambda i: i.train("train.steps=0"),
    "negative skip_nonfinite": lambda i: i.train("train.skip_nonfinite=-1"),
    "2 channels": lambda i: i.train("data.channels=2"),
    "4 channels": lambda i: i.train("data.channels=4"),
    "enormous image_size": lambda i: i.train("data.image_size=100000"),
    "unknown dataset": lambda i: i.train("data.name=cifar"),
    # image folders
    "corrupt PNG": lambda i: i.train_folder("png_corrupt"),
    "truncated PNG": lambda i: i.train_folder("png_truncated"),
    "truncated JPEG": lambda i: i.train_folder("jpeg_truncated"),
    "zero-byte PNG": lambda i: i.train_folder("png_zero"),
    "PNG of enormous dimensions": lambda i: i.train_folder("png_enormous"),
    "text file named .jpg": lambda i: i.train_folder("text_as_jpeg"),
    "folder without images": lambda i: i.train_folder("no_images"),
    "missing folder": lambda i: i.train_folder("does_not_exist"),
    # IDX files
    "truncated IDX": lambda i: i.train_mnist("idx_truncated"),
    "zero-byte IDX": lambda i: i.train_mnist("idx_zero"),
    "IDX of the wrong magic": lambda i: i.train_mnist("idx_magic"),
    "corrupt gzip IDX": lambda i: i.train_mnist("idx_gzip"),
    "IDX images and labels disagree": lambda i: i.train_mnist("idx_counts"),
    # devices
    "cuda asked for without a GPU": lambda i: [*i.train(), "--device", "cuda"],
    "sample on cuda without a GPU": lambda i: i.sample(str(i.checkpoint), "--device", "cuda"),
}


def alias_bomb(levels: int = 9, width: int = 9) -> str:
    """YAML whose last alias expands to ``width ** levels`` values (a "billion laughs")."""
    lines = [f"a0: &a0 [{', '.join(['x'] * width)}]"]
    lines += [f"a{k}: &a{k} [{', '.join([f'*a{k - 1}'] * width)}]" for k in range(1, levels)]
    return "{" + ", ".join(lines) + "}"


def made(i: Inputs, name: str, data: bytes | str) -> str:
    """``i.root/name`` with ``data`` (written once), as a path string."""
    path = i.root / name
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data.encode() if isinstance(data, str) else data)
    return str(path)


def with_meta(i: Inputs, name: str, change: Callable[[dict], object]) -> str:
    """A copy of the tiny checkpoint whose JSON is ``change(meta)`` (a new value, or the dict
    changed in place when it returns None)."""
    path = i.root / name
    if not path.exists():
        tensors, meta = load_checkpoint(i.checkpoint)
        new = change(meta)
        write_safetensors(path, tensors, meta if new is None else new)
    return str(path)


def crafted(i: Inputs, shipped: str, name: str, **model: object) -> str:
    """A copy of a shipped checkpoint whose JSON's model entry is updated with ``model``."""
    path = i.root / name
    if not path.exists():
        tensors, meta = load_checkpoint(weights_dir() / f"{shipped}.safetensors")
        meta["model"].update(model)
        write_safetensors(path, tensors, meta)
    return str(path)


def with_state(i: Inputs, name: str, change: Callable[[dict, dict], None]) -> str:
    """A copy of the tiny run's state file changed by ``change(tensors, meta)``; its file name."""
    path = i.root / name
    if not path.exists():
        tensors, meta = load_checkpoint(i.checkpoint.parent / "checkpoints" / "last.safetensors")
        change(tensors, meta)
        write_safetensors(path, tensors, meta)
    return name


def stats_file(i: Inputs, name: str, **changes: object) -> str:
    """A statistics .npz with entries replaced by ``changes``."""
    path = i.root / name
    if not path.exists():
        arrays = {
            "format": np.array("difflab-feature-stats-1"),
            "feature_space": np.array("digits"),
            "mean": np.zeros(2),
            "cov": np.eye(2),
            "count": np.array(3),
            "source": np.array("x"),
            "image_size": np.array(8),
            **changes,
        }
        np.savez(path, **arrays)
    return str(path)


def claimed_cov(i: Inputs) -> str:
    """A statistics file whose covariance header claims 10^14 values (the data is 16 bytes)."""
    path = Path(stats_file(i, "cov_header.npz"))
    bomb = i.root / "cov_bomb.npz"
    if not bomb.exists():
        import zipfile

        with zipfile.ZipFile(path) as source, zipfile.ZipFile(bomb, "w") as target:
            for info in source.infolist():
                data = source.read(info)
                if info.filename == "cov.npy":
                    data = data.replace(b"(2, 2)", b"(10000000, 10000000)")
                target.writestr(info, data)
    return str(bomb)


def symlink_loop(i: Inputs) -> str:
    folder = i.root / "symlink_loop"
    if not folder.exists():
        folder.mkdir()
        (folder / "a.png").write_bytes(png_bytes())
        os.symlink("loop.png", folder / "loop.png")
    return str(folder)


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


ISSUE_18: dict[str, Callable[[Inputs], list[str]]] = {
    # 6: a resume whose data changed, or whose position is impossible, ends at once
    "18.6 resume after the dataset shrank": lambda i: [
        *i.resume(with_state(i, "state_ok.safetensors", lambda t, m: None))[:-1],
        "data.limit=5",
        "--resume",
    ],
    "18.6 data position -7": lambda i: i.resume(
        with_state(i, "state_pos.safetensors", lambda t, m: m["state"].update(position=-7))
    ),
    # 7: alias bombs, in a file and in an override
    "18.7 alias bomb file": lambda i: i.train(
        config=made(i, "bomb.yaml", f"train:\n  steps: {alias_bomb()}\n")
    ),
    "18.7 alias bomb override": lambda i: i.train(f"train.steps={alias_bomb(6)}"),
    "18.7 deeply nested override": lambda i: i.train(f"train.steps={nested(200)}"),
    # 8: sizes checked against memory before allocating
    "18.8 enormous batch": lambda i: i.train("train.batch_size=1000000000"),
    # 9: non-finite numbers are errors everywhere
    "18.9 --eta nan": lambda i: i.sample(str(i.checkpoint), "--eta", "nan"),
    "18.9 --eta inf": lambda i: i.sample(str(i.checkpoint), "--eta", "inf"),
    "18.9 train.lr=nan": lambda i: i.train("train.lr=nan"),
    "18.9 --temperature nan": lambda i: i.sample(str(i.checkpoint), "--temperature", "nan"),
    # 10: integers beyond 64 bits
    "18.10 --seed 2**64-1": lambda i: i.sample(str(i.checkpoint), "--seed", str(2**64 - 1)),
    "18.10 --seed-b 2**64": lambda i: [
        "interpolate",
        str(i.checkpoint),
        "--seed-b",
        str(2**64),
        "--out",
        str(i.out / "i.png"),
    ],
    "18.10 --labels 2**70": lambda i: i.sample(str(i.checkpoint), "--labels", str(2**70)),
    "18.10 seed=2**70 in a config": lambda i: i.train(f"train.seed={2**70}"),
    # 11: outputs that cannot be written, found before any work
    "18.11 --out is a folder": lambda i: [
        "sample",
        str(i.checkpoint),
        "--out",
        str(i.root / "a_folder.safetensors"),
    ],
    "18.11 --out under a file": lambda i: [
        "sample",
        str(i.checkpoint),
        "--out",
        str(i.checkpoint / "x.png"),
    ],
    "18.11 --out in /proc": lambda i: ["sample", str(i.checkpoint), "--out", "/proc/x.png"],
    "18.11 train.out_dir under a file": lambda i: i.train(f"train.out_dir={i.checkpoint}/run"),
    "18.11 empty train.out_dir": lambda i: i.train("train.out_dir="),
    # 4: never overwrite an input; an output folder that is a file
    "18.4 export X X": lambda i: [
        "export",
        with_meta(i, "same.safetensors", lambda m: None),
        str(i.root / "same.safetensors"),
    ],
    "18.4 --out-dir is a file": lambda i: i.sample(
        str(i.checkpoint), "--out-dir", str(i.checkpoint)
    ),
    # 12: crafted checkpoint metadata
    "18.12 negative base_channels": lambda i: i.sample(
        with_meta(i, "neg.safetensors", lambda m: m["model"].update(base_channels=-8))
    ),
    "18.12 width of 10^6": lambda i: i.sample(
        with_meta(i, "wide.safetensors", lambda m: m["model"].update(base_channels=10**6))
    ),
    "18.12 heads that do not divide the width": lambda i: i.sample(
        with_meta(i, "heads.safetensors", lambda m: m["model"].update(num_heads=3))
    ),
    "18.12 autoencoder width of 10^6": lambda i: [
        "reconstruct",
        crafted(i, "ae_emoji_f4", "wide_ae.safetensors", base_channels=10**6),
        "--data",
        "digits",
        "--out",
        str(i.out / "r.png"),
    ],
    "18.12 classifier width of 10^6": lambda i: i.sample(
        "mnist_ddim",
        "--label",
        "1",
        "--classifier",
        crafted(i, "mnist_classifier", "wide_clf.safetensors", base_channels=10**6),
    ),
    "18.12 negative image_size": lambda i: i.sample(
        with_meta(i, "neg_size.safetensors", lambda m: m["data"].update(image_size=-28))
    ),
    "18.12 missing channels": lambda i: i.sample(
        with_meta(i, "no_channels.safetensors", lambda m: m["data"].pop("channels") and None)
    ),
    "18.12 num_timesteps a string": lambda i: i.sample(
        with_meta(i, "t_string.safetensors", lambda m: m["diffusion"].update(num_timesteps="x"))
    ),
    "18.12 metadata a list": lambda i: ["info", with_meta(i, "list.safetensors", lambda m: [m])],
    "18.12 data a string": lambda i: i.sample(
        with_meta(i, "data_string.safetensors", lambda m: m.update(data="mnist"))
    ),
    "18.12 JSON nested 100,000 deep": lambda i: [
        "info",
        with_meta(i, "deep.safetensors", lambda m: nested(100_000)),
    ],
    # 13: config values that used to reach torch
    "18.13 model.base_channels=-8": lambda i: i.train("model.base_channels=-8"),
    "18.13 train.weight_decay=-1": lambda i: i.train("train.weight_decay=-1"),
    "18.13 model.num_heads=3": lambda i: i.train("model.num_heads=3"),
    # 14: damaged resume state
    "18.14 malformed param_groups": lambda i: i.resume(
        with_state(
            i, "groups.safetensors", lambda t, m: m["state"].update(param_groups=[{"lr": "x"}])
        )
    ),
    "18.14 short RNG state": lambda i: i.resume(
        with_state(i, "rng.safetensors", lambda t, m: t.update({"rng.torch": t["rng.torch"][:9]}))
    ),
    # 15: a symlink loop
    "18.15 symlink loop in a training folder": lambda i: i.train(
        "data.name=folder", f"data.data_dir={symlink_loop(i)}", "data.image_size=8"
    ),
    "18.15 symlink loop to fd-stats": lambda i: [
        "fd-stats",
        symlink_loop(i),
        "--out",
        str(i.out / "s.npz"),
    ],
    # 16: statistics files
    "18.16 stats mean a string": lambda i: [
        "fd",
        stats_file(i, "mean_str.npz", mean=np.array("x")),
        stats_file(i, "good.npz"),
    ],
    "18.16 stats count a vector": lambda i: [
        "fd",
        stats_file(i, "count_vec.npz", count=np.arange(3)),
        stats_file(i, "good.npz"),
    ],
    "18.16 stats image_size a string": lambda i: [
        "fd",
        stats_file(i, "size_str.npz", image_size=np.array("8")),
        stats_file(i, "good.npz"),
    ],
    "18.16 covariance header of 10^14 values": lambda i: [
        "fd",
        claimed_cov(i),
        stats_file(i, "good.npz"),
    ],
    # 18: a header of 10^8 pixels (Pillow's warning range) is the file's one error
    "18.18 10^8-pixel PNG header": lambda i: i.train(
        "data.name=folder",
        "data.image_size=8",
        "data.data_dir="
        + str(
            Path(made(i, "bomb_warning/b.png", with_dimensions(png_bytes(), 10_000, 10_000))).parent
        ),
    ),
}
CASES.update(ISSUE_18)

# what each sentence must say (the file or key at fault, or the reason)
EXPECTED: dict[str, str] = {
    "18.6 resume after the dataset shrank": "the training data changed since",
    "18.6 data position -7": "damaged resume state (position is -7)",
    "18.7 alias bomb file": "holds more than 100,000 values",
    "18.7 alias bomb override": "holds more than 100,000 values",
    "18.7 deeply nested override": "nested more than 64 levels deep",
    "18.8 enormous batch": "train.batch_size=1000000000 needs roughly",
    "18.9 --eta nan": "--eta must be a finite number",
    "18.9 --eta inf": "--eta must be a finite number",
    "18.9 train.lr=nan": "train.lr must be a finite number, got nan",
    "18.9 --temperature nan": "--temperature must be a finite number",
    "18.10 --seed 2**64-1": "--seed is 18446744073709551615, which does not fit in 64 bits",
    "18.10 --seed-b 2**64": "--seed-b is 18446744073709551616, which does not fit in 64 bits",
    "18.10 --labels 2**70": "--labels is 1180591620717411303424",
    "18.10 seed=2**70 in a config": "train.seed is 1180591620717411303424",
    "18.11 --out is a folder": "a_folder.safetensors must end in .png",
    "18.11 --out under a file": "which is a file, not a folder",
    "18.11 --out in /proc": "cannot write in /proc",
    "18.11 train.out_dir under a file": "which is a file, not a folder",
    "18.11 empty train.out_dir": "train.out_dir is empty",
    "18.4 export X X": "difflab never overwrites its input",
    "18.4 --out-dir is a file": "--out-dir",
    "18.12 negative base_channels": "config.base_channels must be 0 or more, got -8",
    "18.12 width of 10^6": "but the file holds only",
    "18.12 autoencoder width of 10^6": "but the file holds only",
    "18.12 classifier width of 10^6": "but the file holds only",
    "18.12 heads that do not divide the width": "its model description cannot be built",
    "18.12 negative image_size": "data.image_size must be an integer of at least 1, got -28",
    "18.12 missing channels": "the data entry must give channels and image_size",
    "18.12 num_timesteps a string": "num_timesteps must be an integer, got 'x'",
    "18.12 metadata a list": "has damaged difflab metadata (a list, not a mapping)",
    "18.12 data a string": "metadata entry 'data' must be a mapping, got 'mnist'",
    "18.12 JSON nested 100,000 deep": "damaged difflab metadata",
    "18.13 model.base_channels=-8": "model.base_channels must be 0 or more, got -8",
    "18.13 train.weight_decay=-1": "train.weight_decay must be 0 or more, got -1.0",
    "18.13 model.num_heads=3": "the model config cannot be built",
    "18.14 malformed param_groups": "holds a damaged optimizer state",
    "18.14 short RNG state": "damaged random number generator state ('rng.torch')",
    "18.15 symlink loop in a training folder": "loop.png cannot be read as an image",
    "18.15 symlink loop to fd-stats": "loop.png cannot be read as an image",
    "18.16 stats mean a string": "entry 'mean' must be a 1-dimensional float array",
    "18.16 stats count a vector": "entry 'count' must be a 0-dimensional int array",
    "18.16 stats image_size a string": "entry 'image_size' must be a 0-dimensional int array",
    "18.16 covariance header of 10^14 values": "entry 'cov' claims 100,000,000,000,000 values",
    "18.18 10^8-pixel PNG header": "b.png cannot be read as an image",
    "zero-byte checkpoint": "zero.safetensors is not a safetensors file",
    "truncated checkpoint": "truncated.safetensors is a damaged safetensors file",
    "checkpoint header not JSON": "garbage.safetensors is a damaged safetensors file",
    "pickle (.pkl) as checkpoint": "tripwire.pkl is a Python pickle, which difflab never unpickles",
    "pickle (.pt) to info": "tripwire.pt is a Python pickle",
    "torch.save zip as checkpoint": "zip.pt is a zip archive",
    "pickle to export": "tripwire.pkl is a Python pickle",
    "safetensors without difflab metadata": "no_meta.safetensors has no difflab metadata",
    "damaged metadata JSON": "bad_meta.safetensors has damaged difflab metadata",
    "missing tensor": "1 missing",
    "extra tensor": "1 unexpected (e.g. 'extra')",
    "tensor of the wrong shape": "has shape (7, 7)",
    "checkpoint of another kind": "holds a 'classifier' checkpoint",
    "diffusion model as --classifier": "holds a 'diffusion' checkpoint, not a noisy classifier",
    "checkpoint without arch": "lacks the 'arch' entry",
    "checkpoint of an unknown arch": "odd_arch.safetensors holds a model of unknown architecture 'gan'",
    "folder as checkpoint": "a_folder.safetensors is a folder",
    "resume from a truncated state": "last.safetensors is a damaged safetensors file",
    "resume from a pickle state": "last.safetensors is a Python pickle",
    "empty config file": "empty.yaml is empty",
    "binary config file": "binary.yaml is not valid YAML",
    "YAML syntax error": "syntax.yaml is not valid YAML at line 2",
    "config is a list": "list.yaml must hold a mapping",
    "unknown config section": "unknown config key 'trainer' (did you mean 'train'?)",
    "mistyped config key": "unknown config key 'train.stepz' (did you mean 'steps'?)",
    "wrong value type": "train.lr must be a number",
    "unknown kind": "config kind 'gan' is not trainable",
    "unknown preset": "unknown model preset 'unet-huge'",
    "unknown model field": "unknown key 'wings'",
    "zero steps": "train.steps must be at least 1",
    "negative skip_nonfinite": "train.skip_nonfinite must be 0 or more",
    "2 channels": "channels must be 1 (gray) or 3 (RGB), got 2",
    "4 channels": "channels must be 1 (gray) or 3 (RGB), got 4",
    "enormous image_size": "image_size 100000 is larger than",
    "unknown dataset": "unknown dataset 'cifar'",
    "corrupt PNG": "b.png cannot be read as an image",
    "truncated PNG": ".png cannot be read as an image (image file is truncated)",
    "truncated JPEG": ".jpg cannot be read as an image",
    "zero-byte PNG": "b.png is an empty (0-byte) file",
    "PNG of enormous dimensions": "could be decompression bomb",
    "text file named .jpg": "notes.jpg cannot be read as an image",
    "folder without images": "no_images holds no image files",
    "missing folder": "does_not_exist does not exist",
    "truncated IDX": "train-images-idx3-ubyte is truncated",
    "zero-byte IDX": "train-images-idx3-ubyte is empty (0 bytes)",
    "IDX of the wrong magic": "has magic number 0x00000901",
    "corrupt gzip IDX": "is a corrupt or truncated gzip file",
    "IDX images and labels disagree": "holds 4 images but",
    "cuda asked for without a GPU": "--device cuda was asked for",
    "sample on cuda without a GPU": "--device cuda was asked for",
}


def snapshot(folder: Path) -> dict[str, bytes | None]:
    """Every path below ``folder`` with its bytes (``None`` for a folder)."""
    return {
        str(p.relative_to(folder)): None if p.is_dir() else p.read_bytes()
        for p in sorted(folder.rglob("*"))
    }


@pytest.mark.skipif(torch.cuda.is_available(), reason="the cuda case needs a machine without a GPU")
@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_gives_one_sentence_and_leaves_nothing(name, inputs, tmp_path, capsys):
    inputs.out = tmp_path / "out"
    inputs.out.mkdir()
    argv = CASES[name](inputs)
    before = snapshot(inputs.out)
    code, _, err = run_cli(argv, capsys)
    assert code != 0, name
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err and lines[0].endswith("."), err
    assert EXPECTED[name] in lines[0]
    assert snapshot(inputs.out) == before
    assert not inputs.marker.exists()  # nothing was unpickled


def test_the_corpus_is_large_and_every_case_has_its_sentence():
    assert len(CASES) >= 30 and EXPECTED.keys() == CASES.keys()
