"""Keys and roles on every endpoint; the open health endpoints; key management; metrics."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.core.config import Settings
from app.db.models import ApiKey
from app.db.session import make_engine, make_session_factory, session_scope
from app.db.types import utcnow

from .conftest import Keys, upload
from .helpers import jpeg, sketch_png

ZERO_UUID = "00000000-0000-0000-0000-000000000000"


def _request(client: TestClient, name: str, headers: dict[str, str]) -> Any:
    """One call per endpoint; the bodies are valid so only the key decides the status."""
    calls = {
        "ingest": lambda: client.post(
            "/api/v1/gallery", files={"image": ("a.jpg", jpeg(50), "image/jpeg")}, headers=headers
        ),
        "batch": lambda: client.post(
            "/api/v1/gallery/batch",
            files=[("images", ("a.jpg", jpeg(51), "image/jpeg"))],
            headers=headers,
        ),
        "list": lambda: client.get("/api/v1/gallery", headers=headers),
        "get": lambda: client.get("/api/v1/gallery/1", headers=headers),
        "image": lambda: client.get("/api/v1/gallery/1/image", headers=headers),
        "delete": lambda: client.delete("/api/v1/gallery/2", headers=headers),
        "search": lambda: client.post(
            "/api/v1/search",
            files={"sketch": ("s.png", sketch_png(1), "image/png")},
            headers=headers,
        ),
        "search_record": lambda: client.get(f"/api/v1/searches/{ZERO_UUID}", headers=headers),
        "translated": lambda: client.get(
            f"/api/v1/searches/{ZERO_UUID}/translated", headers=headers
        ),
        "sketch": lambda: client.get(f"/api/v1/searches/{ZERO_UUID}/sketch", headers=headers),
        "audit": lambda: client.get("/api/v1/audit", headers=headers),
        "model": lambda: client.get("/api/v1/model", headers=headers),
        "keys_list": lambda: client.get("/api/v1/apikeys", headers=headers),
        "keys_create": lambda: client.post(
            "/api/v1/apikeys", json={"name": "x", "role": "investigator"}, headers=headers
        ),
        "keys_revoke": lambda: client.post("/api/v1/apikeys/999/revoke", headers=headers),
    }
    return calls[name]()


# Which roles may call which endpoint (admin may call everything).
ALLOWED = {
    "ingest": {"operator"},
    "batch": {"operator"},
    "list": {"operator", "investigator"},
    "get": {"operator", "investigator"},
    "image": {"operator", "investigator"},
    "delete": {"operator"},
    "search": {"investigator"},
    "search_record": {"investigator"},
    "translated": {"investigator"},
    "sketch": {"investigator"},
    "model": {"operator", "investigator"},
    "keys_list": set(),
    "keys_create": set(),
    "keys_revoke": set(),
    "audit": set(),
}

# What an allowed role gets (roles are tried in the order admin, operator, investigator, so
# e.g. the admin deletes item 2 and the operator then finds it gone; the searches and the key
# asked for do not exist).
ALLOWED_STATUS = {
    "ingest": {200, 201},
    "batch": {200},
    "list": {200},
    "get": {200},
    "image": {200},
    "delete": {204, 404},
    "search": {200},
    "search_record": {404},
    "translated": {404},
    "sketch": {404},
    "model": {200},
    "keys_list": {200},
    "keys_create": {201},
    "keys_revoke": {404},
    "audit": {200},
}


@pytest.fixture
def seeded(client: TestClient, keys: Keys) -> TestClient:
    for seed in (1, 2):
        assert upload(client, keys.operator, jpeg(seed)).status_code == 201
    return client


@pytest.mark.parametrize("endpoint", sorted(ALLOWED))
def test_roles(seeded: TestClient, keys: Keys, endpoint: str) -> None:
    for role in ("admin", "operator", "investigator"):
        r = _request(seeded, endpoint, getattr(keys, role))
        if role == "admin" or role in ALLOWED[endpoint]:
            assert r.status_code in ALLOWED_STATUS[endpoint], (endpoint, role, r.text)
        else:
            assert r.status_code == 403, (endpoint, role, r.text)
            assert "role" in r.json()["detail"]
    for headers, needle in (
        ({}, "missing API key"),
        ({"X-API-Key": "skr_not-a-real-key"}, "unknown API key"),
        (keys.revoked, "revoked"),
    ):
        r = _request(seeded, endpoint, headers)
        assert r.status_code == 401, (endpoint, headers)
        assert needle in r.json()["detail"]


def test_health_endpoints_need_no_key(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200
    checks = ready.json()["checks"]
    assert {k: checks[k] for k in ("model", "database", "index", "disk")} == dict.fromkeys(
        ("model", "database", "index", "disk"), True
    )
    assert checks["disk_free_mb"] >= checks["disk_min_free_mb"]
    assert client.get("/metrics").status_code == 200


def test_metrics_count_requests_and_stages(client: TestClient, keys: Keys) -> None:
    upload(client, keys.operator, jpeg(1))
    client.post(
        "/api/v1/search",
        files={"sketch": ("s.png", sketch_png(1), "image/png")},
        headers=keys.investigator,
    )
    client.get("/api/v1/gallery/77", headers=keys.admin)
    text = client.get("/metrics").text
    assert (
        'sketchreid_http_requests_total{method="POST",route="/api/v1/gallery",status="201"} 1.0'
        in text
    )
    assert 'route="/api/v1/gallery/{item_id}",status="404"} 1.0' in text
    for stage in ("decode", "translate", "embed", "search", "ingest"):
        assert f'sketchreid_stage_duration_seconds_count{{stage="{stage}"}}' in text
    assert "sketchreid_index_items 1.0" in text


def test_key_management_over_http(client: TestClient, keys: Keys) -> None:
    r = client.post(
        "/api/v1/apikeys", json={"name": "desk 4", "role": "investigator"}, headers=keys.admin
    )
    assert r.status_code == 201
    created = r.json()
    assert created["key"].startswith("skr_") and created["key_prefix"] == created["key"][:10]
    new_key = {"X-API-Key": created["key"]}
    assert client.get("/api/v1/gallery", headers=new_key).status_code == 200
    listed = client.get("/api/v1/apikeys", headers=keys.admin).json()
    assert "desk 4" in [k["name"] for k in listed]
    assert all("key" not in k and "key_hash" not in k for k in listed)
    revoked = client.post(f"/api/v1/apikeys/{created['id']}/revoke", headers=keys.admin)
    assert revoked.status_code == 200 and revoked.json()["revoked_at"]
    assert client.get("/api/v1/gallery", headers=new_key).status_code == 401
    bad = client.post("/api/v1/apikeys", json={"name": "x", "role": "root"}, headers=keys.admin)
    assert bad.status_code == 422 and "role" in bad.json()["detail"]
    assert client.post("/api/v1/apikeys/999/revoke", headers=keys.admin).status_code == 404


def test_model_endpoint(client: TestClient, keys: Keys) -> None:
    body = client.get("/api/v1/model", headers=keys.investigator).json()
    assert body["name"] == "tiny" and body["version"] == "1.0" and body["dim"] == 64
    assert body["translator"] is True
    assert body["manifest"]["members"][0]["spec"]["arch"] == "resnet20"
    assert body["index"]["type"] == "auto"  # the default INDEX_TYPE
    assert body["index"]["kind"] == "flat"  # what auto chose for a small gallery


def _key_id(client: TestClient, keys: Keys, name: str) -> int:
    listed = client.get("/api/v1/apikeys", headers=keys.admin).json()
    return int(next(k["id"] for k in listed if k["name"] == name))


def test_the_last_admin_key_cannot_be_revoked_over_http(client: TestClient, keys: Keys) -> None:
    me = _key_id(client, keys, "admin")
    r = client.post(f"/api/v1/apikeys/{me}/revoke", headers=keys.admin)
    assert r.status_code == 409, r.text
    assert "last active admin key" in r.json()["detail"]
    assert client.get("/api/v1/apikeys", headers=keys.admin).status_code == 200  # still works

    # With a second admin key, either may be revoked (including one's own) ...
    second = client.post(
        "/api/v1/apikeys", json={"name": "admin 2", "role": "admin"}, headers=keys.admin
    ).json()
    second_headers = {"X-API-Key": second["key"]}
    r = client.post(f"/api/v1/apikeys/{me}/revoke", headers=keys.admin)
    assert r.status_code == 200 and r.json()["revoked_at"], r.text
    assert client.get("/api/v1/apikeys", headers=keys.admin).status_code == 401
    # ... but not the one that is then the last.
    r = client.post(f"/api/v1/apikeys/{second['id']}/revoke", headers=second_headers)
    assert r.status_code == 409
    # Revoking an already revoked key changes nothing and is not a conflict.
    r = client.post(f"/api/v1/apikeys/{me}/revoke", headers=second_headers)
    assert r.status_code == 200


def expire_key(settings: Settings, key_id: int, *, ago: timedelta = timedelta(minutes=1)) -> None:
    """Move a key's expiry into the past (as if its days had run out)."""
    engine = make_engine(settings.DATABASE_URL)
    try:
        with session_scope(make_session_factory(engine)) as session:
            row = session.get(ApiKey, key_id)
            assert row is not None
            row.expires_at = utcnow() - ago
            session.commit()
    finally:
        engine.dispose()


