"""Restarts, index rebuilds, other-process writes and failure atomicity."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import delete

from app.api.main import create_app
from app.core.config import Settings
from app.db.models import Embedding, GalleryItem
from app.db.session import make_engine, session_scope
from app.errors import SketchReidError
from app.index.store import INDEX_FILE, META_FILE
from app.ml.bundle.store import Bundle
from app.services import gallery
from app.services.context import close_context, open_context, sync_index

from .conftest import Keys, snapshot, upload
from .helpers import build_tiny_bundle, jpeg, sketch_png


def _search(client: TestClient, keys: Keys, **form: Any) -> list[tuple[int, float]]:
    r = client.post(
        "/api/v1/search",
        files={"sketch": ("s.png", sketch_png(3), "image/png")},
        data={"top_k": 20, **form},
        headers=keys.investigator,
    )
    assert r.status_code == 200, r.text
    return [(x["gallery_id"], round(x["score"], 5)) for x in r.json()["results"]]


def _app(settings: Settings, bundle: Bundle) -> TestClient:
    return TestClient(create_app(settings, bundle=bundle))


def test_restart_keeps_items_and_results(settings: Settings, bundle: Bundle, keys: Keys) -> None:
    with _app(settings, bundle) as client:
        for seed in range(8):
            assert upload(client, keys.operator, jpeg(seed)).status_code == 201
        results = _search(client, keys)
        state = snapshot(client)
    index_file = settings.index_dir / INDEX_FILE
    assert index_file.is_file()  # saved on shutdown

    with _app(settings, bundle) as client:
        assert client.app.state.ctx.index_status["source"] == "file"  # type: ignore[attr-defined]
        assert _search(client, keys) == results
        assert {k: v for k, v in snapshot(client).items() if k != "search_files"} == {
            k: v for k, v in state.items() if k != "search_files"
        } | {"searches": 2}

    index_file.unlink()
    with _app(settings, bundle) as client:
        status = client.app.state.ctx.index_status  # type: ignore[attr-defined]
        assert status["source"] == "rebuilt" and status["reason"] == "no saved index"
        assert _search(client, keys) == results


def test_inconsistent_or_corrupt_index_is_rebuilt(
    settings: Settings, bundle: Bundle, keys: Keys
) -> None:
    with _app(settings, bundle) as client:
        ids = [upload(client, keys.operator, jpeg(s)).json()["id"] for s in range(5)]
    # The database changes behind the saved index's back (e.g. restored from a backup).
    engine = make_engine(settings.DATABASE_URL)
    with engine.begin() as conn:
        conn.execute(delete(Embedding).where(Embedding.item_id == ids[0]))
        conn.execute(delete(GalleryItem).where(GalleryItem.id == ids[0]))
    engine.dispose()
    with _app(settings, bundle) as client:
        status = client.app.state.ctx.index_status  # type: ignore[attr-defined]
        assert status["source"] == "rebuilt" and "5 items" in status["reason"]
        assert client.app.state.ctx.index.ids().tolist() == ids[1:]  # type: ignore[attr-defined]

    path = settings.index_dir / INDEX_FILE
    path.write_bytes(path.read_bytes()[:-10] + b"0123456789")
    with _app(settings, bundle) as client:
        status = client.app.state.ctx.index_status  # type: ignore[attr-defined]
        assert status["source"] == "rebuilt" and "checksum" in status["reason"]
        assert len(_search(client, keys)) == 4

    (settings.index_dir / META_FILE).write_text("{not json")
    with _app(settings, bundle) as client:
        assert client.app.state.ctx.index_status["source"] == "rebuilt"  # type: ignore[attr-defined]


def test_other_process_writes_are_picked_up_and_readyz_reports_them(
    settings: Settings, bundle: Bundle, keys: Keys
) -> None:
    with _app(settings, bundle) as client:
        upload(client, keys.operator, jpeg(1))
        # Another process (e.g. `sketchreid ingest`) adds an item to the database.
        other = open_context(settings, bundle)
        with session_scope(other.sessions) as session:
            item, created = gallery.ingest_image(other, session, jpeg(2))
        close_context(other)
        assert created
        ready = client.get("/readyz")
        assert ready.status_code == 503 and ready.json()["checks"]["index"] is False
        assert sync_index(client.app.state.ctx) == (1, 0)  # type: ignore[attr-defined]
        assert client.get("/readyz").status_code == 200
        assert item.id in [i for i, _ in _search(client, keys)]


def test_database_behind_head_refuses_to_start(
    make_settings: Callable[..., Settings], bundle: Bundle, tmp_path: Any
) -> None:
    settings = make_settings(DATABASE_URL=f"sqlite:///{tmp_path / 'empty.db'}")
    with pytest.raises(SketchReidError, match="sketchreid db upgrade"), _app(settings, bundle):
        pass


def test_failure_while_indexing_leaves_nothing(
    client: TestClient, keys: Keys, monkeypatch: pytest.MonkeyPatch
) -> None:
    upload(client, keys.operator, jpeg(1))
    before = snapshot(client)
    ctx = client.app.state.ctx  # type: ignore[attr-defined]

    def broken_add(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("disk full")

    monkeypatch.setattr(ctx.index, "add", broken_add)
    r = upload(client, keys.operator, jpeg(2))
    assert r.status_code == 500 and r.json() == {"detail": "internal server error"}
    assert snapshot(client) == before


def test_failure_at_commit_leaves_nothing(
    settings: Settings, bundle: Bundle, monkeypatch: pytest.MonkeyPatch
) -> None:
    ctx = open_context(settings, bundle)
    try:
        with session_scope(ctx.sessions) as session:
            gallery.ingest_image(ctx, session, jpeg(1))
            blobs_before = ctx.blobs.files()

            def broken_commit() -> None:
                raise RuntimeError("connection lost")

            monkeypatch.setattr(session, "commit", broken_commit)
            with pytest.raises(RuntimeError):
                gallery.ingest_image(ctx, session, jpeg(2))
            monkeypatch.undo()
            assert ctx.blobs.files() == blobs_before
            assert len(ctx.index) == 1
            assert len(gallery.list_items(session)[0]) == 1
    finally:
        close_context(ctx)


def test_concurrent_duplicates_make_one_item(settings: Settings, bundle: Bundle) -> None:
    ctx = open_context(settings, bundle)
    results: list[tuple[int, bool]] = []
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            with session_scope(ctx.sessions) as session:
                item, created = gallery.ingest_image(ctx, session, jpeg(7))
                results.append((item.id, created))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    close_context(ctx)
    assert not errors
    assert len({i for i, _ in results}) == 1
    assert sum(created for _, created in results) == 1
    assert len(ctx.blobs.files()) == 1


def test_model_change_reembeds_the_gallery(
    settings: Settings, bundle: Bundle, keys: Keys, tmp_path: Any
) -> None:
    from sqlalchemy import select

    from app.db.models import Embedding
    from app.ml.bundle.store import load_bundle
    from app.ml.images import load_image
    from app.services.context import embedding_key, vector_from_bytes

    with _app(settings, bundle) as client:
        ids = [upload(client, keys.operator, jpeg(seed)).json()["id"] for seed in range(3)]
    other = load_bundle(build_tiny_bundle(tmp_path / "other", version="2.0", seed=1))
    old_key, new_key = embedding_key(bundle.manifest), embedding_key(other.manifest)
    assert new_key != old_key
    images = [load_image(jpeg(seed)) for seed in range(3)]
    expected = other.embedder.embed(images)
    assert not np.allclose(expected, bundle.embedder.embed(images), atol=1e-3)  # other weights

    with _app(settings, other) as client:
        ctx = client.app.state.ctx  # type: ignore[attr-defined]
        assert ctx.embedding_key == new_key and ctx.index_status["source"] == "rebuilt"
        assert ctx.index.ids().tolist() == ids
        with session_scope(ctx.sessions) as session:
            rows = {
                (row.item_id, row.model_version): vector_from_bytes(row.vector, ctx.dim)
                for row in session.scalars(select(Embedding))
            }
        assert {k for _, k in rows} == {old_key, new_key}  # the old vectors stay
        stored = np.stack([rows[(i, new_key)] for i in ids])
        np.testing.assert_allclose(stored, expected, atol=1e-5)  # embedded from the blobs
        # The search runs in the new space: its scores are the new model's cosines.
        query = other.embedder.embed([load_image(sketch_png(3))], modality="sketch")[0]
        r = client.post(
            "/api/v1/search",
            files={"sketch": ("s.png", sketch_png(3), "image/png")},
            data={"translate": "false"},
            headers=keys.investigator,
        )
        assert r.status_code == 200, r.text
        got = {x["gallery_id"]: x["score"] for x in r.json()["results"]}
        want = dict(zip(ids, (expected @ query).tolist(), strict=True))
        assert got.keys() == want.keys()
        for item_id, score in got.items():
            assert score == pytest.approx(want[item_id], abs=1e-4)
