"""The query-embedding LRU cache: bounded, exact keys, copies out; repeats skip the model."""

from __future__ import annotations

import numpy as np
import pytest

from api.embed_cache import EmbedCache, EmbedCacheConfig


def test_lru_is_bounded_and_evicts_the_least_recent() -> None:
    cache = EmbedCache(EmbedCacheConfig(max_entries=2))
    a, b, c = (cache.key(t, None) for t in ("a", "b", "c"))
    cache.put(a, np.ones(4, np.float32))
    cache.put(b, np.full(4, 2, np.float32))
    assert cache.get(a) is not None  # a is now the most recent
    cache.put(c, np.full(4, 3, np.float32))
    assert cache.get(b) is None and len(cache) == 2
    assert cache.get(c)[0] == 3 and (cache.hits, cache.misses) == (2, 1)


def test_keys_are_exact_and_hits_are_copies() -> None:
    cache = EmbedCache()
    image = bytes(range(256)) * 4
    assert cache.key("Red shirt", image) == cache.key("Red shirt", bytes(bytearray(image)))
    assert cache.key("Red shirt", None) != cache.key("red shirt", None)
    assert cache.key("Red shirt", None) != cache.key("Red shirt", image)
    assert cache.key(None, image) != cache.key(None, image[:-1] + b"\x00")
    vec = np.arange(4, dtype=np.float32)
    cache.put(cache.key("x", None), vec)
    vec[0] = 99  # the caller's array is not the cached one
    got = cache.get(cache.key("x", None))
    got[1] = 99  # nor is what a hit returns
    assert cache.get(cache.key("x", None)).tolist() == [0, 1, 2, 3]


def test_zero_entries_turns_it_off_and_negative_is_refused() -> None:
    cache = EmbedCache(EmbedCacheConfig(max_entries=0))
    cache.put(cache.key("x", None), np.ones(2, np.float32))
    assert cache.get(cache.key("x", None)) is None
    with pytest.raises(ValueError):
        EmbedCacheConfig(max_entries=-1)


def test_a_repeated_title_search_skips_the_model(client, catalog_products) -> None:
    services = client.app.state.services
    calls = []
    submit = services.batcher.submit
    services.batcher.submit = lambda **kw: calls.append(kw) or submit(**kw)
    title = catalog_products[0].title
    first = client.post("/v1/search", data={"title": title, "k": "3"})
    second = client.post("/v1/search", data={"title": title, "k": "3"})
    assert first.status_code == second.status_code == 200
    assert first.json()["hits"] == second.json()["hits"]
    assert len(calls) == 1 and services.embed_cache.hits == 1
    client.post("/v1/search", data={"title": title.upper(), "k": "3"})  # another exact title
    assert len(calls) == 2


def test_a_repeated_photo_search_skips_the_model(client, make_image) -> None:
    services = client.app.state.services
    calls = []
    submit = services.batcher.submit
    services.batcher.submit = lambda **kw: calls.append(kw) or submit(**kw)
    photo = make_image(color=(30, 120, 200), fmt="JPEG")
    answers = [client.post("/v1/search", data={"k": "3"}, files={"image": ("q.jpg", photo)})
               for _ in range(2)]
    assert [a.status_code for a in answers] == [200, 200]
    assert answers[0].json()["hits"] == answers[1].json()["hits"]
    assert len(calls) == 1 and services.embed_cache.hits == 1
    other = make_image(color=(30, 120, 201), fmt="JPEG")  # other bytes: the model runs again
    client.post("/v1/search", data={"k": "3"}, files={"image": ("q.jpg", other)})
    assert len(calls) == 2
