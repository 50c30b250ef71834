"""Model conversion between difflab checkpoints, diffusers folders and the reference DiT code.

:func:`convert` is what ``difflab convert SRC DST`` runs: it detects the format of ``SRC``
(:func:`~difflab.convert.formats.detect_source`), picks the direction, and calls one converter:

=====================================  ==========  =========================================================
source                                 to          converter
=====================================  ==========  =========================================================
difflab checkpoint, ``arch: dit``      diffusers   :func:`difflab.convert.dit.export_dit_to_diffusers`
difflab checkpoint, ``arch: unet``     diffusers   ``difflab.convert.unet.export_unet_to_diffusers``
diffusers DiT folder                   difflab     :func:`difflab.convert.dit.import_diffusers_dit`
diffusers ``UNet2DModel`` folder       difflab     ``difflab.convert.unet.import_diffusers_unet``
reference DiT state dict (.pt, .st)    difflab     :func:`difflab.convert.dit.import_reference_dit`
=====================================  ==========  =========================================================

A conversion never overwrites: an existing ``DST`` is refused, and what it writes appears whole
or not at all.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

from difflab.convert.formats import Source, detect_source, refuse_existing
from difflab.errors import DifflabError
from difflab.io.weights import resolve_checkpoint

TARGETS: tuple[str, ...] = ("diffusers", "difflab")


class Conversion(NamedTuple):
    """What :func:`convert` did: the detected source, the target format and the path written."""

    source: Source
    target: str
    out: Path


def convert(
    src: str | Path,
    dst: str | Path,
    *,
    to: str | None = None,
    allow_pickle: bool = False,
    preset: str | None = None,
    num_heads: int | None = None,
    allow_timestep_shift: bool = False,
) -> Conversion:
    """Convert the model at ``src`` into ``dst`` (see the module docstring for the directions).

    Args:
        src: a difflab checkpoint (or a shipped one's name), a diffusers model or pipeline folder, or a reference DiT
            state dict (safetensors, or ``.pt`` / ``.pth`` with ``allow_pickle``).
        dst: a new ``.safetensors`` path (to difflab) or a new folder (to diffusers).
        to: "diffusers" or "difflab"; by default the other format than the source's (a
            reference state dict goes to difflab).
        allow_pickle: read ``.pt`` / ``.pth`` / ``.bin`` files with
            ``torch.load(weights_only=True)``; refused otherwise.
        preset, num_heads: the reference DiT's head count (not stored in its tensors) and,
            without ``pos_embed``, its image size; by default the paper's Table 1.
        allow_timestep_shift: export a DiT whose timestep features differ from diffusers'.
    """
    src, dst = resolve_checkpoint(src), Path(dst)  # a shipped name (dit_mnist_s4) works too
    source = detect_source(src)
    target = to or ("diffusers" if source.format == "difflab" else "difflab")
    if target not in TARGETS:
        raise DifflabError(f"--to {target!r} is unknown; choose one of {', '.join(TARGETS)}.")
    if target == "difflab" and source.format == "difflab":
        raise DifflabError(f"{src} is already a difflab checkpoint; use --to diffusers.")
    if target == "diffusers" and source.format != "difflab":
        raise DifflabError(
            f"{src} is a {source.format} model; convert it to difflab first (--to difflab), "
            "then export that checkpoint."
        )
    if source.arch == "unet" and (preset or num_heads):
        raise DifflabError("--preset and --num-heads describe a DiT; a U-Net needs neither.")
    refuse_existing(dst)
    if target == "difflab" and dst.suffix != ".safetensors":
        raise DifflabError(f"the output {dst} must end in .safetensors (a difflab checkpoint).")
    if target == "diffusers" and dst.suffix == ".safetensors":
        raise DifflabError(
            f"the output {dst} must be a folder for a diffusers model, not a .safetensors file."
        )
    src = source.path  # a diffusers weights file given alone stands for its folder
    if source.arch == "unet":
        from difflab.convert import unet  # written beside this package's DiT converters

        if target == "diffusers":
            unet.export_unet_to_diffusers(src, dst)
        else:
            unet.import_diffusers_unet(src, dst)
        return Conversion(source, target, dst)
    from difflab.convert import dit

    if target == "diffusers":
        dit.export_dit_to_diffusers(src, dst, allow_timestep_shift=allow_timestep_shift)
    elif source.format == "diffusers":
        dit.import_diffusers_dit(src, dst, allow_pickle=allow_pickle)
    else:
        dit.import_reference_dit(
            src, dst, allow_pickle=allow_pickle, num_heads=num_heads, preset=preset
        )
    return Conversion(source, target, dst)


__all__ = ["TARGETS", "Conversion", "Source", "convert", "detect_source"]
