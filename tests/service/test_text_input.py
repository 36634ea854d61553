"""Text the database cannot store (a NUL character, a lone surrogate), nesting that would
exhaust a parser, and booleans the OpenAPI document does not allow: a 4xx naming the field on
SQLite and PostgreSQL alike, never a 500, and nothing left behind."""

from __future__ import annotations

import json
from typing import Any

import jsonschema_rs  # schemathesis' validator
import pytest
from fastapi.testclient import TestClient

from app.services.gallery import MAX_METADATA_DEPTH

from .conftest import Keys, snapshot, upload
from .helpers import jpeg, sketch_png

NUL = "a\x00b"
# JSON text of a lone surrogate: json.loads makes it the str "a\ud800b", which no database
# (and no UTF-8 answer) can carry. A form field cannot hold one (its bytes are decoded).
SURROGATE_JSON = '"a\\ud800b"'


def _key_count(client: TestClient, keys: Keys) -> int:
    return len(client.get("/api/v1/apikeys", headers=keys.admin).json())


def _create_key(client: TestClient, keys: Keys, name_json: str) -> Any:
    body = f'{{"name": {name_json}, "role": "operator"}}'
    return client.post(
        "/api/v1/apikeys",
        content=body.encode(),
        headers={**keys.admin, "content-type": "application/json"},
    )


@pytest.mark.parametrize(
    ("name_json", "needle"),
    [(json.dumps(NUL), "NUL character"), (SURROGATE_JSON, "lone surrogate (U+D800)")],
)
def test_a_key_name_the_database_cannot_store_is_400(
    client: TestClient, keys: Keys, name_json: str, needle: str
) -> None:
    before = _key_count(client, keys)
    r = _create_key(client, keys, name_json)
    assert r.status_code == 400, r.text
    assert r.json()["detail"].startswith("name ") and needle in r.json()["detail"]
    assert _key_count(client, keys) == before
    assert _create_key(client, keys, '"a b"').status_code == 201  # the same without it


def test_a_camera_filter_with_a_nul_is_400(client: TestClient, keys: Keys) -> None:
    assert upload(client, keys.operator, jpeg(1), camera_id="c1").status_code == 201
    before = snapshot(client)
    listing = client.get("/api/v1/gallery", params={"camera_id": ["c1", NUL]}, headers=keys.admin)
    assert listing.status_code == 400, listing.text
    assert listing.json()["detail"].startswith("camera_id contains a NUL character")
    search = client.post(
        "/api/v1/search",
        files={"sketch": ("s.png", sketch_png(1), "image/png")},
        data={"camera_id": ["c1", NUL]},
        headers=keys.investigator,
    )
    assert search.status_code == 400, search.text
    assert search.json()["detail"].startswith("camera_id contains a NUL character")
    assert snapshot(client) == before  # no search recorded
    ok = client.get("/api/v1/gallery", params={"camera_id": "c1"}, headers=keys.admin)
    assert ok.status_code == 200 and ok.json()["total"] == 1


def _batch(client: TestClient, keys: Keys, metadata: str, seed: int = 1) -> Any:
    return client.post(
        "/api/v1/gallery/batch",
        files=[("images", ("a.jpg", jpeg(seed), "image/jpeg"))],
        data={"metadata": metadata},
        headers=keys.operator,
    )


@pytest.mark.parametrize(
    ("metadata", "needle"),
    [
        (f'[{{"camera_id": {SURROGATE_JSON}}}]', "camera_id contains a lone surrogate"),
        (f'[{{"location": {SURROGATE_JSON}}}]', "location contains a lone surrogate"),
        (f'[{{"external_id": {SURROGATE_JSON}}}]', "external_id contains a lone surrogate"),
        ('[{"location": "a\\u0000b"}]', "location contains control characters"),
        (f'[{{{SURROGATE_JSON}: "c1"}}]', "unknown metadata field(s) 'a\\ud800b'"),
    ],
)
def test_batch_metadata_the_database_cannot_store_fails_that_file_with_400(
    client: TestClient, keys: Keys, metadata: str, needle: str
) -> None:
    before = snapshot(client)
    r = _batch(client, keys, metadata)
    assert r.status_code == 200, r.text
    [result] = r.json()["results"]
    assert (result["status"], result["http_status"]) == ("error", 400), result
    assert needle in result["error"]
    assert snapshot(client) == before


