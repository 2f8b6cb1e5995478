"""A small typed Python client for the HUSE search API, sync (`Client`) and async
(`AsyncClient`), on httpx.

    from huse_client import Client
    with Client("http://127.0.0.1:8000", api_key="...") as huse:
        hits = huse.search(image="shoe.jpg", title="red sneaker", k=5).hits
        huse.put("sku-1", title="red sneaker", category="Footwear > Sneakers", image=b"...")
        for product in huse.iter_products(category="footwear"):
            ...

A top-level package of its own, importing neither the server nor torch/faiss: a shop's
scripts need only httpx (and Pillow if they pass PIL images).
"""

from huse_client.client import AsyncClient, Client
from huse_client.types import (
    BulkItem,
    Classification,
    Hit,
    HuseAPIError,
    Label,
    LevelPrediction,
    Product,
    SearchResult,
)

__all__ = [
    "AsyncClient",
    "BulkItem",
    "Classification",
    "Client",
    "Hit",
    "HuseAPIError",
    "Label",
    "LevelPrediction",
    "Product",
    "SearchResult",
]
