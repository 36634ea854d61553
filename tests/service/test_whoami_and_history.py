"""GET /api/v1/whoami (the page learns its key's role) and GET /api/v1/searches (past searches)."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from .conftest import Keys, upload
from .helpers import jpeg, sketch_png


@pytest.mark.parametrize("role", ["admin", "operator", "investigator"])
def test_whoami_names_the_key_and_its_role(client: TestClient, keys: Keys, role: str) -> None:
    r = client.get("/api/v1/whoami", headers=getattr(keys, role))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["role"] == role
    assert body["name"] == role
    assert getattr(keys, role)["X-API-Key"].startswith(body["key_prefix"])
    assert set(body) == {"id", "name", "role", "key_prefix"}  # never the key or its hash


@pytest.mark.parametrize(
    ("headers", "detail"),
    [
        ({}, "missing API key"),
        ({"X-API-Key": "skr_wrong"}, "unknown API key"),
        ("revoked", "revoked"),
    ],
)
def test_whoami_refuses_a_bad_key(
    client: TestClient, keys: Keys, headers: Any, detail: str
) -> None:
    r = client.get("/api/v1/whoami", headers=keys.revoked if headers == "revoked" else headers)
    assert r.status_code == 401
    assert detail in r.json()["detail"]


def _search(client: TestClient, headers: dict[str, str], seed: int) -> str:
    r = client.post(
        "/api/v1/search",
        files={"sketch": ("s.png", sketch_png(seed), "image/png")},
        data={"top_k": "3", "camera_id": "c1"},
        headers=headers,
    )
    assert r.status_code == 200, r.text
    return str(r.json()["search_id"])


def test_searches_list_shows_own_searches_newest_first(client: TestClient, keys: Keys) -> None:
    for seed in range(4):
        assert upload(client, keys.operator, jpeg(seed), camera_id="c1").status_code == 201
    mine = [_search(client, keys.investigator, seed) for seed in range(3)]
    theirs = _search(client, keys.investigator2, 9)

    page = client.get("/api/v1/searches", headers=keys.investigator).json()
    assert [item["id"] for item in page["items"]] == mine[::-1]
    assert page["total"] == 3 and page["next_offset"] is None
    first = page["items"][0]
    assert first["result_count"] == 3
    assert first["parameters"]["camera_id"] == ["c1"]
    assert first["url"] == f"/api/v1/searches/{mine[-1]}"
    assert client.get(first["url"], headers=keys.investigator).status_code == 200

    everyone = client.get("/api/v1/searches", headers=keys.admin).json()
    assert {item["id"] for item in everyone["items"]} == {*mine, theirs}

    paged = client.get("/api/v1/searches?limit=2", headers=keys.investigator).json()
    assert [i["id"] for i in paged["items"]] == mine[:0:-1] and paged["next_offset"] == 2
    rest = client.get("/api/v1/searches?limit=2&offset=2", headers=keys.investigator).json()
    assert [i["id"] for i in rest["items"]] == [mine[0]] and rest["next_offset"] is None


@pytest.mark.parametrize(
    ("query", "status"),
    [("limit=0", 422), ("limit=201", 422), ("offset=-1", 422), ("limit=2&limit=3", 422)],
)
def test_searches_list_refuses_bad_paging(
    client: TestClient, keys: Keys, query: str, status: int
) -> None:
    assert client.get(f"/api/v1/searches?{query}", headers=keys.investigator).status_code == status


def test_operators_may_not_list_searches(client: TestClient, keys: Keys) -> None:
    r = client.get("/api/v1/searches", headers=keys.operator)
    assert r.status_code == 403
