from __future__ import annotations

import json
import threading
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from app.db.models import Embedding
from app.db.session import session_scope
from app.ml.images import load_image
from app.ml.infer.batching import QueueFullError
from app.services import gallery
from app.services.context import vector_from_bytes

from .conftest import Keys, snapshot, upload
from .helpers import jpeg, png


def _ingest(client: TestClient, keys: Keys, seed: int, **form: str) -> dict[str, Any]:
    r = upload(client, keys.operator, jpeg(seed), **form)
    assert r.status_code == 201, r.text
    return r.json()


def test_ingest_stores_item_blob_and_index_entry(client: TestClient, keys: Keys) -> None:
    r = upload(
        client,
        keys.operator,
        jpeg(1),
        camera_id=" c1 ",
        captured_at="2024-05-01T13:45:00+02:00",
        location="Main St",
        external_id="cam1-000123",
    )
    assert r.status_code == 201, r.text
    item = r.json()
    assert item["camera_id"] == "c1"
    assert item["captured_at"].startswith("2024-05-01T11:45:00")
    assert item["location"] == "Main St" and item["external_id"] == "cam1-000123"
    assert (item["width"], item["height"]) == (32, 64)
    assert item["content_type"] == "image/jpeg"
    state = snapshot(client)
    assert state["items"] == 1 and state["embeddings"] == 1
    assert state["index"] == [item["id"]]
    assert state["blobs"] == [f"{item['sha256']}.jpg"]

    got = client.get(f"/api/v1/gallery/{item['id']}", headers=keys.investigator)
    assert got.status_code == 200 and got.json() == item
    image = client.get(item["image_url"], headers=keys.investigator)
    assert image.status_code == 200
    assert image.content == jpeg(1)
    assert image.headers["content-type"] == "image/jpeg"


def test_same_bytes_again_returns_existing_item(client: TestClient, keys: Keys) -> None:
    first = _ingest(client, keys, 1)
    before = snapshot(client)
    again = upload(client, keys.admin, jpeg(1), camera_id="other")
    assert again.status_code == 200
    assert again.json()["id"] == first["id"]
    assert again.json()["camera_id"] is None  # the stored item is returned unchanged
    assert snapshot(client) == before


def test_list_pages_and_filters(client: TestClient, keys: Keys) -> None:
    ids = [
        _ingest(client, keys, 1, camera_id="c1", captured_at="2024-01-01T10:00:00Z")["id"],
        _ingest(client, keys, 2, camera_id="c2", captured_at="2024-01-02T10:00:00Z")["id"],
        _ingest(client, keys, 3, camera_id="c1", captured_at="2024-01-03T10:00:00Z")["id"],
        _ingest(client, keys, 4)["id"],
    ]
    page = client.get("/api/v1/gallery?limit=3", headers=keys.investigator).json()
    assert [i["id"] for i in page["items"]] == ids[:3]
    assert page["total"] == 4 and page["next_offset"] == 3
    page2 = client.get("/api/v1/gallery?limit=3&offset=3", headers=keys.operator).json()
    assert [i["id"] for i in page2["items"]] == ids[3:] and page2["next_offset"] is None

    cams = client.get("/api/v1/gallery?camera_id=c1", headers=keys.admin).json()
    assert [i["id"] for i in cams["items"]] == [ids[0], ids[2]]
    two = client.get("/api/v1/gallery?camera_id=c1&camera_id=c2", headers=keys.admin).json()
    assert two["total"] == 3
    window = client.get(
        "/api/v1/gallery",
        params={"captured_after": "2024-01-02T10:00:00Z", "captured_before": "2024-01-03T10:00Z"},
        headers=keys.admin,
    ).json()
    assert [i["id"] for i in window["items"]] == [ids[1]]  # after inclusive, before exclusive


def test_list_rejects_bad_parameters(client: TestClient, keys: Keys) -> None:
    for query, status, needle in (
        ("limit=0", 422, "limit"),
        ("limit=501", 422, "limit"),
        ("offset=-1", 422, "offset"),
        ("captured_after=yesterday", 400, "ISO 8601"),
        ("captured_after=2024-01-01T00:00:00", 400, "time zone"),
        ("captured_after=2024-02-01T00:00Z&captured_before=2024-01-01T00:00Z", 400, "earlier"),
    ):
        r = client.get(f"/api/v1/gallery?{query}", headers=keys.admin)
        assert r.status_code == status, (query, r.text)
        assert needle in r.json()["detail"], (query, r.json())


