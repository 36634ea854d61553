"""Exception -> JSON ``{"detail": "..."}`` with the right status; bad input is never a 500."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from sqlalchemy.exc import SQLAlchemyError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from app.errors import BundleError, SketchReidError, UserInputError
from app.ml.images import DecodeBusyError
from app.ml.infer.batching import QueueClosedError, QueueFullError
from app.queue.producer import BrokerUnavailableError
from app.services.errors import (
    AuthenticationError,
    ConflictError,
    InsufficientStorageError,
    NotFoundError,
    NotReadyError,
    OutOfRangeError,
    PayloadTooLargeError,
    PermissionDeniedError,
    TooManyAuthFailuresError,
)
from app.services.outages import as_outage

log = logging.getLogger(__name__)

# Most specific first.
STATUS_BY_ERROR: tuple[tuple[type[SketchReidError], int], ...] = (
    (AuthenticationError, 401),
    (PermissionDeniedError, 403),
    (NotFoundError, 404),
    (ConflictError, 409),
    (TooManyAuthFailuresError, 429),
    (PayloadTooLargeError, 413),
    (OutOfRangeError, 422),
    (UserInputError, 400),
    (NotReadyError, 503),
    (BundleError, 503),
    (QueueFullError, 503),
    (QueueClosedError, 503),
    (BrokerUnavailableError, 503),
    (DecodeBusyError, 503),
    (InsufficientStorageError, 507),
)


def status_for(exc: SketchReidError) -> int:
    for cls, status in STATUS_BY_ERROR:
        if isinstance(exc, cls):
            return status
    return 500


def _location(loc: tuple[object, ...] | list[object]) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header", "form")]
    return ".".join(parts) or "request"


async def sketchreid_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, SketchReidError)
    status = status_for(exc)
    if status >= 500:
        log.error("%s %s failed: %s", request.method, request.url.path, exc)
    headers = {"WWW-Authenticate": "ApiKey"} if status == 401 else None
    retry_after = getattr(exc, "retry_after", None)
    if isinstance(retry_after, int):  # e.g. the inference queue is full
        headers = {"Retry-After": str(retry_after)}
    body: dict[str, object] = {"detail": str(exc)}
    if status == 422:  # like a validation error: say which field
        field = getattr(exc, "field", None) or "request"
        body["errors"] = [{"field": field, "message": str(exc), "type": "out_of_range"}]
    return JSONResponse(body, status_code=status, headers=headers)


async def validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = [
        {
            "field": _location(e.get("loc", ())),
            "message": str(e.get("msg", "")),
            "type": e.get("type"),
        }
        for e in exc.errors()
    ]
    detail = "; ".join(f"{e['field']}: {e['message']}" for e in errors) or "invalid request"
    return JSONResponse({"detail": detail, "errors": errors}, status_code=422)


_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


def allowed_methods(request: Request) -> list[str]:
    """Every method some route fully matches at this request's path."""
    routes = request.app.router.routes
    return [
        method
        for method in _METHODS
        if any(r.matches({**request.scope, "method": method})[0] == Match.FULL for r in routes)
    ]


async def http_error(request: Request, exc: Exception) -> Response:
    """Starlette's own errors (404 no route, 405 no such method) in the usual body; a 405's
    ``Allow`` lists the methods of every route at the path, not only of the first one found
    (``/api/v1/gallery`` has a GET route and a POST route)."""
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code == 405:
        exc.headers = {**(exc.headers or {}), "Allow": ", ".join(allowed_methods(request))}
    return await http_exception_handler(request, exc)


async def outage_error(request: Request, exc: Exception) -> JSONResponse:
    """A database that is down, stalled or out of connections: 503 with Retry-After; a full
    disk: 507. Other database and OS errors are unexpected: raised on (a logged 500)."""
    outage = as_outage(exc)
    if outage is None:
        raise exc
    return await sketchreid_error(request, outage)


def install(app: FastAPI) -> None:
    app.add_exception_handler(SketchReidError, sketchreid_error)
    app.add_exception_handler(SQLAlchemyError, outage_error)
    app.add_exception_handler(OSError, outage_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    # Other exceptions: app.api.middleware.UnexpectedErrors (a 500 that keeps the connection).
