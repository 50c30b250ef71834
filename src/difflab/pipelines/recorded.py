"""Files a checkpoint depends on, recorded by path and SHA-256.

A latent model records its autoencoder, a ControlNet its locked base and a VQ-VAE prior its
VQ-VAE: ``{path, sha256}``. Loading finds the file (a path the user gives, else the recorded path,
beside the checkpoint, among the shipped weights) and refuses one whose SHA-256 differs, because a
model run with another file's latents, features or codes gives garbage without any error.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from difflab.errors import DifflabError
from difflab.io.weights import weights_dir
from difflab.metrics.features import file_digest


def file_record(path: Path) -> dict[str, str]:
    """What a checkpoint records about a file it depends on: its path and SHA-256."""
    return {"path": str(path), "sha256": file_digest(path)}


def locate_recorded(name: Path, checkpoint: Path) -> Path | None:
    """The file at its recorded path, else beside ``checkpoint``, else among the shipped weights;
    None when nowhere."""
    candidates = [name, checkpoint.parent / name.name, weights_dir() / name.name]
    return next((path for path in candidates if path.is_file()), None)


def recorded_file(
    recorded: Any,
    checkpoint: Path,
    *,
    entry: str,
    role: str,
    mismatch: str,
    given: Path | None = None,
) -> tuple[Path, str]:
    """(path, SHA-256) of the file ``checkpoint``'s ``entry`` names, found and checked.

    Args:
        recorded: the checkpoint's ``{path, sha256}`` entry as read from its JSON.
        entry: that entry's name in the JSON ("autoencoder", "base"), for messages.
        role: what the file is to the checkpoint ("the autoencoder"), for messages.
        mismatch: what goes wrong with another file, the end of the refusal's sentence.
        given: a path the user passed instead of the recorded one (checked all the same).
    """
    try:
        name, digest = Path(recorded["path"]), str(recorded["sha256"])
    except (KeyError, TypeError):
        raise DifflabError(
            f"{checkpoint}: its '{entry}' entry lacks the path or the sha256; retrain or "
            "re-export it with difflab."
        ) from None
    if given is not None and not given.is_file():
        raise DifflabError(
            f"{given}, given as {role} of {checkpoint}, is not a file; give the checkpoint file "
            "of that training run."
        )
    found = given if given is not None else locate_recorded(name, checkpoint)
    if found is None:
        raise DifflabError(
            f"{checkpoint} needs {role} {name}, which is not there (also looked beside the "
            "checkpoint and in the shipped weights); put it back or copy it beside the checkpoint."
        )
    mine = file_digest(found)
    if mine != digest:
        raise DifflabError(
            f"{found} is not {role} {checkpoint} was trained with (SHA-256 {mine[:12]}… instead "
            f"of {digest[:12]}…); {mismatch}."
        )
    return found, mine
