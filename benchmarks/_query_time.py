"""The service's re-ranking stage at query time (``bench_rerank.py --query-time``).

One query and its ``--candidates`` nearest items (FAISS, exact) among ``--items`` stored
embeddings of ``--dim`` values in a throw-away SQLite database, the way ``run_search``'s
``rerank`` stage handles them:

* ``previous``: the candidates' vectors loaded from the database (``load_vectors``), then
  ``rerank_candidates``; with ``--previous-rerank FILE`` the k-reciprocal function of FILE (an
  older ``app/ml/retrieval/rerank.py``, e.g.
  ``git show REV:app/ml/retrieval/rerank.py > FILE``) stands in for the current one, so
  that the baseline is the previous code path in full;
* ``current``: ``candidate_vectors`` (which ids still exist from the database, their vectors
  from the index), then ``rerank_candidates``.

Both run in turn, call by call, in one process; every call's results are compared (ids and
re-ranked distances bit for bit). Below the two paths, their parts are timed on their own.
Wall time (median, p95) and process CPU time (median) in milliseconds: on a loaded machine
wall time is mostly waiting for a CPU, CPU time is the work. The distance matrices are one
BLAS product of 100 x 1,024 by its transpose: with numpy's OpenBLAS on several threads (the
default) its worker threads spin, which costs far more than the product whenever the other
cores are busy; ``OPENBLAS_NUM_THREADS=1`` (or ``OMP_NUM_THREADS=1``) shows the difference
(same results: OpenBLAS splits the output, not the sums, between threads).
"""

from __future__ import annotations

import importlib.util
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any, cast

import numpy as np

from app.db import migrate
from app.db.models import Embedding, GalleryItem
from app.db.session import make_engine, make_session_factory, session_scope
from app.index.store import VectorIndex
from app.ml.retrieval import rerank as rerank_module
from app.ml.retrieval.distances import distances
from app.ml.retrieval.rerank import k_reciprocal_rerank, rerank_candidates
from app.services.context import ServiceContext, load_vectors, vector_to_bytes
from app.services.search import SearchParams
from app.services.vectors import candidate_vectors, stored_ids

KEY = "bench:1:current"


def _fill(url: str, vectors: np.ndarray) -> None:
    """Items 1..n with their vectors under KEY and an older model's under another key."""
    engine = make_engine(url)
    older = np.roll(vectors, 1, axis=0)
    with session_scope(make_session_factory(engine)) as session:
        for i in range(len(vectors)):
            sha = f"{i:064x}"
            session.add(
                GalleryItem(
                    id=i + 1,
                    sha256=sha,
                    blob_path=f"{sha}.jpg",
                    content_type="image/jpeg",
                    width=64,
                    height=128,
                )
            )
        session.flush()
        for key, rows in ((KEY, vectors), ("bench:0:older", older)):
            for i, row in enumerate(rows):
                session.add(
                    Embedding(
                        item_id=i + 1,
                        model_version=key,
                        dim=rows.shape[1],
                        vector=vector_to_bytes(row),
                    )
                )
        session.commit()
    engine.dispose()


