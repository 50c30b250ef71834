"""Suite-wide settings: one torch thread, and a private difflab cache.

The tests push tiny batches through tiny networks. For such work a second OpenMP thread buys
nothing, and on a 2-core machine shared with any other job it makes every small op wait for a busy
core (measured here: the whole suite took minutes on 2 threads and 16 s on 1).
"""

from __future__ import annotations

import pytest
import torch


def pytest_configure(config: pytest.Config) -> None:
    torch.set_num_threads(1)


@pytest.fixture(autouse=True, scope="session")
def private_cache(tmp_path_factory: pytest.TempPathFactory):
    """``$DIFFLAB_CACHE`` in the session's temporary folder: tests never touch ~/.cache/difflab."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DIFFLAB_CACHE", str(tmp_path_factory.mktemp("difflab-cache")))
        yield
