"""The web page in a real browser: sign-in, the investigator's search, the operator's gallery.

Several tests depend on API features that arrive with issue 10 items 2 and 3 (several sketches
per search; confirm / reject marks and a search that refines an earlier one). The page reads
what the API offers from /openapi.json; these tests do the same and are skipped, saying so,
until the API on this branch offers it.
"""

from __future__ import annotations

import os
import re
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from service.helpers import jpeg

from app.db.models import ApiKey
from app.db.session import make_engine, make_session_factory, session_scope
from app.db.types import utcnow

from .conftest import Live, Watch

SCREENSHOT_DIR = os.environ.get("SKETCHREID_SCREENSHOT_DIR")


def capabilities(live: Live) -> dict[str, bool]:
    """What the page will find in /openapi.json (mirrors static/js/capabilities.js)."""
    spec = httpx.get(f"{live.base}/openapi.json").json()
    form_ref = spec["paths"]["/api/v1/search"]["post"]["requestBody"]["content"][
        "multipart/form-data"
    ]["schema"]["$ref"]
    props = spec["components"]["schemas"][form_ref.rsplit("/", 1)[1]]["properties"]
    sketch = props["sketch"]
    return {
        "multi_sketch": sketch.get("type") == "array"
        or any(s.get("type") == "array" for s in sketch.get("anyOf", [])),
        "marks": "post" in spec["paths"].get("/api/v1/searches/{search_id}/marks", {}),
        "refine": "refine" in props,
    }


def sign_in(page: Any, live: Live, role: str) -> None:
    page.goto(live.base + "/")
    page.fill("#api-key", live.key(role))
    page.press("#api-key", "Enter")
    page.wait_for_selector("#whoami:not([hidden])")


def sketches(live: Live, *pids: int) -> list[str]:
    return [str(live.synth / "sketch" / f"{pid}.jpg") for pid in pids]


def search(page: Any, files: list[str], top_k: int = 6, **options: Any) -> list[int]:
    """Choose the files, set options, press Search; the result's gallery ids in rank order."""
    page.set_input_files("#sketch-files", files)
    page.fill("#top-k", str(top_k))
    if options.get("rerank"):
        page.select_option("#rerank", "true")
    if "cameras" in options:
        page.fill("#cameras", options["cameras"])
    if "view" in options:
        page.select_option("#view", options["view"])
    before = page.inner_text("#result-summary") if page.is_visible("#result-body") else None
    page.click("#search-submit")
    page.wait_for_function(
        "before => !document.querySelector('#result-body').hidden && "
        "document.querySelector('#result-summary').textContent !== before",
        arg=before,
    )
    return result_ids(page)


def result_ids(page: Any) -> list[int]:
    return [
        int(x)
        for x in page.eval_on_selector_all(
            "#result-grid > li", "els => els.map(e => e.dataset.galleryId)"
        )
    ]


def wait_images_loaded(page: Any, selector: str) -> None:
    page.wait_for_function(
        "sel => { const imgs = [...document.querySelectorAll(sel)];"
        " return imgs.length > 0 && imgs.every(i => i.complete && i.naturalWidth > 0"
        " && i.src.startsWith('blob:')); }",
        arg=selector,
    )


# --- sign-in ---------------------------------------------------------------------------------


def test_a_wrong_key_shows_an_error_and_keeps_the_sign_in_form(
    live: Live, watched: tuple[Any, Watch]
) -> None:
    page, watch = watched
    page.goto(live.base + "/")
    page.fill("#api-key", "skr_not-a-real-key")
    page.click("#signin-submit")
    error = page.wait_for_selector("#signin-error:not([hidden])")
    assert "refused" in error.inner_text() and "unknown API key" in error.inner_text()
    assert page.is_visible("#view-signin") and not page.is_visible("#view-search")
    assert page.evaluate("sessionStorage.length") == 0
    assert page.url == live.base + "/"  # the form was never submitted to a URL
    watch.assert_clean("skr_not-a-real-key", http_errors=True)


