"""The gallery's file names (issue 23 item 6): the camera read from a Market-1501 name or the
file refused, each crop's original file name kept, the listing newest first on request."""

from __future__ import annotations

import json

from fastapi.testclient import TestClient

from .conftest import Keys, snapshot
from .helpers import jpeg, png


def _batch(
    client: TestClient, keys: Keys, names: list[str], metadata: list[object] | None = None
) -> list[dict[str, object]]:
    files = [("images", (n, jpeg(i + 40), "image/jpeg")) for i, n in enumerate(names)]
    data = {"camera_from_filename": "true"}
    if metadata is not None:
        data["metadata"] = json.dumps(metadata)
    r = client.post("/api/v1/gallery/batch", files=files, data=data, headers=keys.operator)
    assert r.status_code == 200, r.text
    results: list[dict[str, object]] = r.json()["results"]
    return results


def test_camera_from_names_refuses_a_name_that_holds_no_camera(
    client: TestClient, keys: Keys
) -> None:
    before = snapshot(client)
    results = _batch(client, keys, ["999_04_1234.png"])
    assert (results[0]["status"], results[0]["http_status"]) == ("error", 400)
    error = str(results[0]["error"])
    assert "holds no camera" in error and "0001_c1s1_001051_00.jpg" in error
    assert error.count("999_04_1234.png") == 1, error
    assert snapshot(client) == before  # no row, blob or index entry


def test_camera_from_names_reads_market_names_and_takes_a_given_camera(
    client: TestClient, keys: Keys
) -> None:
    names = ["0001_c1s1_001051_00.jpg", "-1_c6s2_000041_03.jpg", "999_04_1234.png", "x.jpg"]
    results = _batch(client, keys, names, [None, None, {"camera_id": "c4"}, None])
    assert [r["status"] for r in results] == ["created", "created", "created", "error"]
    cameras = [r["item"]["camera_id"] for r in results[:3]]  # type: ignore[index]
    assert cameras == ["c1", "c6", "c4"]
    assert "holds no camera" in str(results[3]["error"])
    assert snapshot(client)["items"] == 3


def test_an_item_keeps_its_original_file_name(client: TestClient, keys: Keys) -> None:
    single = client.post(
        "/api/v1/gallery",
        files={"image": ("Platform 4 - 0815.jpg", jpeg(60), "image/jpeg")},
        data={"external_id": "VMS-77"},
        headers=keys.operator,
    )
    assert single.status_code == 201, single.text
    assert single.json()["filename"] == "Platform 4 - 0815.jpg"
    assert single.json()["external_id"] == "VMS-77"
    files = [
        ("images", ("C:\\export\\cam2\\a.png", png(61), "image/png")),
        ("images", ("b.jpg", jpeg(62), "image/jpeg")),
    ]
    r = client.post("/api/v1/gallery/batch", files=files, headers=keys.operator)
    assert [x["item"]["filename"] for x in r.json()["results"]] == ["a.png", "b.jpg"]
    got = client.get(f"/api/v1/gallery/{single.json()['id']}", headers=keys.investigator)
    assert got.json()["filename"] == "Platform 4 - 0815.jpg"
    again = client.post(
        "/api/v1/gallery",
        files={"image": ("renamed.jpg", jpeg(60), "image/jpeg")},
        headers=keys.operator,
    )
    assert again.status_code == 200 and again.json()["filename"] == "Platform 4 - 0815.jpg"


def test_the_gallery_lists_newest_first_on_request(client: TestClient, keys: Keys) -> None:
    ids = [
        client.post(
            "/api/v1/gallery",
            files={"image": (f"{seed}.jpg", jpeg(seed), "image/jpeg")},
            headers=keys.operator,
        ).json()["id"]
        for seed in (70, 71, 72)
    ]
    listed = client.get("/api/v1/gallery?order=newest&limit=2", headers=keys.investigator).json()
    assert [i["id"] for i in listed["items"]] == ids[::-1][:2] and listed["next_offset"] == 2
    rest = client.get("/api/v1/gallery?order=newest&offset=2", headers=keys.investigator).json()
    assert [i["id"] for i in rest["items"]] == ids[:1]
    oldest = client.get("/api/v1/gallery?order=oldest", headers=keys.investigator).json()
    assert [i["id"] for i in oldest["items"]] == ids
    bad = client.get("/api/v1/gallery?order=random", headers=keys.investigator)
    assert bad.status_code == 422 and "order" in bad.text
