"""Deletions are audited; search records say which results were deleted, when and by whom;
searches are purged after the retention period, and the purge is audited too."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import update

from app.api.main import create_app
from app.cli.main import main
from app.core.config import Settings, get_settings
from app.db.models import Search
from app.db.session import make_engine
from app.db.types import utcnow
from app.ml.bundle.store import Bundle

from .conftest import Keys, upload
from .helpers import jpeg, sketch_png


def _key_id(client: TestClient, keys: Keys, name: str) -> int:
    listed = client.get("/api/v1/apikeys", headers=keys.admin).json()
    return int(next(k["id"] for k in listed if k["name"] == name))


def _search(client: TestClient, keys: Keys, seed: int = 1) -> dict[str, Any]:
    r = client.post(
        "/api/v1/search",
        files={"sketch": ("s.png", sketch_png(seed), "image/png")},
        data={"top_k": "10"},
        headers=keys.investigator,
    )
    assert r.status_code == 200, r.text
    return dict(r.json())


def test_a_deleted_result_is_marked_in_the_search_record(client: TestClient, keys: Keys) -> None:
    ids = [upload(client, keys.operator, jpeg(s)).json()["id"] for s in range(3)]
    found = _search(client, keys)
    assert sorted(r["gallery_id"] for r in found["results"]) == ids
    gone = ids[1]
    r = client.delete(
        f"/api/v1/gallery/{gone}",
        params={"reason": "retention period of case 17 ended"},
        headers=keys.operator,
    )
    assert r.status_code == 204, r.text
    operator_id = _key_id(client, keys, "operator")

    record = client.get(f"/api/v1/searches/{found['search_id']}", headers=keys.investigator)
    assert record.status_code == 200, record.text
    results = {x["gallery_id"]: x for x in record.json()["results"]}
    assert set(results) == set(ids)  # the record itself is never rewritten
    deleted = results[gone]["deleted"]
    assert deleted["deleted_by"] == operator_id
    assert deleted["reason"] == "retention period of case 17 ended"
    assert deleted["deleted_at"] >= record.json()["created_at"]
    assert all(results[i]["deleted"] is None for i in ids if i != gone)

    missing = client.get(f"/api/v1/gallery/{gone}", headers=keys.investigator)
    assert missing.status_code == 404
    detail = missing.json()["detail"]
    assert "was deleted" in detail and f"API key {operator_id}" in detail

    events = client.get("/api/v1/audit", params={"gallery_id": gone}, headers=keys.admin)
    assert events.status_code == 200, events.text
    [event] = events.json()["items"]
    assert event["action"] == "gallery.delete" and event["api_key_id"] == operator_id
    assert event["actor"] == "api" and event["gallery_id"] == gone
    assert len(event["details"]["sha256"]) == 64
    assert event["details"]["reason"] == "retention period of case 17 ended"
    assert client.get("/api/v1/audit", headers=keys.operator).status_code == 403
    assert client.get("/api/v1/audit", headers=keys.investigator).status_code == 403


def test_delete_without_reason_and_a_failed_delete_are_audited_correctly(
    client: TestClient, keys: Keys
) -> None:
    item = upload(client, keys.operator, jpeg(1)).json()
    earlier = client.get("/api/v1/audit", headers=keys.admin).json()["total"]  # the keys' own
    assert client.delete(f"/api/v1/gallery/{item['id']}", headers=keys.admin).status_code == 204
    assert client.delete(f"/api/v1/gallery/{item['id']}", headers=keys.admin).status_code == 404
    long_reason = client.delete(
        "/api/v1/gallery/1", params={"reason": "x" * 501}, headers=keys.admin
    )
    assert long_reason.status_code == 422
    events = client.get("/api/v1/audit", params={"offset": earlier}, headers=keys.admin).json()
    assert [(e["action"], e["gallery_id"]) for e in events["items"]] == [
        ("gallery.delete", item["id"])
    ]
    assert events["items"][0]["details"]["reason"] is None


@pytest.fixture
def cli_env(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Iterator[Settings]:
    monkeypatch.setenv("SKETCHREID_DATA_DIR", str(settings.DATA_DIR))
    monkeypatch.setenv("SKETCHREID_DATABASE_URL", settings.DATABASE_URL)
    monkeypatch.delenv("SKETCHREID_SEARCH_RETENTION_DAYS", raising=False)
    get_settings.cache_clear()
    yield settings
    get_settings.cache_clear()


def test_purge_removes_searches_past_retention_and_is_audited(
    cli_env: Settings,
    bundle: Bundle,
    keys: Keys,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    settings = cli_env
    with TestClient(create_app(settings, bundle=bundle)) as client:
        upload(client, keys.operator, jpeg(1))
        old, recent = _search(client, keys, 1), _search(client, keys, 2)
    engine = make_engine(settings.DATABASE_URL)
    with engine.begin() as conn:
        conn.execute(
            update(Search)
            .where(Search.id == uuid.UUID(old["search_id"]))
            .values(created_at=utcnow() - timedelta(days=40))
        )
    engine.dispose()

    assert main(["searches", "purge"]) == 2  # no retention period set: nothing to go by
    assert "SEARCH_RETENTION_DAYS" in capsys.readouterr().err
    assert main(["searches", "purge", "--older-than-days", "30", "--dry-run"]) == 0
    assert "would remove 1 search" in capsys.readouterr().out
    assert (settings.search_dir / old["search_id"]).is_dir()

    monkeypatch.setenv("SKETCHREID_SEARCH_RETENTION_DAYS", "30")
    get_settings.cache_clear()
    assert main(["searches", "purge"]) == 0
    assert "removed 1 search" in capsys.readouterr().out
    assert not (settings.search_dir / old["search_id"]).exists()
    assert (settings.search_dir / recent["search_id"]).is_dir()

    with TestClient(create_app(settings, bundle=bundle)) as client:
        gone = client.get(f"/api/v1/searches/{old['search_id']}", headers=keys.admin)
        assert gone.status_code == 404
        kept = client.get(f"/api/v1/searches/{recent['search_id']}", headers=keys.admin)
        assert kept.status_code == 200
        events = client.get(
            "/api/v1/audit", params={"action": "searches.purge"}, headers=keys.admin
        ).json()["items"]
    assert len(events) == 1 and events[0]["actor"] == "cli"
    assert events[0]["details"]["count"] == 1 and events[0]["details"]["older_than_days"] == 30


def _events(client: TestClient, keys: Keys, action: str) -> list[dict[str, Any]]:
    r = client.get("/api/v1/audit", params={"action": action, "limit": 500}, headers=keys.admin)
    assert r.status_code == 200, r.text
    return list(r.json()["items"])


def test_key_changes_over_http_are_audited_with_who_whom_and_role(
    client: TestClient, keys: Keys
) -> None:
    admin = _key_id(client, keys, "admin")
    created_before = len(_events(client, keys, "apikey.create"))
    r = client.post(
        "/api/v1/apikeys",
        json={"name": "DC Jones", "role": "investigator", "expires_in_days": 30},
        headers=keys.admin,
    )
    assert r.status_code == 201, r.text
    new = r.json()
    assert (new["created_by"], new["revoked_by"]) == (admin, None)
    *_, event = _events(client, keys, "apikey.create")
    assert len(_events(client, keys, "apikey.create")) == created_before + 1
    assert (event["api_key_id"], event["actor"]) == (admin, "api")
    assert event["details"]["key_id"] == new["id"]
    assert event["details"]["name"] == "DC Jones" and event["details"]["role"] == "investigator"
    assert event["details"]["expires_at"] == new["expires_at"].replace("Z", "+00:00")

    revoked = client.post(f"/api/v1/apikeys/{new['id']}/revoke", headers=keys.admin)
    assert revoked.status_code == 200 and revoked.json()["revoked_by"] == admin
    assert (
        client.post(f"/api/v1/apikeys/{new['id']}/revoke", headers=keys.admin).json()["revoked_by"]
        == admin
    )
    listed = {k["id"]: k for k in client.get("/api/v1/apikeys", headers=keys.admin).json()}
    assert (listed[new["id"]]["created_by"], listed[new["id"]]["revoked_by"]) == (admin, admin)
    revokes = [e for e in _events(client, keys, "apikey.revoke") if e["actor"] == "api"]
    assert len(revokes) == 1  # revoking a revoked key again changed nothing
    assert (revokes[0]["api_key_id"], revokes[0]["details"]) == (
        admin,
        {"key_id": new["id"], "name": "DC Jones", "role": "investigator"},
    )

    # Refused changes leave no event (and no key).
    assert client.post(f"/api/v1/apikeys/{admin}/revoke", headers=keys.admin).status_code == 409
    bad = client.post("/api/v1/apikeys", json={"name": " ", "role": "admin"}, headers=keys.admin)
    assert bad.status_code == 400
    assert len(_events(client, keys, "apikey.create")) == created_before + 1
    assert len([e for e in _events(client, keys, "apikey.revoke") if e["actor"] == "api"]) == 1


def test_key_changes_on_the_command_line_are_audited(
    cli_env: Settings, bundle: Bundle, keys: Keys, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["apikey", "create", "--role", "operator", "--name", "night desk"]) == 0
    capsys.readouterr()
    with TestClient(create_app(cli_env, bundle=bundle)) as client:
        key_id = _key_id(client, keys, "night desk")
        assert main(["apikey", "revoke", str(key_id)]) == 0
        listed = {k["id"]: k for k in client.get("/api/v1/apikeys", headers=keys.admin).json()}
        assert (listed[key_id]["created_by"], listed[key_id]["revoked_by"]) == (None, None)
        [created] = [
            e for e in _events(client, keys, "apikey.create") if e["details"]["key_id"] == key_id
        ]
        [revoked] = [
            e for e in _events(client, keys, "apikey.revoke") if e["details"]["key_id"] == key_id
        ]
    for event in (created, revoked):
        assert (event["actor"], event["api_key_id"]) == ("cli", None)
        assert (event["details"]["name"], event["details"]["role"]) == ("night desk", "operator")
    assert revoked["created_at"] >= created["created_at"]


def test_an_admin_opening_another_keys_search_is_audited(client: TestClient, keys: Keys) -> None:
    upload(client, keys.operator, jpeg(1))
    found = _search(client, keys)
    sid = found["search_id"]
    owner = _key_id(client, keys, "investigator")
    admin = _key_id(client, keys, "admin")

    own = client.get(f"/api/v1/searches/{sid}", headers=keys.investigator)
    assert own.status_code == 200
    assert client.get(found["sketch_url"], headers=keys.investigator).status_code == 200
    assert _events(client, keys, "search.open") == []  # the owner reading: nothing to record
    other = client.get(f"/api/v1/searches/{sid}", headers=keys.investigator2)
    assert other.status_code == 404  # another investigator does not see it at all
    assert _events(client, keys, "search.open") == []

    assert client.get(f"/api/v1/searches/{sid}", headers=keys.admin).status_code == 200
    assert client.get(found["sketch_url"], headers=keys.admin).status_code == 200
    translated = found["translated_image_url"]
    assert translated is not None
    assert client.get(translated, headers=keys.admin).status_code == 200
    gallery_id = found["results"][0]["gallery_id"]
    mark = client.post(
        f"/api/v1/searches/{sid}/marks",
        json={"gallery_id": gallery_id, "mark": "confirmed"},
        headers=keys.admin,
    )
    assert mark.status_code == 201, mark.text
    refined = client.post("/api/v1/search", data={"refine": sid}, headers=keys.admin)
    assert refined.status_code == 200, refined.text
    events = _events(client, keys, "search.open")
    assert [(e["api_key_id"], e["actor"]) for e in events] == [(admin, "api")] * 5
    assert [e["details"] for e in events] == [
        {"search_id": sid, "owner": owner, "what": "record"},
        {"search_id": sid, "owner": owner, "what": "sketch", "index": 0},
        {"search_id": sid, "owner": owner, "what": "translated", "index": 0},
        {"search_id": sid, "owner": owner, "what": "mark"},
        {"search_id": sid, "owner": owner, "what": "refine"},
    ]

    mine = client.post(
        "/api/v1/search",
        files={"sketch": ("s.png", sketch_png(2), "image/png")},
        headers=keys.admin,
    ).json()
    assert client.get(f"/api/v1/searches/{mine['search_id']}", headers=keys.admin).is_success
    assert len(_events(client, keys, "search.open")) == 5  # an admin's own search: not recorded


def test_the_audit_filter_offers_every_action(client: TestClient) -> None:
    from app.services import audit

    openapi = client.get("/openapi.json").json()
    [action] = [
        p for p in openapi["paths"]["/api/v1/audit"]["get"]["parameters"] if p["name"] == "action"
    ]
    assert set(action["schema"]["enum"]) == set(audit.ACTIONS)
