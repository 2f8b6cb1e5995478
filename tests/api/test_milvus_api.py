"""The API over a Milvus index (Milvus Lite here): the same answers as over the FAISS index the
same model was built with, and catalog writes through it (`pytest -k milvus`)."""

from __future__ import annotations

from fastapi.testclient import TestClient

from api.__main__ import build_parser, build_settings
from api.app import create_app
from api.settings import Settings
from index.build import build_product_index
from index.store import ProductIndex


def _ids(client: TestClient, **data: str) -> list[str]:
    r = client.post("/v1/search", data=data)
    assert r.status_code == 200, r.text
    return [h["id"] for h in r.json()["hits"]]


def test_api_over_milvus_answers_as_over_faiss(
    model_dir, milvus_lite_db, catalog_products, api_key, auth, make_image
):
    uri = f"milvus-lite://{milvus_lite_db}?collection=served"
    with ProductIndex.open(model_dir / "index") as faiss_ix:
        ids = [p.id for p in catalog_products]
        records = [faiss_ix.get(i) for i in ids]
        xb = [faiss_ix.vector(i) for i in ids]
        fingerprint = faiss_ix.manifest["bundle_fingerprint"]
    build_product_index(uri, records, xb, fingerprint)
    faiss_app = TestClient(create_app(Settings(model_dir=model_dir)))
    milvus_app = TestClient(
        create_app(Settings(model_dir=model_dir, index_uri=uri, api_key=api_key))
    )
    with faiss_app as fc, milvus_app as mc:
        health = mc.get("/healthz").json()["index"]
        assert {k: health[k] for k in ("index_uri", "size", "prefix_dims")} == {
            "index_uri": uri, "size": len(ids), "prefix_dims": None}  # no prefix index there
        assert health["factory"]
        top = catalog_products[0].category[0]
        for p in catalog_products[:4]:
            for query in (
                {"title": p.title},
                {"title": p.title, "category": top},
                {"product_id": p.id},
            ):
                assert _ids(mc, k="10", **query) == _ids(fc, k="10", **query)
        data = {"title": "green canvas sneaker", "category": "Footwear > Sneakers"}
        photo = make_image((30, 160, 60))
        r = mc.put("/v1/products/new-1", data=data, files={"image": ("s.png", photo)}, headers=auth)
        assert r.status_code == 200, r.text
        assert mc.get("/v1/products/new-1").json()["title"] == "green canvas sneaker"
        query = {"title": "green canvas sneaker", "k": "1", "category": "Footwear"}
        r = mc.post("/v1/search", data=query, files={"image": ("q.png", photo)})
        assert [h["id"] for h in r.json()["hits"]] == ["new-1"]  # its own photo and title
        assert mc.delete("/v1/products/new-1", headers=auth).status_code == 200
        assert mc.get("/v1/products/new-1").status_code == 404
        assert mc.get("/healthz").json()["index"]["size"] == len(ids)


def test_index_flag_takes_a_milvus_uri(tmp_path):
    milvus = build_settings(
        build_parser().parse_args(["--model", str(tmp_path), "--index", "milvus://h:1/c"])
    )
    assert milvus.index_uri == "milvus://h:1/c" and milvus.index_dir is None
    assert milvus.index_target == "milvus://h:1/c" and milvus.uploads_dir == tmp_path / "uploads"
    plain = build_settings(
        build_parser().parse_args(["--bundle", str(tmp_path / "b"), "--index", str(tmp_path)])
    )
    assert plain.index_uri is None and plain.index_target == tmp_path
