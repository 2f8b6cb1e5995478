"""Fixtures for the index tests; the data helpers live in index_testdata."""

from __future__ import annotations

import numpy as np
import pytest
from index_testdata import make_vectors


@pytest.fixture
def xb() -> np.ndarray:
    return make_vectors(600)


@pytest.fixture
def xq() -> np.ndarray:
    return make_vectors(25, seed=1)
