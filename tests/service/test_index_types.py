"""The service on each index type: filtered search with and without re-ranking is exact,
deletions through the API survive a restart, deletions by another process reach the index,
re-ranking reads the candidates' vectors from memory with the database's results."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from app.api.main import create_app
from app.core.config import Settings
from app.db.models import Embedding, GalleryItem
from app.db.session import make_engine, make_session_factory, session_scope
from app.index.store import IVF_MIN_TRAIN
from app.ml.bundle.store import Bundle
from app.ml.images import load_image
from app.ml.retrieval.rerank import k_reciprocal_rerank
from app.services import gallery
from app.services import search as search_service
from app.services import vectors as vectors_service
from app.services.context import (
    ServiceContext,
    close_context,
    embedding_key,
    load_vectors,
    open_context,
    sync_index,
    vector_to_bytes,
)
from app.services.vectors import candidate_vectors

from .conftest import Keys
from .helpers import sketch_png

SIZES = {"flat": 80, "hnsw": 80, "ivf": IVF_MIN_TRAIN + 40}  # IVF is built from 1000 items up
CAMERAS = ("c1", "c2", "c3")


def _populate(settings: Settings, bundle: Bundle, n: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` items with random embeddings straight into the database (no images needed: the
    index is built from the stored vectors). Returns (ids, vectors)."""
    rng = np.random.default_rng(7)
    dim = int(bundle.embedder.dim)
    vectors = rng.normal(size=(n, dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    key = embedding_key(bundle.manifest)
    start = datetime(2024, 1, 1, tzinfo=UTC)
    engine = make_engine(settings.DATABASE_URL)
    ids = []
    with session_scope(make_session_factory(engine)) as session:
        for i in range(n):
            sha = f"{i:064x}"
            item = GalleryItem(
                sha256=sha,
                blob_path=f"{sha[:2]}/{sha[2:4]}/{sha}.jpg",
                content_type="image/jpeg",
                width=32,
                height=64,
                camera_id=CAMERAS[i % 3],
                captured_at=start + timedelta(hours=i),
            )
            session.add(item)
            session.flush()
            vector = vector_to_bytes(vectors[i])
            session.add(Embedding(item_id=item.id, model_version=key, dim=dim, vector=vector))
            ids.append(item.id)
        session.commit()
    engine.dispose()
    return np.asarray(ids, dtype=np.int64), vectors


@pytest.fixture(params=sorted(SIZES))
def indexed(
    request: pytest.FixtureRequest,
    make_settings: Callable[..., Settings],
    bundle: Bundle,
    keys: Keys,
) -> Iterator[dict[str, Any]]:
    kind = request.param
    settings = make_settings(
        INDEX_TYPE=kind, INDEX_HNSW_EF_SEARCH=4096, INDEX_IVF_NPROBE=4096, RERANK_CANDIDATES=20
    )
    ids, vectors = _populate(settings, bundle, SIZES[kind])
    yield {"kind": kind, "settings": settings, "ids": ids, "vectors": vectors}


def _query(bundle: Bundle) -> np.ndarray:
    assert bundle.translator is not None
    sketch = bundle.translator.translate(load_image(sketch_png(1)))
    return bundle.embedder.embed([sketch], modality="photo")[0]


def _search(client: TestClient, keys: Keys, **form: Any) -> list[dict[str, Any]]:
    r = client.post(
        "/api/v1/search",
        files={"sketch": ("s.png", sketch_png(1), "image/png")},
        data=form,
        headers=keys.investigator,
    )
    assert r.status_code == 200, r.text
    return list(r.json()["results"])


def test_filtered_search_is_exact_with_and_without_rerank(
    indexed: dict[str, Any], bundle: Bundle, keys: Keys
) -> None:
    ids, vectors = indexed["ids"], indexed["vectors"]
    with TestClient(create_app(indexed["settings"], bundle=bundle)) as client:
        assert client.app.state.ctx.index.kind == indexed["kind"]  # type: ignore[attr-defined]
        q = _query(bundle)
        mask = np.arange(len(ids)) % 3 != 1  # cameras c1 and c3
        allowed_ids, allowed = ids[mask], vectors[mask]
        cos = allowed @ q
        order = np.argsort(-cos, kind="stable")

        plain = _search(client, keys, top_k=10, camera_id=["c1", "c3"])
        assert [r["gallery_id"] for r in plain] == allowed_ids[order[:10]].tolist()
        assert {r["camera_id"] for r in plain} <= {"c1", "c3"}

        reranked = _search(
            client, keys, top_k=10, camera_id=["c1", "c3"], rerank="true", k1=6, k2=3
        )
        cand = order[:20]  # RERANK_CANDIDATES nearest allowed items, best first
        g = allowed[cand]
        d = lambda a, b: np.clip(2 - 2 * a @ b.T, 0, 4)  # noqa: E731
        rr = k_reciprocal_rerank(
            d(q[None], g), np.zeros((1, 1)), d(g, g), k1=6, k2=3, lambda_value=0.3
        )[0]
        expected = allowed_ids[cand[np.argsort(rr, kind="stable")[:10]]].tolist()
        assert [r["gallery_id"] for r in reranked] == expected
        assert expected != allowed_ids[order[:10]].tolist()  # re-ranking changed the order
        assert {r["camera_id"] for r in reranked} <= {"c1", "c3"}


def test_delete_through_the_api_then_restart(
    indexed: dict[str, Any], bundle: Bundle, keys: Keys
) -> None:
    settings, ids = indexed["settings"], indexed["ids"]
    with TestClient(create_app(settings, bundle=bundle)) as client:
        best = [r["gallery_id"] for r in _search(client, keys, top_k=5)]
        for item_id in best[:3]:
            r = client.delete(f"/api/v1/gallery/{item_id}", headers=keys.operator)
            assert r.status_code == 204, r.text
        after = _search(client, keys, top_k=10)
        assert not {r["gallery_id"] for r in after} & set(best[:3])
    with TestClient(create_app(settings, bundle=bundle)) as client:
        ctx = client.app.state.ctx  # type: ignore[attr-defined]
        assert ctx.index_status["source"] == "file", ctx.index_status
        assert ctx.index.kind == indexed["kind"]
        assert ctx.index.ids().tolist() == sorted(set(ids.tolist()) - set(best[:3]))
        again = _search(client, keys, top_k=10)
        assert [r["gallery_id"] for r in again] == [r["gallery_id"] for r in after]
        np.testing.assert_allclose(
            [r["score"] for r in again], [r["score"] for r in after], atol=1e-5
        )
        assert client.get("/readyz").status_code == 200


def test_items_deleted_by_another_process_leave_the_index(
    indexed: dict[str, Any], bundle: Bundle, keys: Keys
) -> None:
    settings = indexed["settings"]
    with TestClient(create_app(settings, bundle=bundle)) as client:
        best = _search(client, keys, top_k=3)[0]["gallery_id"]
        other = open_context(settings, bundle)  # e.g. a maintenance script
        try:
            with session_scope(other.sessions) as session:
                gallery.delete_item(other, session, best, actor="cli")
        finally:
            close_context(other, save_index=False)
        ctx = client.app.state.ctx  # type: ignore[attr-defined]
        assert best in ctx.index
        assert client.get("/readyz").json()["checks"]["index"] is False
        assert sync_index(ctx) == (0, 1)
        assert best not in ctx.index
        assert client.get("/readyz").status_code == 200
        assert best not in [r["gallery_id"] for r in _search(client, keys, top_k=10)]


@pytest.mark.parametrize("exact_filter_max", [20_000, 0])
def test_auto_index_with_a_starved_search_budget_still_filters(
    exact_filter_max: int,
    make_settings: Callable[..., Settings],
    bundle: Bundle,
    keys: Keys,
) -> None:
    """INDEX_TYPE=auto over a gallery past its threshold is HNSW; with the smallest search
    budget, filtered searches are exact (small filter) or at least only return allowed items."""
    settings = make_settings(
        INDEX_TYPE="auto",
        INDEX_AUTO_APPROX_FROM=50,
        INDEX_HNSW_M=4,
        INDEX_HNSW_EF_SEARCH=1,
        INDEX_HNSW_FILTER_EF_MAX=2,
        INDEX_EXACT_FILTER_MAX=exact_filter_max,
    )
    ids, vectors = _populate(settings, bundle, 120)
    with TestClient(create_app(settings, bundle=bundle)) as client:
        index = client.app.state.ctx.index  # type: ignore[attr-defined]
        assert index.kind == "hnsw" and index.hnsw_filter_ef_max == 2
        mask = np.arange(len(ids)) % 3 != 1  # cameras c1 and c3
        found = _search(client, keys, top_k=10, camera_id=["c1", "c3"])
        assert len(found) == 10
        assert {r["camera_id"] for r in found} <= {"c1", "c3"}
        if exact_filter_max:
            order = np.argsort(-(vectors[mask] @ _query(bundle)), kind="stable")
            assert [r["gallery_id"] for r in found] == ids[mask][order[:10]].tolist()


def _from_the_database(
    ctx: ServiceContext, session: Session, ids: Sequence[int]
) -> tuple[np.ndarray, np.ndarray]:
    """Where re-ranking took the candidates' vectors from before they were read from memory."""
    return load_vectors(session, ctx.embedding_key, ctx.dim, list(ids))


def test_rerank_reads_vectors_from_memory_with_the_database_results(
    indexed: dict[str, Any], bundle: Bundle, keys: Keys, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings, ids = indexed["settings"], indexed["ids"]
    engine = make_engine(settings.DATABASE_URL)
    with session_scope(make_session_factory(engine)) as session:  # an older model's vectors
        other = np.random.default_rng(8).normal(size=(len(ids), int(bundle.embedder.dim)))
        for item_id, vector in zip(ids.tolist(), other, strict=True):
            session.add(
                Embedding(
                    item_id=item_id,
                    model_version="old:1:x",
                    dim=other.shape[1],
                    vector=vector_to_bytes(vector),
                )
            )
        session.commit()
    engine.dispose()
    from_db: list[int] = []

    def counting(session: Session, key: str, dim: int, wanted: list[int]) -> Any:
        from_db.extend(wanted)
        return load_vectors(session, key, dim, wanted)

    monkeypatch.setattr(vectors_service, "load_vectors", counting)
    params = {"top_k": 10, "rerank": "true", "k1": 6, "k2": 3}
    with TestClient(create_app(settings, bundle=bundle)) as client:
        from_memory = _search(client, keys, **params)
        # ivf keeps no id -> vector map: its candidates come from the database
        assert len(from_db) == (20 if indexed["kind"] == "ivf" else 0)
        monkeypatch.setattr(search_service, "candidate_vectors", _from_the_database)
        assert _search(client, keys, **params) == from_memory  # ids, scores, distances


def test_items_deleted_or_replaced_elsewhere_are_not_reranked_with_stale_vectors(
    indexed: dict[str, Any], bundle: Bundle, keys: Keys, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings, dim = indexed["settings"], int(bundle.embedder.dim)
    params = {"top_k": 10, "rerank": "true", "k1": 6, "k2": 3}
    used: list[tuple[np.ndarray, np.ndarray]] = []

    def recording(ctx: ServiceContext, session: Session, ids: Sequence[int]) -> Any:
        used.append(candidate_vectors(ctx, session, ids))
        return used[-1]

    with TestClient(create_app(settings, bundle=bundle)) as client:
        ctx = client.app.state.ctx  # type: ignore[attr-defined]
        candidates = [r["gallery_id"] for r in _search(client, keys, top_k=20)]
        gone = candidates[1]
        engine = make_engine(settings.DATABASE_URL)  # another process: the index is not told
        with session_scope(make_session_factory(engine)) as session:
            old = load_vectors(session, ctx.embedding_key, dim, [gone])[1][0]
            session.delete(session.get(GalleryItem, gone))
            session.flush()
            new_vector = old + 0.05 * np.random.default_rng(9).normal(size=dim).astype(np.float32)
            new_vector /= np.linalg.norm(new_vector)
            again = GalleryItem(
                sha256="f" * 64,
                blob_path="ff/ff/x.jpg",
                content_type="image/jpeg",
                width=32,
                height=64,
                camera_id="c1",
            )
            session.add(again)
            session.flush()  # the crop stored anew: a new id, a new vector
            session.add(ctx.embedding_row(again.id, new_vector))
            session.commit()
            replacement = int(again.id)
        engine.dispose()
        assert gone in ctx.index and replacement not in ctx.index  # the stale mirror

        monkeypatch.setattr(search_service, "candidate_vectors", recording)
        reranked = _search(client, keys, **params)
        ids, vectors = used[-1]
        assert ids.tolist() == sorted(set(candidates) - {gone})  # never the deleted item
        with session_scope(ctx.sessions) as session:
            assert np.array_equal(
                vectors, load_vectors(session, ctx.embedding_key, dim, ids.tolist())[1]
            )
        monkeypatch.setattr(search_service, "candidate_vectors", _from_the_database)
        assert _search(client, keys, **params) == reranked

        assert sync_index(ctx) == (1, 1)
        monkeypatch.setattr(search_service, "candidate_vectors", recording)
        reranked = _search(client, keys, **params)
        ids, vectors = used[-1]
        assert replacement in ids.tolist() and gone not in ids.tolist()
        assert np.array_equal(vectors[ids.tolist().index(replacement)], new_vector)
        monkeypatch.setattr(search_service, "candidate_vectors", _from_the_database)
        assert _search(client, keys, **params) == reranked
