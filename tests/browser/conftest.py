"""Fixtures for the browser tests: Chromium driven by Playwright against a live uvicorn server on
127.0.0.1 (a free port) with a tiny random-weight bundle, SQLite, and a gallery of synthetic
people (``sketchreid data synth``).

Chromium is Debian's (``/usr/bin/chromium``, or ``SKETCHREID_CHROMIUM``): ``playwright
install`` cannot download browsers here. Without it (or without the ``playwright`` package) the
tests are skipped, unless ``SKETCHREID_REQUIRE_BROWSER=1`` (set by .ci/run), which turns the
skip into a failure.

Every page is opened in a context whose requests are all watched: any request to a host other
than 127.0.0.1 is aborted and recorded, so a test can assert that nothing left the host.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from service.conftest import Keys, create_keys, running_server
from service.helpers import build_tiny_bundle

from app.api.main import create_app
from app.core.config import load_settings
from app.db import migrate
from app.ml.bundle.store import load_bundle

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
REQUIRE = os.environ.get("SKETCHREID_REQUIRE_BROWSER") == "1"
# Generous: the machine may be busy. A wait that runs out is a failure, not a timing assertion.
TIMEOUT_MS = 180_000


def _unavailable(reason: str) -> None:
    reason += " (install Debian's chromium package: apt-get install chromium)"
    if REQUIRE:
        pytest.fail(reason + "; SKETCHREID_REQUIRE_BROWSER=1 makes this a failure")
    pytest.skip(reason)


def chromium_path() -> str | None:
    configured = os.environ.get("SKETCHREID_CHROMIUM")
    if configured:
        return configured if Path(configured).is_file() else None
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    return "/usr/bin/chromium" if Path("/usr/bin/chromium").is_file() else None


# Per module, not per session: sync_playwright runs an asyncio loop in this thread while it is
# open, and tests after the browser tests that call asyncio.run() would find it running.
@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("the playwright package is not installed (pip install -e '.[test]')")
    executable = chromium_path()
    if executable is None:
        _unavailable("no Chromium found (chromium on PATH, /usr/bin/chromium, SKETCHREID_CHROMIUM)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_FLAGS)
        try:
            yield browser
        finally:
            browser.close()


@dataclass
class Live:
    """The running server and what the tests need to drive it."""

    base: str
    keys: Keys
    synth: Path
    gallery_ids: list[int]
    database_url: str = ""

    @property
    def host(self) -> str:
        return urlsplit(self.base).netloc

    def key(self, role: str) -> str:
        return getattr(self.keys, role)["X-API-Key"]

    def api(self, role: str) -> httpx.Client:
        return httpx.Client(base_url=self.base, headers=getattr(self.keys, role), timeout=120)


def _seed_gallery(live: Live) -> list[int]:
    """Every synthetic photo, camera c1 / c2 from its file name, one minute apart."""
    photos = sorted((live.synth / "photo").glob("*.jpg"))
    meta = []
    for i, path in enumerate(photos):
        camera = int(path.stem.split("_")[1])
        meta.append({"camera_id": f"c{camera}", "captured_at": f"2024-05-01T13:{i:02d}:00Z"})
    files = [("images", (p.name, p.read_bytes(), "image/jpeg")) for p in photos]
    with live.api("operator") as client:
        response = client.post(
            "/api/v1/gallery/batch", files=files, data={"metadata": json.dumps(meta)}
        )
    response.raise_for_status()
    body = response.json()
    assert body["created"] == len(photos), body
    return [r["item"]["id"] for r in body["results"]]


@pytest.fixture(scope="module")
def live(
    tmp_path_factory: pytest.TempPathFactory, synth_root: Path, browser: Any
) -> Iterator[Live]:
    """A server per test module (after the browser check, so no server starts without one)."""
    root = tmp_path_factory.mktemp("live")
    url = f"sqlite:///{root / 'sketchreid.db'}"
    migrate.upgrade(url)
    settings = load_settings(
        DATA_DIR=root / "data",
        DATABASE_URL=url,
        MODEL_DIR=build_tiny_bundle(root / "bundle"),
        INDEX_SYNC_SECONDS=0,
    )
    keys = create_keys(settings)
    app = create_app(settings, bundle=load_bundle(settings.MODEL_DIR))
    with running_server(app) as base:
        server = Live(base=base, keys=keys, synth=synth_root, gallery_ids=[], database_url=url)
        server.gallery_ids = _seed_gallery(server)
        yield server


@dataclass
class Watch:
    """What a page did: every request URL, requests that tried to leave 127.0.0.1, console
    errors (a Content-Security-Policy violation is one)."""

    requests: list[str] = field(default_factory=list)
    blocked: list[str] = field(default_factory=list)
    console_errors: list[str] = field(default_factory=list)

    @property
    def csp_violations(self) -> list[str]:
        return [e for e in self.console_errors if "Content Security Policy" in e]

    def assert_clean(self, key: str | None = None, *, http_errors: bool = False) -> None:
        """Nothing left the host, no CSP violation, the key in no URL; no console error at
        all unless the test provoked failed requests (``http_errors``)."""
        assert self.blocked == [], f"requests tried to leave the host: {self.blocked}"
        assert self.csp_violations == [], self.csp_violations
        if not http_errors:
            assert self.console_errors == [], self.console_errors
        if key:
            leaked = [u for u in self.requests if key in u]
            assert leaked == [], "the API key appeared in a URL"


@pytest.fixture
def watched(browser: Any) -> Iterator[tuple[Any, Watch]]:
    """A fresh context (empty sessionStorage) and page; the network beyond 127.0.0.1 is cut."""
    context = browser.new_context(viewport={"width": 1366, "height": 800})
    context.set_default_timeout(TIMEOUT_MS)
    watch = Watch()

    def route(route: Any) -> None:
        url = route.request.url
        host = urlsplit(url).hostname
        if url.startswith(("blob:", "data:")) or host == "127.0.0.1":
            route.continue_()
        else:
            watch.blocked.append(url)
            route.abort()

    context.route("**/*", route)
    page = context.new_page()
    page.on("request", lambda request: watch.requests.append(request.url))
    page.on(
        "console",
        lambda msg: watch.console_errors.append(msg.text) if msg.type == "error" else None,
    )
    page.on("pageerror", lambda exc: watch.console_errors.append(f"uncaught: {exc}"))
    try:
        yield page, watch
    finally:
        context.close()
