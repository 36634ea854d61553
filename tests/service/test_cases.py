"""Cases and notes (issue 23): a case on a search, notes on a search and its results, past
searches by case, who sees which cases, the audit trail of every change, /cameras, and an
empty result that says why."""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient

from .conftest import Keys, snapshot, upload
from .helpers import jpeg, sketch_png


def _fill(client: TestClient, keys: Keys, n: int = 6) -> list[int]:
    ids = []
    for seed in range(n):
        r: Any = upload(
            client,
            keys.operator,
            jpeg(seed),
            camera_id=f"c{seed % 2 + 1}",
            captured_at=f"2024-05-01T13:{seed:02d}:00Z",
        )
        assert r.status_code == 201, r.text
        ids.append(r.json()["id"])
    return ids


def _case(client: TestClient, headers: dict[str, str], ref: str, title: str | None = None) -> int:
    r = client.post("/api/v1/cases", json={"reference": ref, "title": title}, headers=headers)
    assert r.status_code == 201, r.text
    return int(r.json()["id"])


def _search(
    client: TestClient, headers: dict[str, str], seed: int = 0, **form: str
) -> dict[str, Any]:
    r = client.post(
        "/api/v1/search",
        files={"sketch": (f"witness-{seed}.png", sketch_png(seed), "image/png")},
        data={"top_k": "3", **form},
        headers=headers,
    )
    assert r.status_code == 200, r.text
    return dict(r.json())


def _events(client: TestClient, keys: Keys, action: str) -> list[dict[str, Any]]:
    r = client.get(f"/api/v1/audit?action={action}", headers=keys.admin)
    assert r.status_code == 200, r.text
    return list(r.json()["items"])


def test_a_search_in_a_case_is_listed_by_case_with_its_thumbnail_and_filters(
    client: TestClient, keys: Keys
) -> None:
    _fill(client, keys)
    case = _case(client, keys.investigator, "2026/0417", "Robbery, Market Street")
    other = _case(client, keys.investigator, "2026/0999")
    inside = _search(
        client,
        keys.investigator,
        1,
        case_id=str(case),
        camera_id="c1",
        captured_after="2024-05-01T13:00:00Z",
    )
    assert inside["case"] == {
        "id": case,
        "reference": "2026/0417",
        "title": "Robbery, Market Street",
    }
    _search(client, keys.investigator, 2, case_id=str(other))
    _search(client, keys.investigator, 3)

    page = client.get(f"/api/v1/searches?case_id={case}", headers=keys.investigator).json()
    assert [i["id"] for i in page["items"]] == [inside["search_id"]] and page["total"] == 1
    entry = page["items"][0]
    assert entry["case"]["reference"] == "2026/0417"
    assert entry["camera_ids"] == ["c1"]
    assert entry["captured_after"].startswith("2024-05-01T13:00:00")
    assert entry["view"] == inside["view"]
    assert entry["result_count"] == len(inside["results"])
    assert entry["sketch_names"] == ["witness-1.png"]
    thumb = client.get(entry["sketch_urls"][0], headers=keys.investigator)
    assert thumb.status_code == 200 and thumb.content == sketch_png(1)

    everything = client.get("/api/v1/searches", headers=keys.investigator).json()
    assert everything["total"] == 3

    listed = client.get("/api/v1/cases", headers=keys.investigator).json()["items"]
    counts = {c["reference"]: c["search_count"] for c in listed}
    assert counts == {"2026/0417": 1, "2026/0999": 1}
    record = client.get(f"/api/v1/searches/{inside['search_id']}", headers=keys.investigator)
    assert record.json()["case"]["id"] == case
    assert record.json()["sketches"][0]["filename"] == "witness-1.png"


