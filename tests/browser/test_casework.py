"""Casework on the page, in Chromium against a live server (issue 23): a case, a search in
it, a confirmed and a noted result, the result sheet downloaded and read, the past searches
by case, the score legend, an empty result that says why, and the print layout."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

from pypdf import PdfReader

from .conftest import Live, Watch
from .test_page import result_ids, search, sign_in, sketches, wait_images_loaded

SCREENSHOT_DIR = os.environ.get("SKETCHREID_SCREENSHOT_DIR")


def open_case(page: Any, reference: str, title: str) -> None:
    page.click("#case-new summary")
    page.fill("#case-ref", reference)
    page.fill("#case-title", title)
    page.click("#case-create")
    page.wait_for_function(
        "ref => document.querySelector('#case').selectedOptions[0]?.textContent.startsWith(ref)",
        arg=reference,
    )


def test_a_case_search_marked_and_noted_goes_into_the_result_sheet(
    live: Live, watched: tuple[Any, Watch], tmp_path: Path
) -> None:
    page, watch = watched
    sign_in(page, live, "investigator")
    open_case(page, "2026/0417", "Robbery on Market Street")
    ids = search(page, sketches(live, 4), top_k=5, rerank=True)
    assert page.inner_text("#result-case") == "Case 2026/0417 — Robbery on Market Street"
    legend = page.inner_text("#result-legend")
    assert "higher is closer" in legend and "lower is closer" in legend
    assert "ordered by it" in legend and "Neither is a probability" in legend

    first = page.locator(f'#result-grid > li[data-gallery-id="{ids[0]}"]')
    first.locator("button.confirm").click()
    page.wait_for_selector(f'#result-grid > li[data-gallery-id="{ids[0]}"].confirmed')
    assert first.locator(".mark-label").inner_text() == "Confirmed: the suspect"
    second = page.locator(f'#result-grid > li[data-gallery-id="{ids[1]}"]')
    second.locator("button.note-add").click()
    second.locator("textarea.note-text").fill("Same limp as on the bank's camera")
    second.locator(".note-form button[type=submit]").click()
    second.locator(".note-list li").wait_for()
    assert "Same limp as on the bank's camera" in second.locator(".note-list").inner_text()
    page.fill("#search-note", "Witness unsure about the hat")
    page.click("#search-note-form button[type=submit]")
    page.wait_for_selector("#search-notes li")

    with page.expect_download() as download:
        page.click("#report-download")
    pdf = Path(download.value.path()).read_bytes()
    assert pdf.startswith(b"%PDF")
    text = " ".join("\n".join(p.extract_text() for p in PdfReader(io.BytesIO(pdf)).pages).split())
    assert "2026/0417" in text and "Robbery on Market Street" in text
    assert "Mark: CONFIRMED" in text
    assert "Same limp as on the bank's camera" in text and "Witness unsure about the hat" in text
    with live.api("operator") as api:
        for gallery_id in ids:
            sha = api.get(f"/api/v1/gallery/{gallery_id}").json()["sha256"]
            assert sha in text, f"crop {gallery_id}'s sha256 is not on the sheet"
    if SCREENSHOT_DIR:  # the example sheet in docs/: SKETCHREID_SCREENSHOT_DIR=docs
        Path(SCREENSHOT_DIR, "result-sheet-example.pdf").write_bytes(pdf)
        if shutil.which("pdftoppm"):
            subprocess.run(
                [
                    "pdftoppm",
                    "-png",
                    "-r",
                    "60",
                    "-f",
                    "1",
                    "-l",
                    "1",
                    "-singlefile",
                    str(Path(SCREENSHOT_DIR, "result-sheet-example.pdf")),
                    str(Path(SCREENSHOT_DIR, "result-sheet-example")),
                ],
                check=True,
                timeout=120,
            )

    # The past searches: the entry shows the sketch, the case and the filters; by case.
    entry = page.locator("#history-list li").first
    entry.locator("img.history-thumb[src^='blob:']").wait_for()
    assert "Case 2026/0417" in entry.inner_text() and "all cameras" in entry.inner_text()
    search(page, sketches(live, 5), top_k=3)  # a second search, in the same case
    page.select_option("#case", "")
    search(page, sketches(live, 6), top_k=3)  # a third, in no case
    page.wait_for_function("() => document.querySelectorAll('#history-list li').length === 3")
    page.select_option("#history-case", label="2026/0417 — Robbery on Market Street")
    page.wait_for_function("() => document.querySelectorAll('#history-list li').length === 2")
    assert "No case" not in page.inner_text("#history-list")
    watch.assert_clean(live.key("investigator"))


def test_an_empty_result_says_why_and_cameras_come_from_the_gallery(
    live: Live, watched: tuple[Any, Watch]
) -> None:
    page, watch = watched
    sign_in(page, live, "investigator")
    page.wait_for_selector("#camera-choice button")
    chips = page.eval_on_selector_all(
        "#camera-choice button", "bs => bs.map(b => b.dataset.camera)"
    )
    assert chips == ["c1", "c2"]
    page.click("#camera-choice button[data-camera='c2']")
    assert page.input_value("#cameras") == "c2"
    page.click("#camera-choice button[data-camera='c2']")
    assert page.input_value("#cameras") == ""

    assert search(page, sketches(live, 3), top_k=4, cameras="c99") == []
    why = page.inner_text("#result-why")
    assert "No crop was found" in why and "no crops from camera(s) c99" in why
    assert result_ids(page) == []
    watch.assert_clean(live.key("investigator"))


def test_printing_shows_the_results_without_the_interface(
    live: Live, watched: tuple[Any, Watch]
) -> None:
    page, watch = watched
    sign_in(page, live, "investigator")
    ids = search(page, sketches(live, 2), top_k=4)
    wait_images_loaded(page, "#result-grid img")
    page.emulate_media(media="print")
    for hidden in (".topbar", "#search-form", "#result-tools", ".card-actions"):
        assert not page.is_visible(hidden), f"{hidden} is printed"
    assert page.is_visible("#result-grid") and page.is_visible("#result-legend")
    assert len(result_ids(page)) == len(ids)
    page.emulate_media(media="screen")
    assert page.is_visible("#search-form")
    watch.assert_clean(live.key("investigator"))