def test_an_expired_key_is_refused_with_its_date(live: Live, watched: tuple[Any, Watch]) -> None:
    page, watch = watched
    with live.api("admin") as api:
        body = {"name": "expiring", "role": "investigator", "expires_in_days": 1}
        created = api.post("/api/v1/apikeys", json=body).json()
    engine = make_engine(live.database_url)
    with session_scope(make_session_factory(engine)) as session:
        row = session.get(ApiKey, created["id"])
        assert row is not None
        row.expires_at = utcnow() - timedelta(hours=1)
        session.commit()
    engine.dispose()
    page.goto(live.base + "/")
    page.fill("#api-key", created["key"])
    page.click("#signin-submit")
    error = page.wait_for_selector("#signin-error:not([hidden])").inner_text()
    assert "refused" in error and "expired at" in error and "ask an admin" in error
    assert page.is_visible("#view-signin")
    watch.assert_clean(created["key"], http_errors=True)


def test_an_unreachable_server_is_reported(live: Live, watched: tuple[Any, Watch]) -> None:
    page, watch = watched
    page.goto(live.base + "/")
    page.route("**/api/v1/**", lambda route: route.abort("connectionrefused"))
    page.fill("#api-key", live.key("investigator"))
    page.click("#signin-submit")
    error = page.wait_for_selector("#signin-error:not([hidden])")
    assert "cannot be reached" in error.inner_text()
    watch.assert_clean(live.key("investigator"), http_errors=True)


def test_a_key_revoked_while_signed_in_asks_for_a_key_and_sign_out_clears_the_page(
    live: Live, watched: tuple[Any, Watch]
) -> None:
    """The page stays under the dialog (issue 23 item 6; test_rough_edges.py goes on with a new
    key); signing out from it goes back to the sign-in form and clears the page."""
    page, watch = watched
    with live.api("admin") as admin:
        made = admin.post("/api/v1/apikeys", json={"name": "DC Short", "role": "operator"}).json()
    page.goto(live.base + "/")
    page.fill("#api-key", made["key"])
    page.press("#api-key", "Enter")
    page.wait_for_selector("#gallery-grid > li")
    wait_images_loaded(page, "#gallery-grid img")  # no request of the page is in flight
    with live.api("admin") as admin:
        assert admin.post(f"/api/v1/apikeys/{made['id']}/revoke").status_code == 200
    page.click("#gallery-apply")  # any call with the key now
    reason = page.wait_for_selector("#reauth[open] #reauth-reason")
    assert "revoked" in reason.inner_text() and "Sign in again" in reason.inner_text()
    assert page.evaluate("sessionStorage.length") == 0
    assert page.is_visible("#view-gallery") and page.locator("#gallery-grid > li").count() > 0
    page.click("#reauth-signout")
    page.wait_for_selector("#view-signin:not([hidden])")
    assert page.is_hidden("#reauth") and page.is_hidden("#view-gallery")
    assert page.locator("#gallery-grid > li").count() == 0
    watch.assert_clean(made["key"], http_errors=True)


@pytest.mark.parametrize(
    ("role", "search", "gallery"),
    [("investigator", True, False), ("operator", False, True), ("admin", True, True)],
)
def test_the_role_decides_what_the_page_offers(
    live: Live, watched: tuple[Any, Watch], role: str, search: bool, gallery: bool
) -> None:
    page, watch = watched
    sign_in(page, live, role)
    assert role in page.inner_text("#whoami")
    assert page.is_visible("#view-search") == search
    assert page.is_visible("#view-gallery") == (gallery and not search)
    assert page.is_visible("#tabs") == (search and gallery)
    # The key is in the tab's sessionStorage, not in the HTML or the address.
    assert live.key(role) not in page.content()
    assert live.key(role) not in page.url
    page.reload()
    page.wait_for_selector("#whoami:not([hidden])")  # still signed in after a reload
    page.click("#signout")
    page.wait_for_selector("#view-signin:not([hidden])")
    assert page.evaluate("sessionStorage.length") == 0
    watch.assert_clean(live.key(role))


# --- investigator ----------------------------------------------------------------------------


