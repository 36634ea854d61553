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
    assert client.delete(f"/api/v1/gallery/{item['id']}", headers=keys.admin).status_code == 204
    assert client.delete(f"/api/v1/gallery/{item['id']}", headers=keys.admin).status_code == 404
    long_reason = client.delete(
        "/api/v1/gallery/1", params={"reason": "x" * 501}, headers=keys.admin
    )
    assert long_reason.status_code == 422
    events = client.get("/api/v1/audit", headers=keys.admin).json()
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
