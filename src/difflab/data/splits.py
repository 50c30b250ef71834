"""The fixed train/test split shared by the datasets that ship without one (digits, folders)."""

from __future__ import annotations

import torch

SPLITS = ("train", "test")
SPLIT_SEED = 0


def split_indices(num_items: int, split: str, test_denominator: int) -> torch.Tensor:
    """Indices of one split under the fixed permutation of ``range(num_items)``.

    The permutation is ``torch.randperm(num_items)`` drawn from
    ``torch.Generator().manual_seed(SPLIT_SEED)``. Its last
    ``max(1, num_items // test_denominator)`` entries are ``test``, the rest ``train``, so the
    splits are disjoint and cover every item; with a single item both splits hold it.

    Args:
        num_items: the size of the whole dataset.
        split: ``"train"`` or ``"test"``.
        test_denominator: 5 keeps 20 % for test, 10 keeps 10 %.

    Returns:
        ``(M,)`` int64 indices, in permutation order (so a prefix mixes the classes).
    """
    perm = torch.randperm(num_items, generator=torch.Generator().manual_seed(SPLIT_SEED))
    if num_items < 2:
        return perm
    num_test = max(1, num_items // test_denominator)
    return perm[num_items - num_test :] if split == "test" else perm[: num_items - num_test]