def test_unknown_ids_are_404(client: TestClient, keys: Keys) -> None:
    for method, url in (
        ("GET", "/api/v1/gallery/999"),
        ("GET", "/api/v1/gallery/999/image"),
        ("DELETE", "/api/v1/gallery/999"),
    ):
        r = client.request(method, url, headers=keys.admin)
        assert r.status_code == 404, (method, url)
        assert "999" in r.json()["detail"]
    r = client.get("/api/v1/gallery/abc", headers=keys.admin)  # not an id: no such resource
    assert r.status_code == 404


def test_delete_removes_row_blob_and_index_entry(client: TestClient, keys: Keys) -> None:
    keep = _ingest(client, keys, 1)
    gone = _ingest(client, keys, 2)
    r = client.delete(f"/api/v1/gallery/{gone['id']}", headers=keys.operator)
    assert r.status_code == 204
    state = snapshot(client)
    assert state["items"] == 1 and state["embeddings"] == 1
    assert state["index"] == [keep["id"]]
    assert state["blobs"] == [f"{keep['sha256']}.jpg"]
    assert client.get(f"/api/v1/gallery/{gone['id']}", headers=keys.admin).status_code == 404
    # Re-uploading the deleted image creates a new item with a new id (ids are never reused,
    # so old search records cannot point at another crop).
    again = upload(client, keys.operator, jpeg(2))
    assert again.status_code == 201 and again.json()["id"] > gone["id"]


