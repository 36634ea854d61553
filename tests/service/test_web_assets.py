"""The web page and the API documentation as the server sends them (no browser: see
tests/browser for the page at work): local assets only, no inline script, strict headers."""

from __future__ import annotations

import re
import tomllib
from fnmatch import fnmatch
from html.parser import HTMLParser
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.web.docs import REDOC_LOGO_URL, assets_dir
from app.web.headers import DOCS_CSP, PAGE_CSP
from app.web.page import STATIC_DIR

from .conftest import Keys

ROOT = Path(__file__).parents[2]


class Tags(HTMLParser):
    """Every start tag with its attributes, and the text inside <script> elements."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.script_text: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        self._in_script = tag == "script"

    def handle_endtag(self, tag: str) -> None:
        self._in_script = False

    def handle_data(self, data: str) -> None:
        if self._in_script and data.strip():
            self.script_text.append(data)


def parse(html: str) -> Tags:
    tags = Tags()
    tags.feed(html)
    return tags


def referenced(tags: Tags) -> list[str]:
    return [
        value
        for _tag, attrs in tags.tags
        for name, value in attrs.items()
        if name in ("src", "href") and value and not value.startswith("#")
    ]


def test_the_page_is_served_with_a_strict_policy_and_no_inline_script(
    client: TestClient, keys: Keys
) -> None:
    r = client.get("/")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/html")
    assert r.headers["content-security-policy"] == PAGE_CSP
    assert "script-src 'self';" in PAGE_CSP and "unsafe" not in PAGE_CSP
    assert r.headers["x-content-type-options"] == "nosniff"
    assert r.headers["referrer-policy"] == "no-referrer"
    tags = parse(r.text)
    scripts = [attrs for tag, attrs in tags.tags if tag == "script"]
    assert scripts and all(attrs.get("src", "").startswith("/static/") for attrs in scripts)
    assert tags.script_text == []
    assert not any("style" in attrs for _tag, attrs in tags.tags)  # style-src 'self' only
    assert not any(name.startswith("on") for _t, attrs in tags.tags for name in attrs)
    # No key and nothing from another host.
    assert "skr_" not in r.text.replace("skr_…", "")
    for key in (keys.admin, keys.investigator, keys.operator):
        assert key["X-API-Key"] not in r.text
    for url in referenced(tags):
        assert url.startswith("/"), url
        assert client.get(url).status_code == 200, url


def test_every_script_module_the_page_imports_is_served(client: TestClient) -> None:
    scripts = sorted((STATIC_DIR / "js").glob("*.js"))
    assert scripts
    for script in scripts:
        r = client.get(f"/static/js/{script.name}")
        assert r.status_code == 200
        assert "javascript" in r.headers["content-type"]
        assert r.headers["cache-control"] == "no-cache"
        for name in re.findall(r'from "\./([\w-]+\.js)"', r.text):
            assert (STATIC_DIR / "js" / name).is_file(), f"{script.name} imports a missing {name}"
        # Nothing is fetched from another host and nothing is written as markup.
        assert not re.search(r"https?://", r.text), script.name
        assert "innerHTML" not in r.text and "eval(" not in r.text, script.name


def test_the_page_files_are_package_data() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = config["tool"]["setuptools"]["package-data"]["app.web"]
    for path in STATIC_DIR.rglob("*"):
        if path.is_file():
            relative = path.relative_to(STATIC_DIR.parent).as_posix()
            assert any(fnmatch(relative, p) for p in patterns), f"{relative} is not package data"


@pytest.mark.parametrize("path", ["/docs", "/redoc"])
def test_docs_load_only_local_assets(client: TestClient, path: str) -> None:
    r = client.get(path)
    assert r.status_code == 200
    assert r.headers["content-security-policy"] == DOCS_CSP
    assert "'self'" in DOCS_CSP and "http" not in DOCS_CSP
    urls = referenced(parse(r.text))
    scripts = re.findall(r"url: '([^']+)'|spec-url=\"([^\"]+)\"", r.text)
    assert urls and scripts
    for url in urls:
        assert url.startswith("/docs/assets/"), url
        asset = client.get(url)
        assert asset.status_code == 200 and len(asset.content) > 1000, url
    assert "cdn" not in r.text and "fonts.googleapis" not in r.text
    assert client.get("/openapi.json").status_code == 200


def test_swagger_ui_asks_no_outside_validator(client: TestClient) -> None:
    html = client.get("/docs").text
    assert '"validatorUrl": null' in html


def test_redoc_bundle_is_the_packaged_one_without_its_cdn_logo(client: TestClient) -> None:
    packaged = (assets_dir() / "redoc.standalone.js").read_bytes()
    assert REDOC_LOGO_URL in packaged  # else the replacement is obsolete: remove it
    served = client.get("/docs/assets/redoc.standalone.js")
    assert served.status_code == 200
    assert "javascript" in served.headers["content-type"]
    assert REDOC_LOGO_URL not in served.content
    assert len(served.content) == pytest.approx(len(packaged), rel=0.01)
    assert client.get("/docs/oauth2-redirect").status_code == 200


def test_api_responses_get_no_page_policy(client: TestClient, keys: Keys) -> None:
    r = client.get("/api/v1/whoami", headers=keys.investigator)
    assert r.headers["x-content-type-options"] == "nosniff"
    assert "content-security-policy" not in r.headers
