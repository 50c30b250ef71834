"""The BAPPS harness on small generated folders (the real data set is not available offline)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from difflab.errors import DifflabError
from difflab.metrics import LPIPS
from difflab.metrics.bapps import (
    evaluate_bapps,
    find_bapps_sets,
    jnd_average_precision,
    score_bapps_set,
    two_afc_score,
)
from tests.metrics.test_lpips import (
    gaussian_blur,
    photo_batch,
)


def _save(image: torch.Tensor, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = ((image.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).numpy()
    Image.fromarray(pixels).save(path)


def _patches() -> torch.Tensor:
    """Four 64×64 patches: the three photos and one mirror image."""
    photos = photo_batch(64)
    return torch.cat([photos, photos[:1].flip(-1)])


def write_2afc_set(folder: Path, judge_when_right: float = 0.8) -> Path:
    """ref/p0/p1/judge where one distortion is mild (blur 0.7) and the other strong (blur 3).

    The mild one alternates between p0 and p1; ``judge`` is the fraction of humans choosing p1:
    ``judge_when_right`` of them pick the mild one.
    """
    for i, ref in enumerate(_patches()):
        mild, strong = gaussian_blur(ref[None], 0.7)[0], gaussian_blur(ref[None], 3.0)[0]
        mild_is_p1 = i % 2 == 1
        _save(ref, folder / "ref" / f"{i:06d}.png")
        _save(strong if mild_is_p1 else mild, folder / "p0" / f"{i:06d}.png")
        _save(mild if mild_is_p1 else strong, folder / "p1" / f"{i:06d}.png")
        p1_votes = judge_when_right if mild_is_p1 else 1 - judge_when_right
        (folder / "judge").mkdir(exist_ok=True)
        np.save(folder / "judge" / f"{i:06d}.npy", np.array([p1_votes]))
    return folder


def write_jnd_set(folder: Path) -> Path:
    """p0/p1/same: identical-looking pairs (tiny blur) judged same, strong blurs judged different."""
    for i, ref in enumerate(_patches()):
        same = i % 2 == 0
        other = gaussian_blur(ref[None], 0.3 if same else 3.0)[0]
        _save(ref, folder / "p0" / f"{i:06d}.png")
        _save(other, folder / "p1" / f"{i:06d}.png")
        (folder / "same").mkdir(exist_ok=True)
        np.save(folder / "same" / f"{i:06d}.npy", np.array([1.0 if same else 0.0]))
    return folder


@pytest.fixture(scope="module")
def alex() -> LPIPS:
    return LPIPS("alex")


def test_two_afc_score_by_hand():
    d0 = np.array([0.1, 0.5, 0.3, 0.2])
    d1 = np.array([0.2, 0.4, 0.3, 0.9])
    judge = np.array([0.2, 0.6, 1.0, 1.0])  # fraction choosing p1
    # prefers p0 -> 1 - p; prefers p1 -> p; tie -> 1/2
    assert two_afc_score(d0, d1, judge) == pytest.approx((0.8 + 0.6 + 0.5 + 0.0) / 4)


def test_jnd_average_precision_by_hand():
    same = np.array([1.0, 0.0, 1.0, 0.0])
    assert jnd_average_precision(np.array([0.1, 0.9, 0.2, 0.8]), same) == pytest.approx(1.0)
    # ranking: same, different, same -> precisions 1, 1/2, 2/3; AP = 1/2 * 1 + 1/2 * 2/3
    assert jnd_average_precision(np.array([0.1, 0.2, 0.3, 0.9]), same) == pytest.approx(5 / 6)
    # relevance is graded, as in the reference: a pair 2/3 of judges called the same counts 1/3 false
    graded = np.array([2 / 3, 0.0])
    assert jnd_average_precision(np.array([0.1, 0.9]), graded) == pytest.approx(2 / 3)
    with pytest.raises(DifflabError, match="undefined"):
        jnd_average_precision(np.array([0.1, 0.2]), np.zeros(2))


def test_2afc_harness_scores_agreement_with_the_votes(tmp_path, alex):
    folder = write_2afc_set(tmp_path / "val" / "blur")
    result = score_bapps_set(alex, folder, "2afc", batch_size=4)
    assert result.count == 4
    assert result.score == pytest.approx(0.8)  # always sides with the 80 % majority
    assert result.human == pytest.approx(0.8**2 + 0.2**2)


def test_jnd_harness_ranks_same_pairs_first(tmp_path, alex):
    folder = write_jnd_set(tmp_path / "jnd" / "val" / "blur")
    result = score_bapps_set(alex, folder, "jnd", batch_size=4)
    assert result.count == 4 and result.score == pytest.approx(1.0) and result.human is None


def test_a_parent_folder_scores_every_set(tmp_path, alex):
    write_2afc_set(tmp_path / "val" / "a", judge_when_right=1.0)
    write_2afc_set(tmp_path / "val" / "b", judge_when_right=0.6)
    assert [p.name for p in find_bapps_sets(tmp_path, "2afc")] == ["a", "b"]
    results = evaluate_bapps(alex, tmp_path / "val", "2afc", batch_size=4)
    assert [(r.name, round(r.score, 6)) for r in results] == [("a", 1.0), ("b", 0.6)]


def test_layout_errors(tmp_path):
    with pytest.raises(DifflabError, match="holds no BAPPS 2afc folder"):
        find_bapps_sets(tmp_path, "2afc")
    folder = write_2afc_set(tmp_path / "set")
    (folder / "p1" / "000003.png").unlink()
    with pytest.raises(DifflabError, match=r"lacks 1 image\(s\).*000003"):
        score_bapps_set(lambda a, b: torch.zeros(len(a)), folder, "2afc")
    np.save(folder / "judge" / "000003.npy", np.array([1.5]))
    _save(torch.zeros(3, 64, 64), folder / "p1" / "000003.png")
    with pytest.raises(DifflabError, match="fractions in"):
        score_bapps_set(lambda a, b: torch.zeros(len(a)), folder, "2afc")
