"""Cases an official SDK cannot produce (malformed bodies, probes), over plain HTTP."""

from __future__ import annotations

import httpx
import pytest


@pytest.fixture(scope="module")
def http(gateway_url: str):
    with httpx.Client(base_url=gateway_url, timeout=30.0) as client:
        yield client


@pytest.mark.parametrize("path", ["/healthz", "/readyz"])
def test_probes(http: httpx.Client, path: str) -> None:
    assert http.get(path).status_code == 200


def test_openai_malformed_json_is_400(http: httpx.Client) -> None:
    r = http.post("/v1/chat/completions", content=b'{"model": "demo", "messages": [', headers={"content-type": "application/json"})
    assert r.status_code == 400
    err = r.json()["error"]
    assert set(err) >= {"message", "type", "param", "code"}
    assert err["type"] == "invalid_request_error"


def test_openai_missing_model_is_400(http: httpx.Client) -> None:
    r = http.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 400
    assert "error" in r.json()


def test_anthropic_malformed_json_is_400(http: httpx.Client) -> None:
    r = http.post(
        "/v1/messages",
        content=b"not json at all",
        headers={"content-type": "application/json", "anthropic-version": "2023-06-01"},
    )
    assert r.status_code == 400
    body = r.json()
    assert body["type"] == "error"
    assert body["error"]["type"] == "invalid_request_error"
    assert body["error"]["message"]


def test_anthropic_missing_model_is_400(http: httpx.Client) -> None:
    r = http.post(
        "/v1/messages",
        json={"max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]},
        headers={"anthropic-version": "2023-06-01"},
    )
    assert r.status_code == 400
    assert r.json()["type"] == "error"


def test_models_list_dialects(http: httpx.Client) -> None:
    oai = http.get("/v1/models").json()
    assert oai["object"] == "list"
    assert {"demo", "demo-alias"} <= {m["id"] for m in oai["data"]}
    ant = http.get("/v1/models", headers={"anthropic-version": "2023-06-01"}).json()
    assert ant["has_more"] is False
    ids = [m["id"] for m in ant["data"]]
    assert {"demo", "demo-alias"} <= set(ids)
    assert all(m["type"] == "model" and m["display_name"] and m["created_at"] for m in ant["data"])
    assert ant["first_id"] == ids[0] and ant["last_id"] == ids[-1]