def test_investigator_searches_with_a_sketch_and_opens_a_crop_large(
    live: Live, watched: tuple[Any, Watch]
) -> None:
    page, watch = watched
    sign_in(page, live, "investigator")
    ids = search(page, sketches(live, 3), top_k=6, rerank=True)
    assert len(ids) == 6 and set(ids) <= set(live.gallery_ids)
    # The query (sketch + translation: the tiny bundle has a translator) beside the grid.
    assert page.locator("#query-strip figcaption").all_inner_texts() == ["Sketch", "Translation"]
    wait_images_loaded(page, "#query-strip img, #result-grid img")
    first = page.locator("#result-grid > li").first
    text = first.inner_text()
    for label in ("Rank", "#1", "Score", "Camera", "Time"):
        assert label in text
    assert re.search(r"Camera\s+c[12]", text)
    assert "re-ranked" in page.inner_text("#result-summary")
    # Open the first crop large with the keyboard, close it with Escape.
    first.locator("button.thumb").focus()
    page.keyboard.press("Enter")
    page.wait_for_selector("#viewer[open]")
    wait_images_loaded(page, "#viewer-img")
    assert f"gallery item {ids[0]}" in page.inner_text("#viewer-title")
    page.keyboard.press("ArrowRight")
    page.wait_for_function(
        "id => document.querySelector('#viewer-title').textContent.includes('item ' + id)",
        arg=ids[1],
    )
    page.keyboard.press("Escape")
    page.wait_for_selector("#viewer", state="hidden")
    watch.assert_clean(live.key("investigator"))


def test_a_past_search_reopens_as_it_was(live: Live, watched: tuple[Any, Watch]) -> None:
    page, watch = watched
    sign_in(page, live, "investigator")
    ids = search(page, sketches(live, 5), top_k=4, rerank=True, cameras="c2", view="fused")
    summary = page.inner_text("#result-summary")
    assert "sketch + translation fused" in summary
    search_id = summary.rsplit("search ", 1)[1].strip()
    page.reload()  # a new page: nothing of the search is left in memory
    page.wait_for_selector("#whoami:not([hidden])")
    assert page.is_hidden("#result-body")
    entry = page.locator(f'#history-list button[data-search-id="{search_id}"]')
    entry.focus()
    page.keyboard.press("Enter")
    page.wait_for_function(
        "id => document.querySelector('#result-summary').textContent.includes(id)", arg=search_id
    )
    assert result_ids(page) == ids
    assert entry.get_attribute("aria-current") == "true"
    # The form holds the search's parameters and sketch again, ready to search again.
    assert page.input_value("#top-k") == "4"
    assert page.input_value("#cameras") == "c2"
    assert page.input_value("#rerank") == "true"
    assert page.input_value("#view") == "fused"
    assert "sketch + translation fused" in page.inner_text("#result-summary")
    assert page.locator("#sketch-list img").count() == 1
    wait_images_loaded(page, "#query-strip img, #result-grid img, #sketch-list img")
    assert all("c2" in t for t in page.locator("#result-grid > li").all_inner_texts())
    watch.assert_clean(live.key("investigator"))


def test_a_file_that_is_not_an_image_is_refused_with_a_reason(
    live: Live, watched: tuple[Any, Watch], tmp_path: Path
) -> None:
    page, watch = watched
    sign_in(page, live, "investigator")
    notes = tmp_path / "notes.txt"
    notes.write_text("not a sketch")
    page.set_input_files("#sketch-files", str(notes))
    assert "Not an image: notes.txt" in page.inner_text("#search-error")
    # A file that claims to be a PNG but is not one: the server's reason is shown.
    fake = tmp_path / "fake.png"
    fake.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 64)
    page.set_input_files("#sketch-files", str(fake))
    page.click("#search-submit")
    error = page.wait_for_selector("#search-error:not([hidden])")
    assert error.inner_text() == "The server refused it: corrupt PNG header."
    assert page.is_hidden("#result-body")
    watch.assert_clean(live.key("investigator"), http_errors=True)


def test_investigator_searches_with_two_sketches(live: Live, watched: tuple[Any, Watch]) -> None:
    if not capabilities(live)["multi_sketch"]:
        pytest.skip(
            "POST /api/v1/search takes one sketch on this branch: several sketches per search "
            "(issue 10 item 2) enable this test"
        )
    page, watch = watched
    sign_in(page, live, "investigator")
    requests: list[Any] = []
    page.on("request", lambda r: requests.append(r) if r.url.endswith("/api/v1/search") else None)
    ids = search(page, sketches(live, 2, 7), top_k=5)
    assert len(ids) == 5
    captions = page.locator("#query-strip figcaption").all_inner_texts()
    assert captions[:2] == ["Sketch 1", "Sketch 2"]
    body = requests[-1].post_data_buffer or b""
    assert body.count(b'name="sketch"') == 2
    wait_images_loaded(page, "#query-strip img")
    watch.assert_clean(live.key("investigator"))


