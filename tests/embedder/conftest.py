"""embedder test fixtures."""

from __future__ import annotations

import pytest


@pytest.fixture()
def one_thread():
    """Packaged models run single-threaded (the suite shares 2 cores); restored afterwards."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
