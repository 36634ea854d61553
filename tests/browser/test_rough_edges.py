"""The page's rough edges found in the trial (issue 23 item 6), in Chromium against a live
server: the operator's upload lines and fields, the gallery's cards and delete dialog, and a
key refused while an investigator is at work."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from PIL import Image
from service.helpers import jpeg

from .conftest import Live, Watch
from .test_page import result_ids, search, sign_in, sketches, wait_images_loaded


def _png(seed: int, path: Path) -> str:
    with Image.open(io.BytesIO(jpeg(seed, (48, 96)))) as img:
        img.save(path)
    return str(path)


def _upload(page: Any, files: list[str]) -> str:
    """Choose the files, press Upload; the upload's summary line."""
    page.set_input_files("#crop-files", files)
    page.click("#upload-submit")
    return str(page.wait_for_selector("#upload-results li.summary").inner_text())


def test_a_name_without_a_camera_is_refused_once_and_the_next_batch_starts_blank(
    live: Live, watched: tuple[Any, Watch], tmp_path: Path
) -> None:
    page, watch = watched
    sign_in(page, live, "operator")
    page.check("#up-camera-from-name")
    page.fill("#up-location", "Platform 4")
    nameless = _png(911, tmp_path / "999_04_1234.png")
    market = tmp_path / "0001_c5s1_001051_00.jpg"
    market.write_bytes(jpeg(912, (48, 96)))
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(jpeg(913)[:200])  # a cut JPEG: refused for its bytes (camera c7 given)
    assert _upload(page, [nameless, str(market)]) == "1 stored, 0 already stored, 1 failed"
    lines = page.locator("#upload-results li.error").all_inner_texts()
    assert len(lines) == 1 and "holds no camera" in lines[0], lines
    assert lines[0].count("999_04_1234.png") == 1, lines  # the file named once
    with live.api("operator") as api:
        listed = api.get("/api/v1/gallery", params={"camera_id": "c5"}).json()["items"]
    assert [i["filename"] for i in listed] == ["0001_c5s1_001051_00.jpg"]
    # A batch with a failure keeps its details (to send the failed files again), and says so.
    assert page.input_value("#up-location") == "Platform 4"
    assert "kept" in page.inner_text("#upload-error")

    page.uncheck("#up-camera-from-name")
    page.fill("#up-camera", "c7")
    page.fill("#up-time", "2024-06-01T10:30:00")
    assert _upload(page, [str(broken)]) == "0 stored, 0 already stored, 1 failed"
    line = page.inner_text("#upload-results li.error")
    assert line.count("broken.jpg") == 1 and "corrupt" in line, line

    crop = tmp_path / "crop-914.jpg"
    crop.write_bytes(jpeg(914, (48, 96)))
    assert _upload(page, [str(crop)]) == "1 stored, 0 already stored, 0 failed"
    said = page.inner_text("#upload-next")
    assert "camera c7" in said and "Platform 4" in said  # what this batch got
    # A batch stored whole: its details are cleared, the next batch cannot inherit them.
    for field in ("#up-camera", "#up-time", "#up-location"):
        assert page.input_value(field) == "", field
    assert "cleared" in page.inner_text("#upload-next")
    watch.assert_clean(live.key("operator"), http_errors=True)


def test_gallery_cards_name_the_file_newest_first_and_the_delete_dialog_shows_the_crop(
    live: Live, watched: tuple[Any, Watch]
) -> None:
    page, watch = watched
    with live.api("operator") as api:
        made = api.post(
            "/api/v1/gallery",
            files={"image": ("Platform 4 - 0815.jpg", jpeg(921, (48, 96)), "image/jpeg")},
            data={"external_id": "VMS-77", "camera_id": "c8"},
        ).json()
    sign_in(page, live, "operator")
    page.wait_for_selector("#gallery-grid:not([aria-busy]) > li")
    first = page.locator("#gallery-grid > li").first
    assert first.get_attribute("data-gallery-id") == str(made["id"])  # the newest first
    ids = [
        int(x)
        for x in page.eval_on_selector_all(
            "#gallery-grid > li", "els => els.map(e => e.dataset.galleryId)"
        )
    ]
    assert ids == sorted(ids, reverse=True)
    card = first.inner_text()
    assert "Platform 4 - 0815.jpg" in card and "VMS-77" in card
    first.locator("button.delete").click()
    page.wait_for_selector("#confirm-delete[open]")
    wait_images_loaded(page, "#delete-crop img")
    assert "Platform 4 - 0815.jpg" in page.inner_text("#confirm-delete")
    page.click("#confirm-delete button[value=cancel]")
    with live.api("operator") as api:
        assert api.get(f"/api/v1/gallery/{made['id']}").status_code == 200
    watch.assert_clean(live.key("operator"))


def test_a_key_refused_mid_search_keeps_the_sketches_and_results_and_asks_for_a_key(
    live: Live, watched: tuple[Any, Watch]
) -> None:
    page, watch = watched
    with live.api("admin") as admin:
        old = admin.post("/api/v1/apikeys", json={"name": "DC Reed", "role": "investigator"})
    old_key = old.json()
    page.goto(live.base + "/")
    page.fill("#api-key", old_key["key"])
    page.press("#api-key", "Enter")
    page.wait_for_selector("#whoami:not([hidden])")
    ids = search(page, sketches(live, 3), top_k=5)
    summary = page.inner_text("#result-summary")
    wait_images_loaded(
        page, "#result-grid img, #history-list img, #query-strip img"
    )  # no request in flight
    with live.api("admin") as admin:
        assert admin.post(f"/api/v1/apikeys/{old_key['id']}/revoke").status_code == 200
        new_key = admin.post(
            "/api/v1/apikeys", json={"name": "DC Reed", "role": "investigator"}
        ).json()
    # The alert poll may meet the revoked key first and open the dialog (a modal: a mouse click
    # could not reach the button then): the search is submitted as a click on the button.
    page.evaluate("document.querySelector('#search-submit').click()")
    page.wait_for_selector("#reauth[open]")
    assert "revoked" in page.inner_text("#reauth-reason")
    assert page.evaluate("sessionStorage.length") == 0  # the refused key is gone
    # Under the dialog the investigator's work is as it was.
    assert page.inner_text("#sketch-list .name") == "3.jpg"
    assert result_ids(page) == ids and page.inner_text("#result-summary") == summary
    page.fill("#reauth-key", new_key["key"])
    page.click("#reauth-submit")
    page.wait_for_function("() => !document.querySelector('#reauth').open")
    assert page.inner_text("#whoami").startswith("DC Reed · investigator")
    assert page.is_visible("#view-search") and page.inner_text("#sketch-list .name") == "3.jpg"
    assert result_ids(page) == ids
    # A request still in flight with the old key (an alert poll) is refused after the new key
    # was given: that refusal says nothing about the new key, which stays.
    page.evaluate(
        """(old) => window.dispatchEvent(new CustomEvent("sketchreid:unauthorised",
            {detail: {status: 401, message: "revoked", key: old}}))""",
        old_key["key"],
    )
    page.wait_for_timeout(200)
    assert not page.evaluate("document.querySelector('#reauth').open")
    assert page.evaluate("sessionStorage.length") == 1
    page.fill("#top-k", "4")
    page.click("#search-submit")  # and it searches again, with the new key
    page.wait_for_function("() => document.querySelectorAll('#result-grid > li').length === 4")
    assert page.is_hidden("#search-error")
    watch.assert_clean(old_key["key"], http_errors=True)
    watch.assert_clean(new_key["key"], http_errors=True)
