"""Pure ASGI middleware: request-body size cap (413 while streaming), unexpected errors as a
JSON 500, request metrics, and no caching of API answers."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import Any

from fastapi import HTTPException
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.metrics import Metrics
from app.api.schemas import API_PREFIX

log = logging.getLogger(__name__)

INTERNAL_ERROR = {"detail": "internal server error"}


class BodyTooLarge(HTTPException):
    def __init__(self, limit: int) -> None:
        super().__init__(
            status_code=413,
            detail=f"request body is over the limit of {limit / 1048576:.1f} MB",
        )


async def _send_413(send: Send, limit: int) -> None:
    body = json.dumps({"detail": BodyTooLarge(limit).detail}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class BodySizeLimit:
    """Refuse bodies over ``limit_for(path)`` bytes: from Content-Length before reading, or as
    soon as the streamed body passes the limit (chunked uploads), before it is all buffered.
    """

    def __init__(self, app: ASGIApp, limit_for: Callable[[str], int]) -> None:
        self.app = app
        self.limit_for = limit_for

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope.get("path", ""))
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = -1
                if declared > limit:
                    await _send_413(send, limit)
                    return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(limit)
            return message

        await self.app(scope, limited_receive, send)


async def _send_json(
    send: Send, status: int, body: dict[str, Any], headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    data = json.dumps(body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(data)).encode()),
                *(headers or []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": data})


class ConcurrencyLimit:
    """At most ``limit`` requests to ``path`` (POST) at once; one more gets 429 at once, before
    its body is read. A request holds its slot until its response is complete. A counter on
    the event loop: no lock needed."""

    def __init__(self, app: ASGIApp, path: str, limit: int, what: str) -> None:
        self.app = app
        self.path = path.rstrip("/")
        self.limit = limit
        self.what = what
        self.running = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or scope.get("method") != "POST"
            or scope.get("path", "").rstrip("/") != self.path
        ):
            await self.app(scope, receive, send)
            return
        if self.running >= self.limit:
            detail = (
                f"{self.running} {self.what}(s) already running, the limit is {self.limit}: "
                "retry when one has finished"
            )
            await _send_json(send, 429, {"detail": detail}, [(b"retry-after", b"5")])
            return
        self.running += 1
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                self.running -= 1

        async def send_and_release(message: Message) -> None:
            # The slot is free before the client can read the end of the answer: a client
            # that sends its next batch at once must not find it still taken while this
            # request finishes (dependency teardown, closing the spooled files).
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                release()
            await send(message)

        try:
            await self.app(scope, receive, send_and_release)
        finally:
            release()


class UnexpectedErrors:
    """Turn an exception that no handler took into a JSON 500 *response*.

    Starlette's outermost ``ServerErrorMiddleware`` sends its 500 and then re-raises, and uvicorn
    closes the connection of any request whose app raised: a keep-alive client's next request on
    that connection fails (ECONNRESET). Answering here, without re-raising, keeps the connection.
    Once a response has started there is nothing left to send; the exception goes on up.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def send_wrapper(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        except Exception:
            log.exception("%s %s failed", scope.get("method", "?"), scope.get("path", "?"))
            if started:
                raise
            await _send_json(send, 500, INTERNAL_ERROR)


def route_template(scope: Scope) -> str:
    """The matched route's path template (``/api/v1/gallery/{item_id}``), or "unmatched".

    Recent FastAPI versions put the router-local route in the scope, without the prefixes of
    the routers it was included into; the API prefix is added back from the request path.
    """
    route: Any = scope.get("route")
    # path_format leaves out path convertors: "/gallery/{item_id}", not "{item_id:id}".
    template = getattr(route, "path_format", None) or getattr(route, "path", None)
    if not template:
        return "unmatched"
    path = scope.get("path", "")
    if path.startswith(API_PREFIX + "/") and not template.startswith(API_PREFIX):
        template = API_PREFIX + template
    return str(template)


class RequestMetrics:
    """Counts requests by method, route template and status; observes their latency."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = {"code": 500}

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            template = route_template(scope)
            self.metrics.observe_request(
                scope.get("method", "?"), template, status["code"], time.perf_counter() - start
            )


class NoStore:
    """``Cache-Control: no-store`` on every answer under the API prefix that sets no cache
    policy of its own: they carry personal data (crop metadata, search records and their
    sketches, key names, the audit trail), which no browser or proxy cache should keep on disk
    or hand to the next user of a shared machine. Errors made by the middleware (413, 429, 500)
    get it too when this wraps them. A gallery image keeps its own ``private`` policy: its
    bytes never change (its URL names its sha256) and only the signed-in browser caches it.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope.get("path", "").startswith(API_PREFIX + "/"):
            await self.app(scope, receive, send)
            return

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message).setdefault("Cache-Control", "no-store")
            await send(message)

        await self.app(scope, receive, send_wrapper)