def test_investigators_see_their_own_cases_and_admins_all(client: TestClient, keys: Keys) -> None:
    _fill(client, keys, 3)
    mine = _case(client, keys.investigator, "A-1")
    theirs = _case(client, keys.investigator2, "A-1")  # the same reference, another key: fine
    assert mine != theirs

    assert [
        c["id"] for c in client.get("/api/v1/cases", headers=keys.investigator).json()["items"]
    ] == [mine]
    every = client.get("/api/v1/cases", headers=keys.admin).json()["items"]
    assert {c["id"] for c in every} == {mine, theirs}

    # Another investigator's case does not exist for this key: not to read, list, or search in.
    assert client.get(f"/api/v1/cases/{theirs}", headers=keys.investigator).status_code == 404
    assert (
        client.get(f"/api/v1/searches?case_id={theirs}", headers=keys.investigator).status_code
        == 404
    )
    before = snapshot(client)
    r = client.post(
        "/api/v1/search",
        files={"sketch": ("s.png", sketch_png(0), "image/png")},
        data={"case_id": str(theirs)},
        headers=keys.investigator,
    )
    assert r.status_code == 404 and f"case {theirs}" in r.json()["detail"]
    assert snapshot(client) == before  # no search recorded
    assert client.get(f"/api/v1/cases/{theirs}", headers=keys.admin).status_code == 200

    # Operators do casework on no case.
    assert client.get("/api/v1/cases", headers=keys.operator).status_code == 403


def test_case_references_are_checked(client: TestClient, keys: Keys) -> None:
    _case(client, keys.investigator, "R-7")
    again = client.post("/api/v1/cases", json={"reference": " R-7 "}, headers=keys.investigator)
    assert again.status_code == 409 and "R-7" in again.json()["detail"]
    for body, status in (
        ({"reference": "   "}, 422),
        ({"reference": "x" * 101}, 422),
        ({"reference": "a\u0000b"}, 400),
        ({"title": "no reference"}, 422),
        ({"reference": "ok", "extra": 1}, 422),
    ):
        r = client.post("/api/v1/cases", json=body, headers=keys.investigator)
        assert r.status_code == status, (body, r.text)
    listed = client.get("/api/v1/cases", headers=keys.investigator).json()["items"]
    assert [c["reference"] for c in listed] == ["R-7"]  # nothing half-written


def test_notes_on_a_search_and_its_results_are_kept_with_who_and_when(
    client: TestClient, keys: Keys
) -> None:
    _fill(client, keys)
    out = _search(client, keys.investigator, 4)
    sid = out["search_id"]
    first = out["results"][0]["gallery_id"]
    r = client.post(
        f"/api/v1/searches/{sid}/notes",
        json={"text": "  Same jacket as the witness described.  "},
        headers=keys.investigator,
    )
    assert r.status_code == 201, r.text
    on_search = r.json()
    assert (
        on_search["gallery_id"] is None
        and on_search["text"] == "Same jacket as the witness described."
    )
    r = client.post(
        f"/api/v1/searches/{sid}/notes",
        json={"text": "Limp on the left leg", "gallery_id": first},
        headers=keys.investigator,
    )
    assert r.status_code == 201, r.text

    record = client.get(f"/api/v1/searches/{sid}", headers=keys.investigator).json()
    notes = record["case_notes"]
    assert [(n["gallery_id"], n["text"]) for n in notes] == [
        (None, "Same jacket as the witness described."),
        (first, "Limp on the left leg"),
    ]
    me = client.get("/api/v1/whoami", headers=keys.investigator).json()["id"]
    assert {n["api_key_id"] for n in notes} == {me} and all(n["created_at"] for n in notes)
    listed = client.get("/api/v1/searches", headers=keys.investigator).json()["items"]
    assert listed[0]["note_count"] == 2

    events = _events(client, keys, "note.add")
    assert [(e["details"]["text"], e["gallery_id"], e["api_key_id"]) for e in events] == [
        ("Same jacket as the witness described.", None, me),
        ("Limp on the left leg", first, me),
    ]
    assert {e["details"]["search_id"] for e in events} == {sid}


