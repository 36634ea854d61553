"""Security headers: a strict Content-Security-Policy for the page, a looser one for the API
documentation (Swagger UI and ReDoc start from inline scripts), and no-sniff / no-referrer for
every response.

Both policies allow nothing but this server (``'self'``) as a source of scripts, styles, images,
fonts and connections, so a page that tried to load something from elsewhere would be stopped
by the browser: the air gap is enforced, not only hoped for.
"""

from __future__ import annotations

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

# The page: no inline script or style at all; images from the server or blob: URLs of fetched
# bytes (crops are fetched with the key in a header, never with the key in a URL).
PAGE_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob:; "
    "connect-src 'self'; font-src 'self'; manifest-src 'self'; base-uri 'none'; "
    "form-action 'none'; frame-ancestors 'none'"
)
# Swagger UI and ReDoc: their HTML starts them with an inline script, ReDoc styles inline and
# runs a worker from a blob: URL; still nothing from another host.
DOCS_CSP = (
    "default-src 'none'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data: blob:; font-src 'self' data:; connect-src 'self'; "
    "worker-src 'self' blob:; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
DOCS_PATHS = ("/docs", "/redoc")


def policy_for(path: str) -> str | None:
    """The Content-Security-Policy of a response to ``path``; None for non-HTML responses."""
    if path == "/" or path.startswith("/static/"):
        return PAGE_CSP
    if path in DOCS_PATHS or path.startswith("/docs/"):
        return DOCS_CSP
    return None


class SecurityHeaders:
    """Adds the headers above to every HTTP response (pure ASGI, streaming untouched)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        policy = policy_for(scope.get("path", ""))

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                headers.setdefault("X-Content-Type-Options", "nosniff")
                headers.setdefault("Referrer-Policy", "no-referrer")
                if policy is not None:
                    headers.setdefault("Content-Security-Policy", policy)
                    headers.setdefault("X-Frame-Options", "DENY")
            await send(message)

        await self.app(scope, receive, send_wrapper)