def _previous(path: str | None) -> Callable[..., np.ndarray] | None:
    if path is None:
        return None
    spec = importlib.util.spec_from_file_location("_previous_rerank", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return cast(Callable[..., np.ndarray], module.k_reciprocal_rerank)


class _Clock:
    """Wall and CPU milliseconds of each named call."""

    def __init__(self) -> None:
        self.wall: dict[str, list[float]] = {}
        self.cpu: dict[str, list[float]] = {}

    def __call__(self, name: str, fn: Callable[[], Any]) -> Any:
        cpu, wall = time.process_time(), time.perf_counter()
        result = fn()
        self.wall.setdefault(name, []).append((time.perf_counter() - wall) * 1e3)
        self.cpu.setdefault(name, []).append((time.process_time() - cpu) * 1e3)
        return result

    def row(self, name: str) -> str:
        wall = sorted(self.wall[name])
        p95 = wall[max(0, min(len(wall), round(0.95 * len(wall))) - 1)]
        return (
            f"{name:<44} {statistics.median(wall):9.3f} {p95:9.3f} "
            f"{statistics.median(self.cpu[name]):9.3f}"
        )


def run_query_time(
    items: int, candidates: int, dim: int, repeat: int, seed: int, previous_file: str | None
) -> int:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(max(1, items // 4), dim))
    vectors = centres[rng.integers(0, len(centres), items)] + 0.6 * rng.normal(size=(items, dim))
    vectors = (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)
    index = VectorIndex(dim, "flat")
    index.build(np.arange(1, items + 1), vectors)
    query = vectors[0] + 0.5 * rng.normal(size=dim).astype(np.float32)
    query /= np.linalg.norm(query)
    found = [h.id for h in index.search(query, candidates)]
    params = SearchParams(rerank=True)
    previous = _previous(previous_file)
    ctx = cast(ServiceContext, SimpleNamespace(embedding_key=KEY, dim=dim, index=index))

    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{tmp}/bench.db"
        migrate.upgrade(url)
        _fill(url, vectors)
        engine = make_engine(url)
        sessions = make_session_factory(engine)
        clock = _Clock()

        def previous_path() -> tuple[np.ndarray, np.ndarray]:
            with sessions() as session:
                ids, rows = load_vectors(session, KEY, dim, found)
                if previous is None:
                    return ids, rerank_candidates(
                        query, rows, k1=params.k1, k2=params.k2, lambda_value=params.lambda_value
                    )
                rerank_module.k_reciprocal_rerank = previous  # type: ignore[assignment]
                try:
                    return ids, rerank_candidates(
                        query, rows, k1=params.k1, k2=params.k2, lambda_value=params.lambda_value
                    )
                finally:
                    rerank_module.k_reciprocal_rerank = k_reciprocal_rerank

        def current_path() -> tuple[np.ndarray, np.ndarray]:
            with sessions() as session:
                ids, rows = candidate_vectors(ctx, session, found)
                return ids, rerank_candidates(
                    query, rows, k1=params.k1, k2=params.k2, lambda_value=params.lambda_value
                )

        with sessions() as session:
            _, rows = load_vectors(session, KEY, dim, found)
        q = query.reshape(1, -1)
        q_g, q_q, g_g = distances(q, rows), np.zeros((1, 1), np.float32), distances(rows, rows)
        np.fill_diagonal(g_g, 0.0)
        with sessions() as session:
            parts: dict[str, Callable[[], Any]] = {
                "  SQL: load_vectors (ids + 100 blobs)": lambda: load_vectors(
                    session, KEY, dim, found
                ),
                "  SQL: stored_ids (ids only)": lambda: stored_ids(session, KEY, found),
                "  index.vectors (memory)": lambda: index.vectors(found),
                "  distance matrices (q_g, q_q, g_g)": lambda: (
                    distances(q, rows),
                    distances(q, q),
                    distances(rows, rows),
                ),
                "  k_reciprocal_rerank (current)": lambda: k_reciprocal_rerank(q_g, q_q, g_g),
            }
            if previous is not None:
                parts["  k_reciprocal_rerank (previous file)"] = lambda: previous(q_g, q_q, g_g)
            mismatches = 0
            for _ in range(repeat):
                old_ids, old_rr = clock("previous: DB load + rerank", previous_path)
                new_ids, new_rr = clock("current: memory vectors + rerank", current_path)
                same = np.array_equal(old_ids, new_ids) and np.array_equal(old_rr, new_rr)
                mismatches += not same
                for name, fn in parts.items():
                    clock(name, fn)
        engine.dispose()

    print(
        f"re-ranking stage at query time: 1 query, {len(found)} candidates, {dim}-d, "
        f"{items} stored items (SQLite, 2 model keys), k1=20 k2=6 lambda=0.3, {repeat} runs"
    )
    if previous_file:
        print(f"previous path's k-reciprocal function from {previous_file}")
    blas = {k: os.environ.get(k, "unset") for k in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS")}
    print("numpy BLAS threads: " + ", ".join(f"{k}={v}" for k, v in blas.items()))
    print(f"{'ms':<44} {'wall med':>9} {'wall p95':>9} {'CPU med':>9}")
    for name in clock.wall:
        print(clock.row(name))
    print(
        f"results equal (ids and re-ranked distances, bit for bit): {repeat - mismatches}/{repeat}"
    )
    return 1 if mismatches else 0
