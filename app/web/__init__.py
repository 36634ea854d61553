"""The investigators' and operators' web page (plain static files, no build step) and the API
documentation served from local assets, so that nothing the browser loads leaves the server."""

from __future__ import annotations

from fastapi import FastAPI

from app.web.docs import install_docs
from app.web.page import install_page


def install(app: FastAPI) -> None:
    """Serve the page at ``/`` (assets under ``/static``) and ``/docs`` + ``/redoc`` offline.

    ``app`` must be created with ``docs_url=None, redoc_url=None``; add
    :class:`app.web.headers.SecurityHeaders` as its outermost middleware.
    """
    install_page(app)
    install_docs(app)