def test_confirming_a_result_and_searching_again(live: Live, watched: tuple[Any, Watch]) -> None:
    caps = capabilities(live)
    if not (caps["marks"] and caps["refine"]):
        pytest.skip(
            "no marks / refine on POST /api/v1/search on this branch: relevance feedback "
            "(issue 10 item 3) enables this test"
        )
    page, watch = watched
    sign_in(page, live, "investigator")
    two = caps["multi_sketch"]
    ids = search(page, sketches(live, 4, 10) if two else sketches(live, 4), top_k=8, rerank=True)
    card = page.locator(f'#result-grid > li[data-gallery-id="{ids[0]}"]')
    card.locator("button.confirm").click()
    page.wait_for_function(
        "id => document.querySelector(`#result-grid > li[data-gallery-id='${id}'] .confirm`)"
        ".getAttribute('aria-pressed') === 'true'",
        arg=ids[0],
    )
    rejected = page.locator(f'#result-grid > li[data-gallery-id="{ids[1]}"]')
    rejected.locator("button.reject").click()
    page.wait_for_selector(f'#result-grid > li[data-gallery-id="{ids[1]}"].rejected')
    with live.api("investigator") as api:
        search_id = page.inner_text("#result-summary").rsplit("search ", 1)[1].strip()
        marks = api.get(f"/api/v1/searches/{search_id}").json()["marks"]
    assert [(m["gallery_id"], m["mark"]) for m in marks] == [
        (ids[0], "confirmed"),
        (ids[1], "rejected"),
    ]
    if SCREENSHOT_DIR:  # the picture in docs/: SKETCHREID_SCREENSHOT_DIR=docs
        wait_images_loaded(page, "#query-strip img, #result-grid img")
        page.screenshot(path=str(Path(SCREENSHOT_DIR) / "web-investigator.png"))
    first_summary = page.inner_text("#result-summary")
    page.click("#research")
    page.wait_for_function(
        "before => document.querySelector('#result-summary').textContent !== before",
        arg=first_summary,
    )
    again = result_ids(page)
    assert again and ids[0] not in again and ids[1] not in again
    assert "Searched with confirmed (1)" in page.inner_text("#feedback-marked")
    assert "Searched with rejected (1)" in page.inner_text("#feedback-marked")
    wait_images_loaded(page, "#feedback-marked img, #result-grid img")
    watch.assert_clean(live.key("investigator"))


def test_a_result_is_confirmed_from_the_large_view(live: Live, watched: tuple[Any, Watch]) -> None:
    """The investigator decides looking at the crop large: Confirm there marks the result
    (on the server and on its card), and the next crop shows its own, unmarked state."""
    page, watch = watched
    sign_in(page, live, "investigator")
    ids = search(page, sketches(live, 5), top_k=4)
    page.locator("#result-grid > li").first.locator("button.thumb").click()
    page.wait_for_selector("#viewer[open]")
    page.click("#viewer-marks button.confirm")
    page.wait_for_selector('#viewer-marks button.confirm[aria-pressed="true"]')
    page.wait_for_selector(f'#result-grid > li[data-gallery-id="{ids[0]}"].confirmed')
    page.keyboard.press("ArrowRight")
    page.wait_for_function(
        "id => document.querySelector('#viewer-title').textContent.includes('item ' + id)",
        arg=ids[1],
    )
    assert page.get_attribute("#viewer-marks button.confirm", "aria-pressed") == "false"
    page.keyboard.press("Escape")
    search_id = page.inner_text("#result-summary").rsplit("search ", 1)[1].strip()
    with live.api("investigator") as api:
        marks = api.get(f"/api/v1/searches/{search_id}").json()["marks"]
    assert [(m["gallery_id"], m["mark"]) for m in marks] == [(ids[0], "confirmed")]
    watch.assert_clean(live.key("investigator"))


# --- operator --------------------------------------------------------------------------------


