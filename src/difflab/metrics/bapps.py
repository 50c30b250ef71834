"""Scoring a perceptual distance against human judgements stored in the BAPPS layout.

BAPPS (Zhang et al. 2018, Sec. 2) has two kinds of folders; files correspond by name (stem):

* **2AFC** ``ref/``, ``p0/``, ``p1/`` (64×64 image patches) and ``judge/`` (``.npy``, one float:
  the fraction ``p`` of humans who judged ``p1`` closer to ``ref``). With ``d0 = d(ref, p0)`` and
  ``d1 = d(ref, p1)``, a metric scores ``p`` when it prefers ``p1``, ``1 − p`` when it prefers
  ``p0`` and ``½`` on a tie: the *2AFC score* is the mean, i.e. the expected agreement with a
  random human. ``human`` is ``mean(p² + (1 − p)²)``, the expected agreement between two random
  humans (an estimate of the human ceiling).
* **JND** ``p0/``, ``p1/`` and ``same/`` (``.npy``: the fraction of humans who judged the pair
  identical). Pairs ranked by increasing distance should put the "same" pairs first; the score is
  the average precision of that ranking (``same`` as graded relevance, as in the reference code).

The paper's 2AFC scores, averaged over the six validation sets (traditional, cnn, superres,
deblur, color, frameinterp): AlexNet-lin 69.8, VGG-lin 69.2, human 73.9.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from difflab.data.folder import IMAGE_EXTENSIONS, convert_mode
from difflab.data.transforms import images_from_uint8
from difflab.errors import DifflabError

MODES: tuple[str, ...] = ("2afc", "jnd")
LAYOUTS: dict[str, tuple[tuple[str, ...], str]] = {  # image folders, judgement folder
    "2afc": (("ref", "p0", "p1"), "judge"),
    "jnd": (("p0", "p1"), "same"),
}
PAPER_2AFC = {"alex-lin": 69.8, "vgg-lin": 69.2, "human": 73.9}

Distance = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (B,3,H,W) x2 -> (B,)


@dataclass(frozen=True)
class BappsScore:
    """The score of one BAPPS folder: 2AFC agreement or JND mAP, both in [0, 1]."""

    name: str
    mode: str
    count: int
    score: float
    human: float | None = None  # 2AFC only: mean p² + (1 − p)²


def read_image(path: str | Path) -> torch.Tensor:
    """One image file as (3, H, W) float32 in [-1, 1] (gray repeated, alpha over white)."""
    path = Path(path)
    try:
        with Image.open(path) as img:
            img.load()
            pixels = np.asarray(convert_mode(ImageOps.exif_transpose(img), "RGB"), dtype=np.uint8)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise DifflabError(
            f"{path} cannot be read as an image ({e}); replace it with a valid image file."
        ) from None
    return images_from_uint8(pixels[None])[0]


def stack_images(paths: Sequence[Path]) -> torch.Tensor:
    """Files of one size as a (N, 3, H, W) batch in [-1, 1]."""
    images = [read_image(p) for p in paths]
    first = images[0].shape
    for path, image in zip(paths, images, strict=True):
        if image.shape != first:
            raise DifflabError(
                f"{path} is {image.shape[2]}×{image.shape[1]} but {paths[0]} is "
                f"{first[2]}×{first[1]}; images compared in one batch must share a size."
            )
    return torch.stack(images)


def _is_layout(folder: Path, mode: str) -> bool:
    image_dirs, judge_dir = LAYOUTS[mode]
    return all((folder / d).is_dir() for d in (*image_dirs, judge_dir))


def find_bapps_sets(root: str | Path, mode: str) -> list[Path]:
    """``root`` itself when it has the ``mode`` layout, else every sub-folder that has it."""
    if mode not in MODES:
        raise DifflabError(f"mode {mode!r} is unknown; use 2afc or jnd.")
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DifflabError(f"{root} is not a folder; pass --root with a BAPPS {mode} folder.")
    if _is_layout(root, mode):
        return [root]
    found = sorted(p for p in root.rglob("*") if p.is_dir() and _is_layout(p, mode))
    if not found:
        image_dirs, judge_dir = LAYOUTS[mode]
        raise DifflabError(
            f"{root} holds no BAPPS {mode} folder (one with {'/, '.join(image_dirs)}/ and "
            f"{judge_dir}/ sub-folders); point --root at the data set, e.g. dataset/{mode}/val."
        )
    return found


def _stems(folder: Path, extensions: tuple[str, ...]) -> dict[str, Path]:
    return {
        p.stem: p
        for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in extensions
    }


def index_bapps_set(folder: Path, mode: str) -> tuple[list[list[Path]], np.ndarray]:
    """The image files per folder (same order) and the judgements ``(N,)`` of one set."""
    image_dirs, judge_dir = LAYOUTS[mode]
    judgements = _stems(folder / judge_dir, (".npy",))
    if not judgements:
        raise DifflabError(f"{folder / judge_dir} holds no .npy judgement files.")
    names = sorted(judgements)
    columns = []
    for sub in image_dirs:
        files = _stems(folder / sub, IMAGE_EXTENSIONS)
        missing = [n for n in names if n not in files]
        if missing:
            raise DifflabError(
                f"{folder / sub} lacks {len(missing)} image(s) that {judge_dir}/ has, e.g. "
                f"{missing[0]}; every judgement needs its {', '.join(image_dirs)} images."
            )
        columns.append([files[n] for n in names])
    values = np.empty(len(names), np.float64)
    for i, name in enumerate(names):
        path = judgements[name]
        try:
            value = np.load(path, allow_pickle=False)
            values[i] = float(np.asarray(value, np.float64).reshape(-1)[0])
        except (OSError, ValueError, IndexError) as e:
            raise DifflabError(f"{path} cannot be read as a judgement ({e}).") from None
        if not 0.0 <= values[i] <= 1.0:
            raise DifflabError(f"{path} holds {values[i]}, but judgements are fractions in [0, 1].")
    return columns, values


def two_afc_score(d0: np.ndarray, d1: np.ndarray, judge: np.ndarray) -> float:
    """Mean agreement with humans: ``p`` when ``d1 < d0``, ``1 − p`` when ``d0 < d1``, else ½."""
    scores = (d1 < d0) * judge + (d0 < d1) * (1.0 - judge) + (d0 == d1) * 0.5
    return float(np.mean(scores))


def jnd_average_precision(distances: np.ndarray, same: np.ndarray) -> float:
    """Average precision of ranking pairs by increasing distance, with ``same`` as relevance.

    Precision/recall from cumulative sums of ``same`` (true positives) and ``1 − same`` (false
    positives); AP is the area under the monotone precision envelope (VOC, all points).
    """
    if same.sum() <= 0:
        raise DifflabError("no pair in this JND set was judged the same; AP is undefined.")
    order = np.argsort(distances, kind="stable")
    relevance = same[order]
    true_pos = np.cumsum(relevance)
    false_pos = np.cumsum(1.0 - relevance)
    precision = true_pos / np.maximum(true_pos + false_pos, np.finfo(np.float64).tiny)
    recall = true_pos / same.sum()
    recall = np.concatenate([[0.0], recall, [1.0]])
    precision = np.concatenate([[0.0], precision, [0.0]])
    precision = np.maximum.accumulate(precision[::-1])[::-1]  # envelope
    steps = np.nonzero(recall[1:] != recall[:-1])[0]
    return float(np.sum((recall[steps + 1] - recall[steps]) * precision[steps + 1]))


@torch.no_grad()
def _distances(
    distance: Distance, first: list[Path], second: list[Path], batch_size: int, device: str
) -> np.ndarray:
    out = []
    for start in range(0, len(first), batch_size):
        x0 = stack_images(first[start : start + batch_size]).to(device)
        x1 = stack_images(second[start : start + batch_size]).to(device)
        out.append(distance(x0, x1).float().cpu().numpy().reshape(-1))
    return np.concatenate(out)


def score_bapps_set(
    distance: Distance,
    folder: str | Path,
    mode: str,
    *,
    batch_size: int = 50,
    device: str = "cpu",
    name: str | None = None,
) -> BappsScore:
    """Score ``distance`` on one BAPPS folder (see the module docstring for the scores)."""
    folder = Path(folder)
    if batch_size < 1:
        raise DifflabError(f"batch size must be at least 1, got {batch_size}.")
    columns, judgements = index_bapps_set(folder, mode)
    label = name or folder.name
    if mode == "2afc":
        ref, p0, p1 = columns
        d0 = _distances(distance, ref, p0, batch_size, device)
        d1 = _distances(distance, ref, p1, batch_size, device)
        human = float(np.mean(judgements**2 + (1.0 - judgements) ** 2))
        return BappsScore(label, mode, len(judgements), two_afc_score(d0, d1, judgements), human)
    p0, p1 = columns
    d = _distances(distance, p0, p1, batch_size, device)
    return BappsScore(label, mode, len(judgements), jnd_average_precision(d, judgements))


def evaluate_bapps(
    distance: Distance,
    root: str | Path,
    mode: str,
    *,
    batch_size: int = 50,
    device: str = "cpu",
) -> list[BappsScore]:
    """Score every BAPPS ``mode`` folder under ``root`` (or ``root`` itself)."""
    root = Path(root).expanduser()
    sets = find_bapps_sets(root, mode)
    return [
        score_bapps_set(
            distance,
            folder,
            mode,
            batch_size=batch_size,
            device=device,
            name=folder.relative_to(root).as_posix() if folder != root else folder.name,
        )
        for folder in sets
    ]
