"""Input at the edges of what the types allow: a 4xx with a message, never a 500."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from fastapi.testclient import TestClient

from .conftest import Keys, snapshot, upload
from .helpers import jpeg

BEYOND_INT64 = 2**63  # 9223372036854775808: one more than the largest database id
INT64_MAX = 2**63 - 1


@pytest.mark.parametrize("item_id", [BEYOND_INT64, 10**30, INT64_MAX, -1, -BEYOND_INT64, 0])
@pytest.mark.parametrize(
    ("method", "template"),
    [
        ("GET", "/api/v1/gallery/{}"),
        ("GET", "/api/v1/gallery/{}/image"),
        ("DELETE", "/api/v1/gallery/{}"),
        ("POST", "/api/v1/apikeys/{}/revoke"),
    ],
)
def test_ids_beyond_the_database_range_are_404(
    client: TestClient, keys: Keys, method: str, template: str, item_id: int
) -> None:
    r = client.request(method, template.format(item_id), headers=keys.admin)
    assert r.status_code == 404, r.text
    assert str(item_id) in r.json()["detail"]


@pytest.mark.parametrize("offset", [BEYOND_INT64, 10**30, -BEYOND_INT64])
def test_offset_beyond_the_database_range_is_422(
    client: TestClient, keys: Keys, offset: int
) -> None:
    r = client.get(f"/api/v1/gallery?offset={offset}", headers=keys.admin)
    assert r.status_code == 422, r.text
    assert "offset" in r.json()["detail"]


def test_largest_offset_is_an_empty_page(client: TestClient, keys: Keys) -> None:
    assert upload(client, keys.operator, jpeg(1)).status_code == 201
    r = client.get(f"/api/v1/gallery?offset={INT64_MAX}", headers=keys.admin)
    assert r.status_code == 200, r.text
    assert r.json()["items"] == [] and r.json()["total"] == 1
    assert r.json()["next_offset"] is None
    assert snapshot(client)["items"] == 1


# In UTC these fall before year 1 or after year 9999, which no datetime can hold.
BEYOND_THE_CALENDAR = ("0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00")


@pytest.mark.parametrize("when", BEYOND_THE_CALENDAR)
def test_capture_time_beyond_the_calendar_is_422_on_upload(
    client: TestClient, keys: Keys, when: str
) -> None:
    before = snapshot(client)
    r = upload(client, keys.operator, jpeg(1), captured_at=when)
    assert r.status_code == 422, r.text
    assert "captured_at" in r.json()["detail"] and "range" in r.json()["detail"]
    batch = client.post(
        "/api/v1/gallery/batch",
        files=[("images", ("a.jpg", jpeg(1), "image/jpeg"))],
        data={"metadata": f'[{{"captured_at": "{when}"}}]'},
        headers=keys.operator,
    )
    assert batch.status_code == 200, batch.text
    result = batch.json()["results"][0]
    assert (result["status"], result["http_status"]) == ("error", 422)
    assert "range" in result["error"]
    assert snapshot(client) == before


@pytest.mark.parametrize("when", BEYOND_THE_CALENDAR)
@pytest.mark.parametrize("name", ["captured_after", "captured_before"])
def test_filter_time_beyond_the_calendar_is_422(
    client: TestClient, keys: Keys, when: str, name: str
) -> None:
    before = snapshot(client)
    listing = client.get("/api/v1/gallery", params={name: when}, headers=keys.admin)
    assert listing.status_code == 422, listing.text
    assert name in listing.json()["detail"]
    search = client.post(
        "/api/v1/search",
        files={"sketch": ("s.png", jpeg(2), "image/jpeg")},
        data={name: when},
        headers=keys.investigator,
    )
    assert search.status_code == 422, search.text
    assert name in search.json()["detail"]
    assert snapshot(client) == before


def test_first_and_last_instants_of_the_calendar_are_stored_and_read(
    client: TestClient, keys: Keys, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A PostgreSQL session in a zone east of UTC cannot show 9999-12-31T23:59Z (it would be
    # year 10000 there); the service must read and write timestamps in UTC whatever the
    # server's or the client's (PGTZ) zone.
    monkeypatch.setenv("PGTZ", "Asia/Tokyo")
    client.app.state.ctx.engine.dispose()  # type: ignore[attr-defined]
    first = upload(client, keys.operator, jpeg(1), captured_at="0001-01-01T00:00:00Z")
    last = upload(client, keys.operator, jpeg(2), captured_at="9999-12-31T23:59:59.999999Z")
    assert first.status_code == 201 and last.status_code == 201, (first.text, last.text)
    listing = client.get(
        "/api/v1/gallery",
        params={"captured_after": "0001-01-01T00:00:00Z"},
        headers=keys.admin,
    )
    assert listing.status_code == 200, listing.text
    assert [i["captured_at"] for i in listing.json()["items"]] == [
        "0001-01-01T00:00:00Z",
        "9999-12-31T23:59:59.999999Z",
    ]


def test_two_image_parts_in_one_upload_are_422(client: TestClient, keys: Keys) -> None:
    before = snapshot(client)
    r = client.post(
        "/api/v1/gallery",
        files=[
            ("image", ("a.jpg", jpeg(1), "image/jpeg")),
            ("image", ("b.jpg", jpeg(2), "image/jpeg")),
        ],
        headers=keys.operator,
    )
    assert r.status_code == 422, r.text
    assert "image" in r.json()["detail"] and "2 times" in r.json()["detail"]
    assert r.json()["errors"][0]["field"] == "image"
    r = upload(client, keys.operator, jpeg(1), captured_at="2024-01-01T00:00:00Z")
    assert r.status_code == 201  # one of each is fine
    after = snapshot(client)
    assert after["items"] == before["items"] + 1


@pytest.mark.parametrize(
    ("method", "url", "files", "data", "field"),
    [
        (
            "POST",
            "/api/v1/gallery",
            [("image", ("a.jpg", "jpeg", "image/jpeg"))],
            [("camera_id", "c1"), ("camera_id", "c2")],
            "camera_id",
        ),
        (
            "POST",
            "/api/v1/search",
            [("sketch", ("a.jpg", "jpeg", "image/jpeg"))],
            [("refine", str(uuid.uuid4())), ("refine", str(uuid.uuid4()))],
            "refine",
        ),
        (
            "POST",
            "/api/v1/search",
            [("sketch", ("a.jpg", "jpeg", "image/jpeg"))],
            [("top_k", "1"), ("top_k", "50")],
            "top_k",
        ),
        (
            "POST",
            "/api/v1/gallery/batch",
            [("images", ("a.jpg", "jpeg", "image/jpeg"))],
            [("metadata", "[null]"), ("metadata", "[null]")],
            "metadata",
        ),
        ("GET", "/api/v1/gallery?limit=1&limit=500", None, None, "limit"),
        (
            "GET",
            "/api/v1/gallery?captured_after=2024-01-01T00:00Z&captured_after=2025-01-01T00:00Z",
            None,
            None,
            "captured_after",
        ),
    ],
)
def test_single_valued_fields_sent_twice_are_422(
    client: TestClient,
    keys: Keys,
    method: str,
    url: str,
    files: list[Any] | None,
    data: list[tuple[str, str]] | None,
    field: str,
) -> None:
    before = snapshot(client)
    if files is not None:
        files = [(name, (fn, jpeg(3), ct)) for name, (fn, _, ct) in files]
    if data:  # repeated plain fields go as multipart parts without a file name
        files = list(files or []) + [(name, (None, value)) for name, value in data]
    r = client.request(method, url, files=files, headers=keys.admin)
    assert r.status_code == 422, r.text
    assert field in r.json()["detail"] and "2 times" in r.json()["detail"]
    assert snapshot(client) == before
