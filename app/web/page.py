"""The web page: ``/`` is ``static/index.html``, its scripts and styles are under ``/static``.

The HTML holds no key and no case data: the page signs in with an API key typed into it, keeps
the key in the tab's sessionStorage and sends it as the X-API-Key header of its API calls
(images too, fetched into blob: URLs), so the key never appears in a URL or a server log.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles
from starlette.responses import Response

STATIC_DIR = Path(__file__).parent / "static"


class RevalidatedFiles(StaticFiles):
    """Static files that the browser revalidates (ETag) before each use: after an upgrade the
    page never runs yesterday's script against today's API."""

    def file_response(self, *args: Any, **kwargs: Any) -> Response:
        response = super().file_response(*args, **kwargs)
        response.headers["Cache-Control"] = "no-cache"
        return response


def install_page(app: FastAPI) -> None:
    app.mount("/static", RevalidatedFiles(directory=STATIC_DIR), name="static")

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        # Revalidated on every load, so a new version of the page is picked up at once.
        return FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-cache"})