def test_a_key_that_expires_stops_working_and_says_when(
    client: TestClient, keys: Keys, settings: Settings
) -> None:
    r = client.post(
        "/api/v1/apikeys",
        json={"name": "visiting officer", "role": "investigator", "expires_in_days": 30},
        headers=keys.admin,
    )
    assert r.status_code == 201, r.text
    created = r.json()
    expires = datetime.fromisoformat(created["expires_at"])
    assert timedelta(days=29.9) < expires - datetime.now(UTC) < timedelta(days=30.1)
    assert created["status"] == "active"
    headers = {"X-API-Key": created["key"]}
    assert client.get("/api/v1/gallery", headers=headers).status_code == 200

    expire_key(settings, created["id"])
    r = client.get("/api/v1/gallery", headers=headers)
    assert r.status_code == 401
    assert "expired at" in r.json()["detail"] and "ask an admin" in r.json()["detail"]
    listed = {k["name"]: k for k in client.get("/api/v1/apikeys", headers=keys.admin).json()}
    assert listed["visiting officer"]["status"] == "expired"
    assert listed["operator"]["status"] == "active" and listed["operator"]["expires_at"] is None
    assert listed["revoked"]["status"] == "revoked"
    for days in (0, -1, 3651, "soon"):
        bad = client.post(
            "/api/v1/apikeys",
            json={"name": "x", "role": "operator", "expires_in_days": days},
            headers=keys.admin,
        )
        assert bad.status_code == 422 and "expires_in_days" in bad.json()["detail"], days


def test_an_expired_admin_key_does_not_count_as_another_admin(
    client: TestClient, keys: Keys, settings: Settings
) -> None:
    second = client.post(
        "/api/v1/apikeys",
        json={"name": "admin 2", "role": "admin", "expires_in_days": 1},
        headers=keys.admin,
    ).json()
    expire_key(settings, second["id"])
    me = _key_id(client, keys, "admin")
    r = client.post(f"/api/v1/apikeys/{me}/revoke", headers=keys.admin)
    assert r.status_code == 409 and "last active admin key" in r.json()["detail"]
