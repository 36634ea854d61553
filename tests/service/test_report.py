"""GET /api/v1/searches/{id}/report: the result sheet (PDF) for the case file (issue 23).

The PDF is opened with pypdf and its text checked; its first page is rendered to PNG with
``pdftoppm`` (Debian's poppler-utils) and looked at: A4, mostly white, with ink on it.
"""

from __future__ import annotations

import io
import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from pypdf import PdfReader

from .conftest import Keys, upload
from .helpers import jpeg, sketch_png


def _text(pdf: bytes) -> str:
    reader = PdfReader(io.BytesIO(pdf))
    return "\n".join(page.extract_text() for page in reader.pages)


def _setup(client: TestClient, keys: Keys) -> dict[str, Any]:
    items = []
    for seed in range(6):
        r: Any = upload(
            client,
            keys.operator,
            jpeg(seed),
            camera_id=f"c{seed % 2 + 1}",
            captured_at=f"2024-05-01T13:{seed:02d}:00Z",
            external_id=f"ext-{seed}",
        )
        assert r.status_code == 201, r.text
        items.append(r.json())
    case = client.post(
        "/api/v1/cases",
        json={"reference": "2026/0417", "title": "Robbery on Market Street"},
        headers=keys.investigator,
    ).json()
    r = client.post(
        "/api/v1/search",
        files=[
            ("sketch", ("witness-a.png", sketch_png(1), "image/png")),
            ("sketch", ("witness-b.png", sketch_png(2), "image/png")),
        ],
        data={
            "top_k": "4",
            "case_id": str(case["id"]),
            "rerank": "true",
            "camera_id": ["c1", "c2"],
        },
        headers=keys.investigator,
    )
    assert r.status_code == 200, r.text
    out = r.json()
    first, second = out["results"][0]["gallery_id"], out["results"][1]["gallery_id"]
    sid = out["search_id"]
    assert (
        client.post(
            f"/api/v1/searches/{sid}/marks",
            json={"gallery_id": first, "mark": "confirmed"},
            headers=keys.investigator,
        ).status_code
        == 201
    )
    assert (
        client.post(
            f"/api/v1/searches/{sid}/notes",
            json={"text": "Same limp as on the bank's camera", "gallery_id": second},
            headers=keys.investigator,
        ).status_code
        == 201
    )
    assert (
        client.post(
            f"/api/v1/searches/{sid}/notes",
            json={"text": "Witness B unsure about the hat"},
            headers=keys.investigator,
        ).status_code
        == 201
    )
    by_id = {i["id"]: i for i in items}
    return {"out": out, "by_id": by_id, "first": first, "second": second}


def test_the_sheet_holds_the_case_the_model_every_crop_the_marks_and_the_notes(
    client: TestClient, keys: Keys
) -> None:
    s = _setup(client, keys)
    out = s["out"]
    r = client.get(f"/api/v1/searches/{out['search_id']}/report", headers=keys.investigator)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/pdf"
    assert "attachment" in r.headers["content-disposition"]
    reader = PdfReader(io.BytesIO(r.content))
    width, height = (float(v) for v in reader.pages[0].mediabox.upper_right)
    assert (round(width), round(height)) == (595, 842)  # A4 in points
    text = _text(r.content)
    flat = " ".join(text.split())

    assert "2026/0417" in text and "Robbery on Market Street" in text
    assert out["search_id"] in flat
    assert "investigator (key" in text  # who ran it
    assert "witness-a.png" in text and "witness-b.png" in text
    assert "Translation 1" in text and "Translation 2" in text
    model = client.get("/api/v1/model", headers=keys.investigator).json()
    assert model["embedding_key"] in flat
    for member in model["manifest"]["members"]:
        assert member["sha256"] in flat
    assert "Cameras c1, c2" in flat
    assert "k1 20" in flat
    for result in out["results"]:
        item = s["by_id"][result["gallery_id"]]
        assert item["sha256"] in flat, f"crop {item['id']}'s sha256 is not on the sheet"
        assert f"item {item['id']} · external id {item['external_id']}" in flat
        assert f"score {result['score']:.3f} (similarity)" in flat
        assert f"re-rank {result['distance']:.3f} (distance)" in flat
    assert "Mark: CONFIRMED by investigator" in flat
    assert "Same limp as on the bank's camera" in flat
    assert "Witness B unsure about the hat" in flat
    assert "Neither number is a probability" in flat
    assert "Sheet generated" in text and "generated" in text.split("Sheet generated")[0] + flat

    # A deletion after the search: the crop stays on the sheet with its sha256, marked deleted.
    gone = s["second"]
    assert client.request(
        "DELETE", f"/api/v1/gallery/{gone}", headers=keys.operator, json={"reason": "wrong camera"}
    ).status_code in (200, 204)
    again = " ".join(
        _text(
            client.get(
                f"/api/v1/searches/{out['search_id']}/report", headers=keys.investigator
            ).content
        ).split()
    )
    assert f"item {gone} · deleted" in again and s["by_id"][gone]["sha256"] in again


def test_the_sheet_is_for_whoever_may_read_the_search(client: TestClient, keys: Keys) -> None:
    s = _setup(client, keys)
    sid = s["out"]["search_id"]
    assert (
        client.get(f"/api/v1/searches/{sid}/report", headers=keys.investigator2).status_code == 404
    )
    assert client.get(f"/api/v1/searches/{sid}/report", headers=keys.operator).status_code == 403
    r = client.get(f"/api/v1/searches/{sid}/report", headers=keys.admin)
    assert r.status_code == 200
    opened = client.get("/api/v1/audit?action=search.open", headers=keys.admin).json()["items"]
    assert [e["details"]["what"] for e in opened] == ["report"]


def test_the_first_page_renders_on_a4_in_black_and_white(
    client: TestClient, keys: Keys, tmp_path: Path
) -> None:
    pdftoppm = shutil.which("pdftoppm")
    if pdftoppm is None:
        pytest.skip("pdftoppm not installed (Debian's poppler-utils)")
    s = _setup(client, keys)
    pdf = client.get(f"/api/v1/searches/{s['out']['search_id']}/report", headers=keys.investigator)
    (tmp_path / "sheet.pdf").write_bytes(pdf.content)
    subprocess.run(
        [
            pdftoppm,
            "-png",
            "-gray",
            "-r",
            "50",
            "-f",
            "1",
            "-l",
            "1",
            "-singlefile",
            str(tmp_path / "sheet.pdf"),
            str(tmp_path / "page"),
        ],
        check=True,
        timeout=120,
    )
    page = np.asarray(Image.open(tmp_path / "page.png").convert("L"))
    h, w = page.shape
    assert abs(h / w - 297 / 210) < 0.01  # A4 portrait
    ink = (page < 128).mean()
    assert 0.01 < ink < 0.5, ink  # text and pictures on a white page