def test_operator_uploads_crops_and_deletes_one(
    live: Live, watched: tuple[Any, Watch], tmp_path: Path
) -> None:
    page, watch = watched
    files = []
    for seed in (901, 902, 903):
        path = tmp_path / f"crop-{seed}.jpg"
        path.write_bytes(jpeg(seed, (48, 96)))
        files.append(str(path))
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(jpeg(904)[:200])  # a truncated JPEG: refused by the server, alone
    sign_in(page, live, "operator")
    page.set_input_files("#crop-files", [*files, str(broken)])
    page.fill("#up-camera", "c9")
    page.fill("#up-time", "2024-06-01T10:30:00")
    page.fill("#up-location", "Platform 4")
    page.click("#upload-submit")
    summary = page.wait_for_selector("#upload-results li.summary")
    assert summary.inner_text() == "3 stored, 0 already stored, 1 failed"
    assert "broken.jpg: refused" in page.inner_text("#upload-results")
    assert "not stored" in page.inner_text("#upload-error")
    # Browse only camera c9: the three new crops.
    page.fill("#g-cameras", "c9")
    page.click("#gallery-apply")
    page.wait_for_function("() => document.querySelectorAll('#gallery-grid > li').length === 3")
    assert "Items 1–3 of 3" in page.inner_text("#g-range")
    wait_images_loaded(page, "#gallery-grid img")
    assert "Platform 4" in page.inner_text("#gallery-grid")
    with live.api("operator") as api:
        listed = api.get("/api/v1/gallery", params={"camera_id": "c9"}).json()["items"]
    assert {i["captured_at"][:10] for i in listed} == {"2024-06-01"}
    victim = page.locator("#gallery-grid > li").first.get_attribute("data-gallery-id")
    page.click(f'#gallery-grid > li[data-gallery-id="{victim}"] button.delete')
    page.wait_for_selector("#confirm-delete[open]")
    page.fill("#delete-reason", "uploaded by mistake")
    page.click("#delete-confirm")
    page.wait_for_function("() => document.querySelectorAll('#gallery-grid > li').length === 2")
    with live.api("admin") as api:
        assert api.get(f"/api/v1/gallery/{victim}").status_code == 404
        events = api.get("/api/v1/audit", params={"gallery_id": victim}).json()["items"]
    assert events[0]["details"]["reason"] == "uploaded by mistake"
    watch.assert_clean(live.key("operator"), http_errors=True)


def test_operator_pages_through_the_gallery(live: Live, watched: tuple[Any, Watch]) -> None:
    page, watch = watched
    sign_in(page, live, "operator")
    page.fill("#g-cameras", "c1, c2")
    page.select_option("#g-size", "24")
    page.click("#gallery-apply")
    page.wait_for_selector("#gallery-grid:not([aria-busy]) > li")
    total = int(page.inner_text("#g-range").rsplit(" of ", 1)[1])
    assert total >= len(live.gallery_ids) - 1  # another test may have deleted one
    first_page = page.locator("#gallery-grid > li").count()
    assert first_page == min(24, total)
    assert page.is_disabled("#g-prev") and page.is_disabled("#g-next") == (total <= 24)
    watch.assert_clean(live.key("operator"))


# --- the API documentation, air-gapped ---------------------------------------------------------


def test_docs_and_redoc_render_with_the_network_cut_off(
    live: Live, watched: tuple[Any, Watch]
) -> None:
    page, watch = watched
    page.goto(live.base + "/docs")
    page.wait_for_selector(".swagger-ui .opblock-summary-path")
    paths = page.locator(".swagger-ui .opblock-summary-path").all_inner_texts()
    assert any("/api/v1/search" in p for p in paths)
    if SCREENSHOT_DIR:
        page.screenshot(path=str(Path(SCREENSHOT_DIR) / "docs-offline.png"))
    page.goto(live.base + "/redoc")
    page.wait_for_selector("h1:has-text('sketch-reid')")
    page.wait_for_selector("text=Download OpenAPI specification")
    menu = page.inner_text("body")
    assert all(tag in menu for tag in ("gallery", "search", "apikeys"))
    if SCREENSHOT_DIR:
        page.screenshot(path=str(Path(SCREENSHOT_DIR) / "redoc-offline.png"))
    assert watch.requests, "no request was seen"
    assert all(r.startswith((live.base + "/", "blob:", "data:")) for r in watch.requests), [
        r for r in watch.requests if not r.startswith(live.base)
    ]
    assert watch.blocked == [], f"requests tried to leave the host: {watch.blocked}"
    assert watch.csp_violations == []


def test_the_page_itself_loads_nothing_from_elsewhere(
    live: Live, watched: tuple[Any, Watch]
) -> None:
    page, watch = watched
    page.goto(live.base + "/")
    page.wait_for_selector("#view-signin:not([hidden])")
    loaded = set(watch.requests)
    assert loaded >= {live.base + "/", live.base + "/static/js/main.js"}
    assert all(r.startswith(live.base + "/") for r in loaded), loaded
    watch.assert_clean()
