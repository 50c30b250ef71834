"""Files a checkpoint depends on: found by the recorded path, beside it, or given; refused when changed."""

from pathlib import Path

import pytest

from difflab.errors import DifflabError
from difflab.pipelines.recorded import file_record, recorded_file

ROLE = {"entry": "base", "role": "the base model", "mismatch": "it would not fit"}


def make_file(path: Path, content: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return path


def test_found_at_the_recorded_path_then_beside_the_checkpoint(tmp_path):
    """Fails if the search stops at the recorded path (a moved weights folder would not load)."""
    base = make_file(tmp_path / "a" / "base.safetensors", b"weights")
    checkpoint = tmp_path / "b" / "control.safetensors"
    record = file_record(base)
    assert recorded_file(record, checkpoint, **ROLE) == (base, record["sha256"])
    beside = make_file(checkpoint.parent / "base.safetensors", b"weights")
    base.unlink()
    assert recorded_file(record, checkpoint, **ROLE)[0] == beside


def test_a_changed_file_is_refused_with_both_digests(tmp_path):
    """Fails if the SHA-256 comparison is dropped: another base would load silently."""
    base = make_file(tmp_path / "base.safetensors", b"weights")
    record = file_record(base)
    base.write_bytes(b"other weights")
    with pytest.raises(DifflabError, match=rf"is not the base model .*{record['sha256'][:12]}"):
        recorded_file(record, tmp_path / "control.safetensors", **ROLE)


@pytest.mark.parametrize(
    ("record", "given", "message"),
    [
        ({"path": "x"}, None, "lacks the path or the sha256"),
        (None, None, "lacks the path or the sha256"),
        ({"path": "/nowhere/base.safetensors", "sha256": "0" * 64}, None, "which is not there"),
        ({"path": "x", "sha256": "0" * 64}, "folder", "is not a file"),
    ],
)
def test_bad_records_and_paths_are_one_sentence(tmp_path, record, given, message):
    """Fails if a malformed entry raises KeyError/TypeError or a folder passes as the file."""
    given_path = tmp_path if given == "folder" else None
    with pytest.raises(DifflabError, match=message):
        recorded_file(record, tmp_path / "control.safetensors", **ROLE, given=given_path)
