"""TF-IDF of titles for the text tower, stored as plain JSON (vocabulary + idf), never pickled."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from embedder.errors import BundleError
from huse_common.vectors import l2_normalize


@dataclass
class TfidfText:
    """TF-IDF of titles, stored as plain vocabulary + idf (sklearn's smooth idf, sublinear tf,
    L2-normalised rows), so a bundle never unpickles code."""

    vocabulary: dict[str, int]
    idf: np.ndarray
    ngram_range: tuple[int, int] = (1, 2)
    _vectorizer: Any = field(default=None, repr=False, compare=False)

    @classmethod
    def fit(cls, titles: Sequence[str], max_features: int,
            ngram_range: tuple[int, int] = (1, 2)) -> TfidfText:
        from sklearn.feature_extraction.text import TfidfVectorizer

        vec = TfidfVectorizer(max_features=max_features, ngram_range=ngram_range,
                              sublinear_tf=True, dtype=np.float32)
        vec.fit(list(titles))
        vocab = {str(t): int(i) for t, i in vec.vocabulary_.items()}
        return cls(vocab, np.asarray(vec.idf_, dtype=np.float32), tuple(ngram_range))

    @property
    def dim(self) -> int:
        return len(self.vocabulary)

    def transform(self, titles: Sequence[str]) -> np.ndarray:
        """(n, dim) float32: (1 + log tf) * idf, rows L2-normalised (TfidfVectorizer's formula)."""
        if self._vectorizer is None:
            from sklearn.feature_extraction.text import CountVectorizer

            self._vectorizer = CountVectorizer(vocabulary=self.vocabulary,
                                               ngram_range=self.ngram_range, dtype=np.float32)
        counts = self._vectorizer.transform(list(titles)).astype(np.float32)
        counts.data = 1.0 + np.log(counts.data)
        dense = counts.multiply(self.idf[None, :]).toarray().astype(np.float32)
        return l2_normalize(dense).astype(np.float32)

    def to_dict(self) -> dict:
        return {"vocabulary": self.vocabulary, "idf": self.idf.tolist(),
                "ngram_range": list(self.ngram_range), "sublinear_tf": True, "norm": "l2"}

    @classmethod
    def from_dict(cls, d: dict) -> TfidfText:
        vocab, idf = d["vocabulary"], np.asarray(d["idf"], dtype=np.float32)
        if len(vocab) != len(idf) or sorted(vocab.values()) != list(range(len(idf))):
            raise BundleError(f"tfidf.json: vocabulary ({len(vocab)}) and idf ({len(idf)}) "
                              "do not match")
        return cls(vocab, idf, tuple(d["ngram_range"]))