@pytest.mark.parametrize("depth", [MAX_METADATA_DEPTH + 1, 1000, 100_000])
def test_deeply_nested_batch_metadata_is_400(client: TestClient, keys: Keys, depth: int) -> None:
    before = snapshot(client)
    r = _batch(client, keys, "[" * depth + "]" * depth)
    assert r.status_code == 400, r.text
    detail = r.json()["detail"]
    assert detail.startswith("metadata nests more than") and str(MAX_METADATA_DEPTH) in detail
    assert snapshot(client) == before


def test_metadata_at_the_nesting_limit_is_read(client: TestClient, keys: Keys) -> None:
    """At the limit the JSON is parsed: the one entry is a list, not an object (a 400 for that
    file), and brackets inside strings do not count as nesting."""
    inner = "[" * (MAX_METADATA_DEPTH - 1) + "]" * (MAX_METADATA_DEPTH - 1)
    r = _batch(client, keys, f"[{inner}]")
    assert r.status_code == 200, r.text
    assert "must be a JSON object, got list" in r.json()["results"][0]["error"]
    brackets = json.dumps([{"location": "[" * 100 + "{" * 100}])
    stored = _batch(client, keys, brackets, seed=2)
    assert stored.status_code == 200, stored.text
    assert stored.json()["results"][0]["item"]["location"] == "[" * 100 + "{" * 100


@pytest.mark.parametrize("value", ["0", "1", "yes", "no", "on", "off", "t", "f", "2"])
def test_boolean_form_fields_take_only_true_or_false(
    client: TestClient, keys: Keys, value: str
) -> None:
    before = snapshot(client)
    batch = client.post(
        "/api/v1/gallery/batch",
        files=[("images", ("0001_c3s1_000151_01.jpg", jpeg(1), "image/jpeg"))],
        data={"camera_from_filename": value},
        headers=keys.operator,
    )
    assert batch.status_code == 422, batch.text
    assert batch.json()["errors"][0]["field"] == "camera_from_filename"
    for name in ("rerank", "translate"):
        search = client.post(
            "/api/v1/search",
            files={"sketch": ("s.png", sketch_png(1), "image/png")},
            data={name: value},
            headers=keys.investigator,
        )
        assert search.status_code == 422, search.text
        assert search.json()["errors"][0]["field"] == name
        assert "true or false" in search.json()["detail"]
    assert snapshot(client) == before


def test_true_and_false_in_any_case_are_booleans(client: TestClient, keys: Keys) -> None:
    batch = client.post(
        "/api/v1/gallery/batch",
        files=[("images", ("0001_c3s1_000151_01.jpg", jpeg(1), "image/jpeg"))],
        data={"camera_from_filename": "True"},
        headers=keys.operator,
    )
    assert batch.status_code == 200, batch.text
    assert batch.json()["results"][0]["item"]["camera_id"] == "c3"
    plain = client.post(
        "/api/v1/gallery/batch",
        files=[("images", ("0002_c4s1_000151_01.jpg", jpeg(2), "image/jpeg"))],
        data={"camera_from_filename": "false"},
        headers=keys.operator,
    )
    assert plain.json()["results"][0]["item"]["camera_id"] is None
    search = client.post(
        "/api/v1/search",
        files={"sketch": ("s.png", sketch_png(1), "image/png")},
        data={"rerank": "TRUE", "translate": "False", "k1": "2", "k2": "1"},
        headers=keys.investigator,
    )
    assert search.status_code == 200, search.text
    assert search.json()["reranked"] is True and search.json()["view"] == "sketch"


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_the_openapi_document_states_the_search_field_rules(client: TestClient) -> None:
    """A body the schema allows is not refused for contradicting itself: ``translate`` against
    ``view`` is in the schema (``not``), ``k2`` at most ``k1`` in both fields' descriptions."""
    openapi = client.get("/openapi.json").json()
    media = openapi["paths"]["/api/v1/search"]["post"]["requestBody"]["content"]
    ref = media["multipart/form-data"]["schema"]["$ref"].rsplit("/", 1)[-1]
    body = openapi["components"]["schemas"][ref]
    valid = jsonschema_rs.validator_for(body).is_valid
    base = {"sketch": ["x"]}
    for translate, view in ((False, "translated"), (False, "fused"), (True, "sketch")):
        assert not valid({**base, "translate": translate, "view": view}), (translate, view)
    for case in (
        {"translate": False, "view": "sketch"},
        {"translate": True, "view": "fused"},
        {"translate": False},
        {"view": "translated"},
    ):
        assert valid({**base, **case}), case
    props = body["properties"]
    assert "`k2` must not be larger" in props["k1"]["description"]
    assert "at most `k1`" in props["k2"]["description"]
