"""scikit-learn's 8×8 handwritten digits (1,797 images, 10 classes), shipped inside its wheel.

scikit-learn has no train/test split for this set, so we fix one: a permutation drawn from
``torch.Generator().manual_seed(0)``; its first 80 % is ``train`` (1,438 images) and the last
20 % (``N // 5`` = 359 images) is ``test``. Items keep the permutation's order inside each split.
"""

from __future__ import annotations

import torch

from difflab.data.splits import split_indices
from difflab.errors import DifflabError

DIGITS_CLASS_NAMES: tuple[str, ...] = tuple(str(digit) for digit in range(10))


def load_digits_split(split: str, limit: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One split of the scikit-learn digits.

    Args:
        split: ``"train"`` (first 80 % of the permutation) or ``"test"`` (last 20 %).
        limit: keep only the first ``limit`` items of the split.

    Returns:
        ``images`` ``(N, 1, 8, 8)`` float32 in [-1, 1] (scikit-learn's 0..16 mapped by
        ``x / 8 - 1``) and ``labels`` ``(N,)`` int64 in 0..9.
    """
    try:
        from sklearn.datasets import load_digits  # imported here: it takes about a second
    except ImportError:
        raise DifflabError(
            "digits: scikit-learn, which ships this dataset, is not installed; run `make install` "
            "or `pip install scikit-learn`."
        ) from None
    bunch = load_digits()
    images = torch.as_tensor(bunch.images, dtype=torch.float32)  # (1797, 8, 8), values 0..16
    labels = torch.as_tensor(bunch.target, dtype=torch.int64)  # (1797,)
    index = split_indices(len(images), split, test_denominator=5)
    if limit is not None:
        index = index[:limit]
    images = (images[index] / 8.0 - 1.0).unsqueeze(1).contiguous()  # (N, 1, 8, 8)
    return images, labels[index].contiguous()
