"""The OpenAPI document declares every error a route returns, with the body it really has."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.api.main import create_app
from app.api.schemas import ErrorOut
from app.core.config import Settings
from app.ml.bundle.store import Bundle
from app.services import gallery

from .conftest import Keys
from .helpers import encode, jpeg, person_image, sketch_png

ZERO_UUID = "00000000-0000-0000-0000-000000000000"
AUTH_ERRORS = ("401", "403", "500", "503")


@pytest.fixture
def small(make_settings: Callable[..., Settings], bundle: Bundle, keys: Keys) -> Iterator[Any]:
    """Small size limits, so 413 is cheap to provoke."""
    app = create_app(make_settings(MAX_UPLOAD_MB=0.05, MAX_BATCH_MB=0.2), bundle=bundle)
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client


def _operations(openapi: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, ops in openapi["paths"].items():
        for method, op in ops.items():
            yield method.upper(), path, op


def test_every_error_response_is_declared_with_the_error_schema(small: TestClient) -> None:
    openapi = small.get("/openapi.json").json()
    schemas = openapi["components"]["schemas"]
    assert "HTTPValidationError" not in schemas and "ValidationError" not in schemas
    error = schemas["ErrorOut"]
    assert error["required"] == ["detail"]
    assert error["properties"]["detail"]["type"] == "string"
    assert error.get("additionalProperties") is False
    for method, path, op in _operations(openapi):
        responses = op["responses"]
        if path.startswith("/api/v1/"):
            assert set(AUTH_ERRORS) <= set(responses), (method, path, sorted(responses))
            if op.get("parameters") or op.get("requestBody"):
                assert "422" in responses, (method, path)
        for status, response in responses.items():
            if int(status) < 400:
                continue
            if path == "/readyz":  # not ready: the same body as ready, with the failed checks
                assert response["content"]["application/json"]["schema"] == {
                    "$ref": "#/components/schemas/ReadyOut"
                }
                continue
            schema = response["content"]["application/json"]["schema"]
            assert schema == {"$ref": "#/components/schemas/ErrorOut"}, (method, path, status)


def _big_png() -> bytes:
    data = encode(person_image(3, (400, 800)), "PNG")
    assert len(data) > 0.25 * 1024 * 1024
    return data


# (method, route template, url, request keyword arguments, key, expected status)
CASES: list[tuple[str, str, str, dict[str, Any], str | None, int]] = [
    ("POST", "/api/v1/gallery", "/api/v1/gallery",
     {"files": {"image": ("a.jpg", b"", "image/jpeg")}}, "operator", 400),
    ("POST", "/api/v1/gallery", "/api/v1/gallery",
     {"files": {"image": ("a.jpg", jpeg(1), "image/jpeg")}}, None, 401),
    ("POST", "/api/v1/gallery", "/api/v1/gallery",
     {"files": {"image": ("a.jpg", jpeg(1), "image/jpeg")}}, "investigator", 403),
    ("POST", "/api/v1/gallery", "/api/v1/gallery",
     {"files": {"image": ("a.png", _big_png(), "image/png")}}, "operator", 413),
    ("POST", "/api/v1/gallery", "/api/v1/gallery", {"data": {"camera_id": "c1"}}, "operator", 422),
    ("POST", "/api/v1/gallery", "/api/v1/gallery",
     {"files": {"image": ("a.jpg", jpeg(1), "image/jpeg")},
      "data": {"captured_at": "0001-01-01T00:00:00+01:00"}}, "operator", 422),
    ("POST", "/api/v1/gallery/batch", "/api/v1/gallery/batch",
     {"files": [("images", ("a.jpg", jpeg(1), "image/jpeg"))], "data": {"metadata": "{"}},
     "operator", 400),
    ("POST", "/api/v1/gallery/batch", "/api/v1/gallery/batch",
     {"files": [("images", (f"{i}.png", _big_png(), "image/png")) for i in range(2)]},
     "operator", 413),
    ("POST", "/api/v1/gallery/batch", "/api/v1/gallery/batch", {"data": {"metadata": "[]"}},
     "operator", 422),
    ("GET", "/api/v1/gallery", "/api/v1/gallery?captured_after=yesterday", {}, "admin", 400),
    ("GET", "/api/v1/gallery", "/api/v1/gallery?limit=0", {}, "admin", 422),
    ("GET", "/api/v1/gallery/{item_id}", "/api/v1/gallery/7", {}, "admin", 404),
    ("GET", "/api/v1/gallery/{item_id}", "/api/v1/gallery/seven", {}, "admin", 404),
    ("GET", "/api/v1/gallery/{item_id}/image", "/api/v1/gallery/7/image", {}, "admin", 404),
    ("DELETE", "/api/v1/gallery/{item_id}", "/api/v1/gallery/7", {}, "investigator", 403),
    ("DELETE", "/api/v1/gallery/{item_id}", "/api/v1/gallery/7", {}, "operator", 404),
    ("DELETE", "/api/v1/gallery/{item_id}", "/api/v1/gallery/7?reason=a%00b", {}, "operator",
     400),
    ("POST", "/api/v1/search", "/api/v1/search",
     {"files": {"sketch": ("s.png", b"not an image", "image/png")}}, "investigator", 400),
    ("POST", "/api/v1/search", "/api/v1/search",
     {"files": {"sketch": ("s.png", _big_png(), "image/png")}}, "investigator", 413),
    ("POST", "/api/v1/search", "/api/v1/search",
     {"files": {"sketch": ("s.png", sketch_png(1), "image/png")}, "data": {"top_k": "0"}},
     "investigator", 422),
    ("POST", "/api/v1/search", "/api/v1/search",
     {"files": {"sketch": ("s.png", sketch_png(1), "image/png")},
      "data": {"k1": "5", "k2": "6"}}, "investigator", 422),
    ("GET", "/api/v1/searches/{search_id}", f"/api/v1/searches/{ZERO_UUID}", {},
     "investigator", 404),
    ("GET", "/api/v1/searches/{search_id}", "/api/v1/searches/nope", {}, "investigator", 404),
    ("GET", "/api/v1/searches/{search_id}/translated",
     f"/api/v1/searches/{ZERO_UUID}/translated", {}, "investigator", 404),
    ("GET", "/api/v1/searches/{search_id}/sketch", f"/api/v1/searches/{ZERO_UUID}/sketch", {},
     "operator", 403),
    ("GET", "/api/v1/model", "/api/v1/model", {}, None, 401),
    ("GET", "/api/v1/apikeys", "/api/v1/apikeys", {}, "operator", 403),
    ("POST", "/api/v1/apikeys", "/api/v1/apikeys",
     {"json": {"name": "  ", "role": "operator"}}, "admin", 400),
    ("POST", "/api/v1/apikeys", "/api/v1/apikeys",
     {"json": {"name": "x", "role": "root"}}, "admin", 422),
    ("POST", "/api/v1/apikeys/{key_id}/revoke", "/api/v1/apikeys/99/revoke", {}, "admin", 404),
    ("POST", "/api/v1/apikeys/{key_id}/revoke", "/api/v1/apikeys/1/revoke", {}, "admin", 409),
    ("POST", "/api/v1/apikeys/{key_id}/revoke", "/api/v1/apikeys/one/revoke", {}, "admin", 404),
]  # fmt: skip


def _check(openapi: dict[str, Any], method: str, template: str, r: Any, status: int) -> None:
    assert r.status_code == status, (method, r.url, r.text)
    declared = openapi["paths"][template][method.lower()]["responses"]
    assert str(status) in declared, (method, template, status, sorted(declared))
    body = ErrorOut.model_validate(r.json())  # extra fields are refused
    assert body.detail
    if status == 422:
        assert body.errors, r.text
        assert all(e.field and e.message for e in body.errors)


def test_error_bodies_match_the_declared_schema(small: TestClient, keys: Keys) -> None:
    openapi = small.get("/openapi.json").json()
    for method, template, url, kwargs, role, status in CASES:
        headers = getattr(keys, role) if role else {}
        r = small.request(method, url, headers=headers, **kwargs)
        _check(openapi, method, template, r, status)


def test_server_fault_and_not_ready_bodies_match(
    small: TestClient, keys: Keys, monkeypatch: pytest.MonkeyPatch
) -> None:
    openapi = small.get("/openapi.json").json()

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("boom")

    monkeypatch.setattr(gallery, "get_item", broken)
    r = small.get("/api/v1/gallery/1", headers=keys.admin)
    _check(openapi, "GET", "/api/v1/gallery/{item_id}", r, 500)
    ctx = small.app.state.ctx  # type: ignore[attr-defined]
    small.app.state.ctx = None  # type: ignore[attr-defined]
    try:
        r = small.get("/api/v1/model", headers=keys.admin)
    finally:
        small.app.state.ctx = ctx  # type: ignore[attr-defined]
    _check(openapi, "GET", "/api/v1/model", r, 503)