def test_batch_mixes_good_bad_and_duplicate_files(client: TestClient, keys: Keys) -> None:
    existing = _ingest(client, keys, 9)
    files = [
        ("images", ("0001_c3s1_000151_01.jpg", jpeg(1), "image/jpeg")),
        ("images", ("broken.jpg", jpeg(2)[: len(jpeg(2)) * 2 // 3], "image/jpeg")),
        ("images", ("dup-in-db.jpg", jpeg(9), "image/jpeg")),
        ("images", ("0002_c5s2_000001_01.png", png(3), "image/png")),
        ("images", ("dup-in-batch.jpg", jpeg(1), "image/jpeg")),
        ("images", ("empty.jpg", b"", "image/jpeg")),
        ("images", ("naive.jpg", jpeg(4), "image/jpeg")),
    ]
    # camera_from_filename refuses a name without a camera unless its metadata gives one
    # (test_gallery_names.py): the names that hold none get c7 here.
    metadata = [
        {"location": "Gate 1"},
        {"camera_id": "c7"},
        {"camera_id": "c7"},
        {"camera_id": "explicit", "captured_at": "2024-03-01T08:00:00Z"},
        {"camera_id": "c7"},
        {"camera_id": "c7"},
        {"camera_id": "c7", "captured_at": "2024-03-01T08:00:00"},
    ]
    r = client.post(
        "/api/v1/gallery/batch",
        files=files,
        data={"metadata": json.dumps(metadata), "camera_from_filename": "true"},
        headers=keys.operator,
    )
    assert r.status_code == 200, r.text
    body = r.json()
    statuses = [(x["filename"], x["status"], x["http_status"]) for x in body["results"]]
    assert statuses == [
        ("0001_c3s1_000151_01.jpg", "created", 201),
        ("broken.jpg", "error", 400),
        ("dup-in-db.jpg", "exists", 200),
        ("0002_c5s2_000001_01.png", "created", 201),
        ("dup-in-batch.jpg", "exists", 200),
        ("empty.jpg", "error", 400),
        ("naive.jpg", "error", 400),
    ]
    assert (body["created"], body["existing"], body["failed"]) == (2, 2, 3)
    res = body["results"]
    assert res[0]["item"]["camera_id"] == "c3" and res[0]["item"]["location"] == "Gate 1"
    assert res[3]["item"]["camera_id"] == "explicit"
    assert res[2]["item"]["id"] == existing["id"]
    assert res[4]["item"]["id"] == res[0]["item"]["id"]
    assert "truncated" in res[1]["error"] and "broken.jpg" in res[1]["error"]
    assert "time zone" in res[6]["error"]
    state = snapshot(client)
    assert state["items"] == 3 and len(state["blobs"]) == 3 and len(state["index"]) == 3


def test_batch_rejects_bad_metadata_and_too_many_files(
    client: TestClient, keys: Keys, make_settings: Any, bundle: Any
) -> None:
    files = [
        ("images", ("a.jpg", jpeg(1), "image/jpeg")),
        ("images", ("b.jpg", jpeg(2), "image/jpeg")),
    ]
    for metadata, needle in (
        ("{not json", "not valid JSON"),
        ("[{}]", "one entry per file"),
        ('{"camera_id": "c1"}', "JSON list"),
    ):
        r = client.post(
            "/api/v1/gallery/batch", files=files, data={"metadata": metadata}, headers=keys.operator
        )
        assert r.status_code == 400 and needle in r.json()["detail"], r.text
    r = client.post(
        "/api/v1/gallery/batch",
        files=files,
        data={"metadata": json.dumps([{"colour": "red"}, None])},
        headers=keys.operator,
    )
    assert r.json()["results"][0]["status"] == "error"
    assert "colour" in r.json()["results"][0]["error"]
    assert r.json()["results"][1]["status"] == "created"

    from app.api.main import create_app

    with TestClient(create_app(make_settings(MAX_BATCH_FILES=1), bundle=bundle)) as small:
        r = small.post("/api/v1/gallery/batch", files=files, headers=keys.operator)
        assert r.status_code == 400 and "limit is 1" in r.json()["detail"]


def _batch(client: TestClient, keys: Keys, files: list[tuple[str, bytes]]) -> dict[str, Any]:
    r = client.post(
        "/api/v1/gallery/batch",
        files=[("images", (name, data, "image/jpeg")) for name, data in files],
        headers=keys.operator,
    )
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


def test_a_chunk_is_embedded_while_the_one_before_is_stored(
    client: TestClient, keys: Keys, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Batch uploads overlap the model and the disk (issue 21): while chunk k is stored,
    chunk k+1's embedding is already under way; every file ends as it would alone."""
    monkeypatch.setattr(gallery, "BATCH_DECODE_CHUNK", 2)
    embedded: list[int] = []  # chunks whose embedding started, in order
    real_embed, real_store = gallery._embed, gallery._store_chunk
    started = threading.Condition()

    def embed(ctx: Any, prepared: list[Any]) -> Any:
        with started:
            embedded.append(prepared[0][0])
            started.notify_all()
        return real_embed(ctx, prepared)

    overlapped: list[bool] = []

    def store(ctx: Any, session: Any, prepared: list[Any], *rest: Any) -> None:
        first = prepared[0][0]
        last = first == 4  # the third chunk (files 4 and 5) has no next one

        def next_started() -> bool:
            return last or max(embedded) > first

        with started:  # the next chunk's embedding starts without waiting for this store
            overlapped.append(started.wait_for(next_started, timeout=10))
        real_store(ctx, session, prepared, *rest)

    monkeypatch.setattr(gallery, "_embed", embed)
    monkeypatch.setattr(gallery, "_store_chunk", store)
    body = _batch(client, keys, [(f"{s}.jpg", jpeg(s)) for s in range(6)])
    assert [x["status"] for x in body["results"]] == ["created"] * 6
    assert overlapped == [True, True, True]
    ctx = client.app.state.ctx  # type: ignore[attr-defined]
    with session_scope(ctx.sessions) as session:
        stored = {
            int(e.item_id): vector_from_bytes(e.vector, ctx.dim)
            for e in session.query(Embedding).all()
        }
    for seed, result in enumerate(body["results"]):
        alone = ctx.bundle.embedder.embed([load_image(jpeg(seed))], modality="photo")[0]
        np.testing.assert_allclose(stored[result["item"]["id"]], alone, rtol=0, atol=1e-5)


def test_a_refused_chunk_refuses_the_rest_and_keeps_the_ones_before(
    client: TestClient, keys: Keys, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The inference queue refusing the second chunk's embedding (while the first is being
    stored): the first chunk stays stored, the second and third are 503, nothing of them is
    left behind."""
    monkeypatch.setattr(gallery, "BATCH_DECODE_CHUNK", 2)
    real_embed = gallery._embed
    calls: list[int] = []

    def embed(ctx: Any, prepared: list[Any]) -> Any:
        calls.append(len(prepared))
        if len(calls) == 2:
            raise QueueFullError("the server is busy (test)")
        return real_embed(ctx, prepared)

    monkeypatch.setattr(gallery, "_embed", embed)
    body = _batch(client, keys, [(f"{s}.jpg", jpeg(s)) for s in range(6)])
    assert [x["http_status"] for x in body["results"]] == [201, 201, 503, 503, 503, 503]
    assert all("not stored, send it again" in x["error"] for x in body["results"][2:])
    assert calls[:2] == [2, 2]  # (the third may have been embedded meanwhile: not stored)
    state = snapshot(client)
    assert state["items"] == 2 and len(state["blobs"]) == 2 and len(state["index"]) == 2
