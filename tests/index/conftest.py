"""Fixtures for the index tests; the data helpers live in index_testdata."""

from __future__ import annotations

import uuid
from pathlib import Path

import numpy as np
import pytest
from index_testdata import make_vectors


@pytest.fixture
def xb() -> np.ndarray:
    return make_vectors(600)


@pytest.fixture
def xq() -> np.ndarray:
    return make_vectors(25, seed=1)


class StoreBackend:
    """One implementation of the store contract: how to create and reopen it in a test."""

    def __init__(self, name: str, location: str | Path, factory: str) -> None:
        self.name, self.location, self.factory = name, location, factory
        self.plan = None  # FAISS only: an index.plan.IndexPlan

    def create(self, d: int, bundle_fingerprint: str):
        if self.name == "milvus":
            from index.milvus_store import MilvusProductIndex

            return MilvusProductIndex.create(
                str(self.location),
                d=d,
                bundle_fingerprint=bundle_fingerprint,
                factory=self.factory,
            )
        from index.store import ProductIndex

        return ProductIndex.create(
            self.location,
            d=d,
            bundle_fingerprint=bundle_fingerprint,
            factory=self.factory,
            plan=self.plan,
        )

    def open(self, expected_fingerprint: str | None = None):
        from index.stores import open_product_index

        return open_product_index(self.location, expected_fingerprint=expected_fingerprint)


@pytest.fixture(params=["faiss", "milvus"])
def store_backend(request: pytest.FixtureRequest, tmp_path: Path) -> StoreBackend:
    """Each store implementation in turn (`pytest -k milvus` selects Milvus Lite's runs)."""
    if request.param == "milvus":
        db = request.getfixturevalue("milvus_lite_db")
        name = f"t{uuid.uuid4().hex[:12]}"
        return StoreBackend("milvus", f"milvus-lite://{db}?collection={name}", "FLAT")
    return StoreBackend("faiss", tmp_path / "ix", "Flat")
