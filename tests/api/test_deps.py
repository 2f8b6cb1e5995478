"""Write auth: Bearer key required, no key configured = no writes; reads stay open."""

from __future__ import annotations


def _put(client, headers=None):
    data = {"title": "a title", "category": "A > B"}
    return client.put("/v1/products/auth-1", data=data, headers=headers or {})


def test_missing_and_wrong_keys_are_refused(client, auth, api_key):
    for headers, code in [
        ({}, "missing_key"),
        ({"Authorization": "Bearer wrong-key"}, "wrong_key"),
        ({"Authorization": f"Bearer {api_key}x"}, "wrong_key"),
        ({"Authorization": f"Basic {api_key}"}, "missing_key"),
    ]:
        r = _put(client, headers)
        assert r.status_code == 401, r.text
        assert r.json()["error"] == code
        assert r.headers["www-authenticate"] == "Bearer"
        assert client.delete("/v1/products/auth-1", headers=headers).status_code == 401
    assert client.get("/v1/products/auth-1").status_code == 404
    assert _put(client, auth).status_code == 200


def test_no_key_configured_refuses_every_write(make_client):
    client = make_client(api_key=None)
    for headers in ({}, {"Authorization": "Bearer anything"}):
        r = _put(client, headers)
        assert r.status_code == 403
        assert r.json()["error"] == "writes_disabled"
    assert client.post("/v1/search", data={"title": "shoe"}).status_code == 200


def test_key_from_environment(monkeypatch):
    monkeypatch.setenv("HUSE_API_KEY", "env-key")
    from api.settings import Settings

    assert Settings(model_dir="m").api_key.get_secret_value() == "env-key"
    monkeypatch.setenv("HUSE_API_KEY", "")
    assert Settings(model_dir="m").api_key is None
