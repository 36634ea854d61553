"""The OpenAPI document: FastAPI's, adjusted to say what a form and a query string carry.

* No null in a form field or a query parameter. FastAPI declares an optional field
  ``anyOf: [T, null]``, but a form or a query string has no null: a field left out is the
  default. Declared nullable, generated clients (and schemathesis) send the text ``null``,
  which the server rightly refuses (``translate=null`` is not a boolean).
* A file part says which images it takes (``encoding.contentType``), the formats the
  service decodes, instead of "any bytes".
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import FastAPI

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


def _adjust_form(media: dict[str, Any], schemas: dict[str, Any]) -> None:
    ref = media.get("schema", {}).get("$ref", "")
    body = schemas.get(ref.rsplit("/", 1)[-1]) if ref else media.get("schema")
    if not body:
        return
    properties = body.get("properties", {})
    for name, prop in list(properties.items()):
        properties[name] = without_null(prop)
        if _is_file(properties[name]):
            media.setdefault("encoding", {})[name] = {"contentType": IMAGE_TYPES}


def adjust(document: dict[str, Any]) -> dict[str, Any]:
    """Apply the adjustments above to ``document`` in place; returns it."""
    schemas = document.get("components", {}).get("schemas", {})
    for operations in document.get("paths", {}).values():
        for operation in operations.values():
            for parameter in operation.get("parameters", []):
                if parameter.get("in") == "query" and not parameter.get("required"):
                    parameter["schema"] = without_null(parameter.get("schema", {}))
            media = operation.get("requestBody", {}).get("content", {}).get(_FORM)
            if media is not None:
                _adjust_form(media, schemas)
    return document


def install(app: FastAPI) -> None:
    """Serve the adjusted document at /openapi.json (built once, on first request)."""
    build: Callable[[], dict[str, Any]] = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = adjust(build())
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
