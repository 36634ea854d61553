"""/docs (Swagger UI) and /redoc (ReDoc) from assets that ship in the ``fastapi-offline``
package, instead of FastAPI's default CDN links, which leave an air-gapped browser with a blank
page. The assets are served under ``/docs/assets``.

One change is made to them as they are served: ReDoc's side menu shows a "Redocly" logo that it
loads from Redocly's CDN whatever the options; that address is replaced by an empty inline image,
so the documentation asks nothing of any other host (the page's Content-Security-Policy would
block the request anyway, at the cost of an error in the browser's console).
"""

from __future__ import annotations

import functools
from importlib.resources import files
from pathlib import Path

from fastapi import FastAPI, Response
from fastapi.openapi.docs import (
    get_redoc_html,
    get_swagger_ui_html,
    get_swagger_ui_oauth2_redirect_html,
)
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

ASSETS_URL = "/docs/assets"
# Swagger UI's "validator" badge asks an outside service to check the schema: off.
SWAGGER_PARAMETERS = {"validatorUrl": None, "persistAuthorization": False}
REDOC_JS = "redoc.standalone.js"
REDOC_LOGO_URL = b"https://cdn.redoc.ly/redoc/logo-mini.svg"
EMPTY_IMAGE = b"data:image/gif;base64,R0lGODlhAQABAAAAACH5BAEKAAEALAAAAAABAAEAAAICTAEAOw=="


def assets_dir() -> Path:
    """The folder of swagger-ui-bundle.js, swagger-ui.css, redoc.standalone.js, favicon.png."""
    return Path(str(files("fastapi_offline") / "static"))


@functools.cache
def redoc_js() -> bytes:
    """ReDoc's bundle with its CDN logo replaced by an empty inline image (read once)."""
    return (assets_dir() / REDOC_JS).read_bytes().replace(REDOC_LOGO_URL, EMPTY_IMAGE)


def install_docs(app: FastAPI) -> None:
    openapi_url = app.openapi_url or "/openapi.json"
    redirect_url = app.swagger_ui_oauth2_redirect_url or "/docs/oauth2-redirect"

    @app.get(f"{ASSETS_URL}/{REDOC_JS}", include_in_schema=False)
    def redoc_bundle() -> Response:
        return Response(
            redoc_js(),
            media_type="text/javascript",
            headers={"Cache-Control": "public, max-age=3600"},
        )

    app.mount(ASSETS_URL, StaticFiles(directory=assets_dir()), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    def swagger_ui() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=openapi_url,
            title=f"{app.title} - API",
            oauth2_redirect_url=redirect_url,
            swagger_js_url=f"{ASSETS_URL}/swagger-ui-bundle.js",
            swagger_css_url=f"{ASSETS_URL}/swagger-ui.css",
            swagger_favicon_url=f"{ASSETS_URL}/favicon.png",
            swagger_ui_parameters=SWAGGER_PARAMETERS,
        )

    @app.get(redirect_url, include_in_schema=False)
    def swagger_ui_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    @app.get("/redoc", include_in_schema=False)
    def redoc() -> HTMLResponse:
        return get_redoc_html(
            openapi_url=openapi_url,
            title=f"{app.title} - API",
            redoc_js_url=f"{ASSETS_URL}/redoc.standalone.js",
            redoc_favicon_url=f"{ASSETS_URL}/favicon.png",
            with_google_fonts=False,
        )
