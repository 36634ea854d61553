"""HTTP details a generated client or a fuzzer relies on (each found by schemathesis):
the Allow header of a 405, 405 rather than 422 for a method a path does not have, malformed
ids, the media type of /metrics, and request schemas that say what a form can carry; and no
API answer kept in a cache."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.api.main import create_app
from app.core.config import Settings
from app.ml.bundle.store import Bundle
from app.services.blobs import CONTENT_TYPES

from .conftest import Keys
from .helpers import jpeg, sketch_png

PATHS_AND_METHODS = [
    ("/api/v1/gallery", {"GET", "POST"}),
    ("/api/v1/gallery/7", {"GET", "DELETE"}),
    ("/api/v1/apikeys", {"GET", "POST"}),
    ("/api/v1/gallery/batch", {"POST"}),
    ("/api/v1/search", {"POST"}),
]


@pytest.mark.parametrize(("path", "methods"), PATHS_AND_METHODS)
def test_405_lists_every_method_of_the_path(
    client: TestClient, keys: Keys, path: str, methods: set[str]
) -> None:
    r = client.request("PATCH", path, headers=keys.admin)
    assert r.status_code == 405, r.text
    allowed = {m.strip() for m in r.headers["allow"].split(",")}
    assert allowed - {"HEAD"} == methods
    assert r.json() == {"detail": "Method Not Allowed"}


def test_get_on_the_batch_path_is_405_not_an_item_id(client: TestClient, keys: Keys) -> None:
    r = client.get("/api/v1/gallery/batch", headers=keys.admin)
    assert r.status_code == 405, r.text
    assert r.headers["allow"] == "POST"


@pytest.mark.parametrize(
    "url",
    [
        "/api/v1/gallery/abc",
        "/api/v1/gallery/1.5/image",
        "/api/v1/searches/not-a-uuid",
        "/api/v1/searches/0/sketch",
    ],
)
def test_a_malformed_id_names_no_resource(client: TestClient, keys: Keys, url: str) -> None:
    r = client.get(url, headers=keys.admin)
    assert r.status_code == 404, r.text
    assert r.json() == {"detail": "Not Found"}


def test_metrics_declares_its_text_format(client: TestClient) -> None:
    r = client.get("/metrics")
    assert r.headers["content-type"].startswith("text/plain")
    declared = client.get("/openapi.json").json()["paths"]["/metrics"]["get"]["responses"]
    assert set(declared["200"]["content"]) == {"text/plain"}


def _body_schema(openapi: dict[str, Any], path: str) -> tuple[dict[str, Any], dict[str, Any]]:
    media = openapi["paths"][path]["post"]["requestBody"]["content"]["multipart/form-data"]
    name = media["schema"]["$ref"].rsplit("/", 1)[-1]
    return openapi["components"]["schemas"][name], media.get("encoding", {})


def test_form_fields_are_never_declared_null(client: TestClient) -> None:
    """A form has no null: a field left out is the default. Declared nullable, a client (or
    schemathesis) sends the text "null", which the server rightly refuses."""
    openapi = client.get("/openapi.json").json()
    for path in ("/api/v1/gallery", "/api/v1/gallery/batch", "/api/v1/search"):
        schema, _ = _body_schema(openapi, path)
        for name, prop in schema["properties"].items():
            assert "null" not in str(prop.get("anyOf", prop.get("type"))), (path, name, prop)
    for op in openapi["paths"]["/api/v1/gallery"]["get"]["parameters"]:
        assert "null" not in str(op["schema"]), op


def test_file_parts_declare_the_image_types_and_a_batch_needs_one(client: TestClient) -> None:
    openapi = client.get("/openapi.json").json()
    types = {t.strip() for t in ",".join(CONTENT_TYPES.values()).split(",")}
    for path, part in (
        ("/api/v1/gallery", "image"),
        ("/api/v1/gallery/batch", "images"),
        ("/api/v1/search", "sketch"),
    ):
        schema, encoding = _body_schema(openapi, path)
        declared = {t.strip() for t in encoding[part]["contentType"].split(",")}
        assert declared == types, (path, declared)
        if path == "/api/v1/search":  # sketches, or an earlier search to refine
            assert schema["anyOf"] == [{"required": ["sketch"]}, {"required": ["refine"]}]
            assert schema["properties"]["sketch"]["minItems"] == 1
        else:
            assert part in schema["required"]
    batch, _ = _body_schema(openapi, "/api/v1/gallery/batch")
    assert batch["properties"]["images"]["minItems"] == 1


def test_api_answers_are_kept_out_of_caches(
    client: TestClient, keys: Keys, make_settings: Callable[..., Settings], bundle: Bundle
) -> None:
    """Every answer under /api/v1 carries personal data (or says who asked for what):
    ``Cache-Control: no-store``, errors included; a crop keeps its own private policy."""
    item = client.post(
        "/api/v1/gallery",
        files={"image": ("a.jpg", jpeg(1), "image/jpeg")},
        data={"camera_id": "c1"},
        headers=keys.operator,
    )
    found = client.post(
        "/api/v1/search",
        files={"sketch": ("s.png", sketch_png(1), "image/png")},
        headers=keys.investigator,
    )
    answers = {
        "upload": item,
        "search": found,
        "listing": client.get("/api/v1/gallery", headers=keys.investigator),
        "item": client.get(f"/api/v1/gallery/{item.json()['id']}", headers=keys.investigator),
        "record": client.get(
            f"/api/v1/searches/{found.json()['search_id']}", headers=keys.investigator
        ),
        "history": client.get("/api/v1/searches", headers=keys.investigator),
        "sketch": client.get(found.json()["sketch_url"], headers=keys.investigator),
        "keys": client.get("/api/v1/apikeys", headers=keys.admin),
        "audit": client.get("/api/v1/audit", headers=keys.admin),
        "whoami": client.get("/api/v1/whoami", headers=keys.investigator),
        "401": client.get("/api/v1/gallery"),
        "404": client.get("/api/v1/gallery/999", headers=keys.investigator),
        "422": client.get("/api/v1/gallery?limit=0", headers=keys.investigator),
    }
    for name, r in answers.items():
        assert r.headers.get("cache-control") == "no-store", (name, r.status_code, r.headers)
    crop = client.get(item.json()["image_url"], headers=keys.investigator)
    assert crop.headers["cache-control"] == "private, max-age=86400"
    assert "no-store" not in client.get("/healthz").headers.get("cache-control", "")
    # An error made by the middleware before any route runs: the body cap's 413.
    with TestClient(create_app(make_settings(MAX_UPLOAD_MB=0.05), bundle=bundle)) as small:
        r = small.post(
            "/api/v1/gallery",
            files={"image": ("a.jpg", b"x" * 2_000_000, "image/jpeg")},
            headers=keys.operator,
        )
        assert r.status_code == 413 and r.headers.get("cache-control") == "no-store"
