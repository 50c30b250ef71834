import errno
import json
import pickle
import struct

import pytest
import torch

from difflab.errors import DifflabError
from difflab.io.checkpoint import load_checkpoint, load_weights_strict, save_checkpoint


def test_round_trip_keeps_tensors_and_metadata(tmp_path):
    tensors = {
        "model.w": torch.randn(3, 4),
        "model.b": torch.arange(5),
        "rng": torch.ByteTensor([1, 2]),
    }
    save_checkpoint(tmp_path / "c.safetensors", tensors, {"kind": "diffusion", "step": 7})
    loaded, meta = load_checkpoint(tmp_path / "c.safetensors", kind="diffusion")
    assert meta["step"] == 7 and meta["versions"]["torch"] == torch.__version__
    for key, value in tensors.items():
        assert torch.equal(loaded[key], value)
    assert [p.name for p in tmp_path.iterdir()] == ["c.safetensors"]  # no temporary file left


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "c.safetensors"
    save_checkpoint(path, {"x": torch.ones(2)}, {"kind": "diffusion", "step": 1})
    before = path.read_bytes()

    def broken_fsync(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("os.fsync", broken_fsync)
    with pytest.raises(DifflabError, match=r"could not write .*c.safetensors \(No space left"):
        save_checkpoint(path, {"x": torch.zeros(2)}, {"kind": "diffusion", "step": 2})
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["c.safetensors"]


class Boom:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_a_pickle_is_refused_without_being_unpickled(tmp_path, capsys):
    path = tmp_path / "model.pt"
    path.write_bytes(pickle.dumps(Boom()))
    with pytest.raises(DifflabError, match="pickle"):
        load_checkpoint(path)
    assert "must never run" not in capsys.readouterr().out


def test_a_torch_zip_file_is_refused(tmp_path):
    path = tmp_path / "model.pt"
    torch.save({"w": torch.ones(1)}, path)
    with pytest.raises(DifflabError, match="zip"):
        load_checkpoint(path)


@pytest.mark.parametrize(
    "content, message",
    [
        (b"", "not a safetensors"),
        (b"abc", "not a safetensors"),
        (struct.pack("<Q", 10**12) + b"{}", "not a safetensors"),
        (struct.pack("<Q", 6) + b"{bad}!", "damaged"),
    ],
)
def test_damaged_files_give_one_clear_error(tmp_path, content, message):
    path = tmp_path / "x.safetensors"
    path.write_bytes(content)
    with pytest.raises(DifflabError, match=message):
        load_checkpoint(path)


def test_truncated_checkpoint_is_refused(tmp_path):
    path = tmp_path / "c.safetensors"
    save_checkpoint(path, {"x": torch.ones(1000)}, {"kind": "diffusion"})
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(DifflabError):
        load_checkpoint(path)


def test_foreign_safetensors_and_wrong_kind(tmp_path):
    from safetensors.torch import save_file

    save_file({"x": torch.ones(1)}, tmp_path / "foreign.safetensors")
    with pytest.raises(DifflabError, match="no difflab metadata"):
        load_checkpoint(tmp_path / "foreign.safetensors")
    save_checkpoint(tmp_path / "vq.safetensors", {"x": torch.ones(1)}, {"kind": "vqvae"})
    with pytest.raises(DifflabError, match="'vqvae' checkpoint"):
        load_checkpoint(tmp_path / "vq.safetensors", kind="diffusion")
    with pytest.raises(DifflabError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.safetensors")


def test_missing_extra_and_misshaped_tensors_are_named(tmp_path):
    module = torch.nn.Linear(3, 2)
    good = {k: v.clone() for k, v in module.state_dict().items()}
    with pytest.raises(DifflabError, match="1 missing"):
        load_weights_strict(module, {"weight": good["weight"]}, tmp_path)
    with pytest.raises(DifflabError, match="1 unexpected"):
        load_weights_strict(module, {**good, "extra": torch.ones(1)}, tmp_path)
    with pytest.raises(DifflabError, match="shape"):
        load_weights_strict(module, {**good, "weight": torch.ones(4, 3)}, tmp_path)


def test_metadata_is_plain_json(tmp_path):
    path = save_checkpoint(
        tmp_path / "c.safetensors",
        {"x": torch.ones(1)},
        {"kind": "diffusion", "config": {"a": [1, 2]}},
    )
    header_len = struct.unpack("<Q", path.read_bytes()[:8])[0]
    header = json.loads(path.read_bytes()[8 : 8 + header_len])
    assert json.loads(header["__metadata__"]["difflab"])["config"] == {"a": [1, 2]}


def test_written_files_get_ordinary_permissions(tmp_path):
    import os

    umask = os.umask(0o022)
    try:
        path = save_checkpoint(
            tmp_path / "c.safetensors", {"x": torch.ones(1)}, {"kind": "diffusion"}
        )
    finally:
        os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o644


def test_a_header_length_whose_low_byte_is_0x80_is_not_mistaken_for_a_pickle(tmp_path):
    """Header lengths are little-endian, so about 1 file in 32 starts with the pickle byte 0x80."""
    for pad in range(0, 300, 8):  # header lengths are padded to multiples of 8
        path = save_checkpoint(
            tmp_path / "c.safetensors",
            {"x": torch.ones(1)},
            {"kind": "diffusion", "pad": "p" * pad},
        )
        if path.read_bytes()[:1] == b"\x80":
            break
    else:
        pytest.fail("no padding gave a header length ending in 0x80")
    assert load_checkpoint(path)[1]["kind"] == "diffusion"
