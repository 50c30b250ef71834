"""Shipped checkpoints, found by name inside the installed package.

``weights/`` at the repository root is a link to ``src/difflab/weights``, so a source checkout and
an installed wheel read the same files: ``difflab sample mnist_ddim`` works from any directory.
"""

from __future__ import annotations

from pathlib import Path

from difflab.errors import DifflabError

WEIGHTS_SUFFIX = ".safetensors"


def weights_dir() -> Path:
    """The folder of the checkpoints shipped with difflab (package data)."""
    return Path(__file__).resolve().parent.parent / "weights"


def shipped_names() -> list[str]:
    """Names of the shipped checkpoints, e.g. ``["dit_mnist_s4", "mnist_ddim", ...]``."""
    return sorted(path.stem for path in weights_dir().glob(f"*{WEIGHTS_SUFFIX}"))


def resolve_checkpoint(name_or_path: str | Path) -> Path:
    """``name_or_path`` as a path: an existing file or folder as given, else a shipped name.

    ``"mnist_ddim"`` and ``"mnist_ddim.safetensors"`` both name ``weights/mnist_ddim.safetensors``
    when no such file exists in the working directory.

    Raises:
        DifflabError: neither a path that exists nor a shipped name.
    """
    path = Path(name_or_path).expanduser()
    if path.exists():
        return path
    text = str(name_or_path)
    if "/" not in text and "\\" not in text:
        stem = text[: -len(WEIGHTS_SUFFIX)] if text.endswith(WEIGHTS_SUFFIX) else text
        shipped = weights_dir() / f"{stem}{WEIGHTS_SUFFIX}"
        if shipped.is_file():
            return shipped
    raise DifflabError(
        f"{name_or_path} does not exist and is not a shipped checkpoint; give a file or one of "
        f"{', '.join(shipped_names())}."
    )
