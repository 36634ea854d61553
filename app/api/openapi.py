"""The OpenAPI document: FastAPI's, adjusted to say what a form and a query string carry.

* No null in a form field or a query parameter. FastAPI declares an optional field
  ``anyOf: [T, null]``, but a form or a query string has no null: a field left out is the
  default. Declared nullable, generated clients (and schemathesis) send the text ``null``,
  which the server rightly refuses (``translate=null`` is not a boolean).
* A file part says which images it takes (``encoding.contentType``), the formats the
  service decodes, instead of "any bytes".
* A search body states the one rule between two of its fields that JSON Schema can: a
  ``translate`` that contradicts ``view`` (``not``). ``k2`` at most ``k1`` it cannot state (it
  compares two values): the fields' descriptions say it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import FastAPI

from app.ml.infer.query_views import QUERY_VIEWS
from app.services.blobs import CONTENT_TYPES

_FORM = "multipart/form-data"
_BINARY = "application/octet-stream"
IMAGE_TYPES = ", ".join(dict.fromkeys(CONTENT_TYPES.values()))


def without_null(schema: dict[str, Any]) -> dict[str, Any]:
    """``schema`` with ``{"type": "null"}`` taken out of its ``anyOf``."""
    options = schema.get("anyOf")
    if not isinstance(options, list) or {"type": "null"} not in options:
        return schema
    rest = [o for o in options if o != {"type": "null"}]
    out = {k: v for k, v in schema.items() if k != "anyOf"}
    if len(rest) == 1:
        return {**rest[0], **out}
    return {**out, "anyOf": rest}


def _is_file(schema: dict[str, Any]) -> bool:
    item = schema.get("items", schema) if schema.get("type") == "array" else schema
    return bool(item.get("contentMediaType") == _BINARY or item.get("format") == "binary")


def _body(media: dict[str, Any], schemas: dict[str, Any]) -> dict[str, Any]:
    """The schema of a form body (followed through its ``$ref``); {} when there is none."""
    ref = media.get("schema", {}).get("$ref", "")
    body = schemas.get(ref.rsplit("/", 1)[-1]) if ref else media.get("schema")
    return body or {}


def _adjust_form(media: dict[str, Any], schemas: dict[str, Any]) -> None:
    body = _body(media, schemas)
    properties = body.get("properties", {})
    for name, prop in list(properties.items()):
        properties[name] = without_null(prop)
        if _is_file(properties[name]):
            media.setdefault("encoding", {})[name] = {"contentType": IMAGE_TYPES}


def _view_contradictions() -> dict[str, Any]:
    """The search bodies whose ``translate`` contradicts their ``view`` (refused, 422): false
    with a view that translates, true with ``sketch``."""
    translating = [v for v in QUERY_VIEWS if v != "sketch"]
    both = ["translate", "view"]
    return {
        "anyOf": [
            {
                "required": both,
                "properties": {"translate": {"const": False}, "view": {"enum": translating}},
            },
            {
                "required": both,
                "properties": {"translate": {"const": True}, "view": {"const": "sketch"}},
            },
        ]
    }


# Values of a body that contradict each other: the body schema says ``not`` this.
CONTRADICTIONS: dict[str, dict[str, Any]] = {"/api/v1/search": _view_contradictions()}

# Bodies that need one of several parts (a search needs sketches, or an earlier search to refine).
ONE_OF_REQUIRED: dict[str, list[str]] = {"/api/v1/search": ["sketch", "refine"]}


def _require_one_of(media: dict[str, Any], schemas: dict[str, Any], names: list[str]) -> None:
    body = _body(media, schemas)
    if not body:
        return
    body["anyOf"] = [{"required": [name]} for name in names]
    for name in names:
        prop = body.get("properties", {}).get(name, {})
        if prop.get("type") == "array":
            prop["minItems"] = 1


def adjust(document: dict[str, Any]) -> dict[str, Any]:
    """Apply the adjustments above to ``document`` in place; returns it."""
    schemas = document.get("components", {}).get("schemas", {})
    for path, operations in document.get("paths", {}).items():
        for operation in operations.values():
            for parameter in operation.get("parameters", []):
                if parameter.get("in") == "query" and not parameter.get("required"):
                    parameter["schema"] = without_null(parameter.get("schema", {}))
            media = operation.get("requestBody", {}).get("content", {}).get(_FORM)
            if media is not None:
                _adjust_form(media, schemas)
                if path in ONE_OF_REQUIRED:
                    _require_one_of(media, schemas, ONE_OF_REQUIRED[path])
                body = _body(media, schemas)
                if path in CONTRADICTIONS and body:
                    body["not"] = CONTRADICTIONS[path]
    return document


def install(app: FastAPI) -> None:
    """Serve the adjusted document at /openapi.json (built once, on first request)."""
    build: Callable[[], dict[str, Any]] = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = adjust(build())
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