def test_bad_notes_are_refused_and_nothing_is_written(client: TestClient, keys: Keys) -> None:
    ids = _fill(client, keys)
    out = _search(client, keys.investigator, 5)
    sid = out["search_id"]
    shown = {r["gallery_id"] for r in out["results"]}
    not_shown = next(i for i in ids if i not in shown)
    cases = (
        ({"text": "x", "gallery_id": not_shown}, 400, f"gallery item {not_shown}"),
        ({"text": "   "}, 422, "text"),
        ({"text": "x" * 4001}, 422, "text"),
        ({"text": "nul\u0000"}, 400, "NUL"),
    )
    for body, status, words in cases:
        r = client.post(f"/api/v1/searches/{sid}/notes", json=body, headers=keys.investigator)
        assert r.status_code == status, (body, r.text)
        assert words in r.text
    other = client.post(
        f"/api/v1/searches/{sid}/notes", json={"text": "mine?"}, headers=keys.investigator2
    )
    assert other.status_code == 404
    assert (
        client.get(f"/api/v1/searches/{sid}", headers=keys.investigator).json()["case_notes"] == []
    )
    assert _events(client, keys, "note.add") == []


def test_case_changes_are_audited(client: TestClient, keys: Keys) -> None:
    _fill(client, keys, 3)
    a = _case(client, keys.investigator, "C-1", "first title")
    b = _case(client, keys.investigator, "C-2")
    sid = _search(client, keys.investigator, 1, case_id=str(a))["search_id"]

    r = client.patch(
        f"/api/v1/cases/{a}", json={"title": "second title"}, headers=keys.investigator
    )
    assert r.status_code == 200 and r.json()["title"] == "second title"
    r = client.put(f"/api/v1/searches/{sid}/case", json={"case_id": b}, headers=keys.investigator)
    assert r.status_code == 200 and r.json()["reference"] == "C-2"
    r = client.put(
        f"/api/v1/searches/{sid}/case", json={"case_id": None}, headers=keys.investigator
    )
    assert r.status_code == 200 and r.json() is None
    assert client.get(f"/api/v1/searches/{sid}", headers=keys.investigator).json()["case"] is None

    created = _events(client, keys, "case.create")
    assert [(e["details"]["reference"], e["details"]["case_id"]) for e in created] == [
        ("C-1", a),
        ("C-2", b),
    ]
    [retitled] = _events(client, keys, "case.update")
    assert retitled["details"]["title"] == {"from": "first title", "to": "second title"}
    moved = _events(client, keys, "search.case")
    assert [e["details"]["case_id"] for e in moved] == [
        {"from": a, "to": b},
        {"from": b, "to": None},
    ]
    assert all(e["details"]["search_id"] == sid for e in moved)


def test_cameras_lists_what_the_gallery_holds(client: TestClient, keys: Keys) -> None:
    _fill(client, keys, 5)
    r = client.get("/api/v1/cameras", headers=keys.investigator)
    assert r.status_code == 200
    items = r.json()["items"]
    assert [(c["camera_id"], c["items"]) for c in items] == [("c1", 3), ("c2", 2)]
    assert items[0]["first_captured_at"].startswith("2024-05-01T13:00:00")
    assert items[0]["last_captured_at"].startswith("2024-05-01T13:04:00")


def test_an_empty_result_says_why(client: TestClient, keys: Keys) -> None:
    _fill(client, keys, 4)
    out = _search(client, keys.investigator, 0, camera_id="c99")
    assert out["results"] == []
    assert any("no crops from camera(s) c99" in n for n in out["notes"]), out["notes"]
    assert out["filtered_size"] == 0 and out["gallery_size"] == 4

    out = _search(
        client, keys.investigator, 0, camera_id="c1", captured_after="2030-01-01T00:00:00Z"
    )
    assert out["results"] == []
    assert any(
        "no crop from those cameras was captured in the time window" in n for n in out["notes"]
    )
    assert any("4 of the gallery's 4 crops were left out by the filters" in n for n in out["notes"])

    out = _search(client, keys.investigator, 0)
    assert len(out["results"]) == 3 and out["filtered_size"] is None
    assert not any("left out by the filters" in n for n in out["notes"])
