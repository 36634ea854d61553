"""pgvector store: the vectors live in PostgreSQL (``embeddings.vec``, halfvec) and are searched
there, so every API replica and worker sees one index and no process holds index state.

Searches (:meth:`PgVectorIndex.search`) take the gallery filters as SQL conditions on
``gallery_items`` and choose their path explicitly, since the planner's own choice between the
HNSW index and a btree on the filter columns was inconsistent (docs/scaling.md):

* a filter (or a whole gallery) leaving at most ``exact_max`` items is searched **exactly**: the
  distance expression is written so that the HNSW index cannot serve it (``+ 0``), and the
  filter's btree (``camera_id, captured_at``) or a scan finds the rows;
* otherwise the model's HNSW index (``app.db.pgvector.ensure_hnsw``) is walked (``SET LOCAL
  enable_sort = off``: the planner cannot fall back to sorting what a btree finds) with
  ``hnsw.ef_search`` = ``ef_search`` and, when filtered, ``hnsw.iterative_scan =
  relaxed_order`` so that it keeps scanning until ``k`` rows pass the filter (up to
  ``hnsw.max_scan_tuples``); without iterative scans a filtered HNSW query returns fewer
  than ``k`` rows.

Both paths fetch ``2 k + 10`` candidates by halfvec distance and re-score them with the stored
float32 vectors (``embeddings.vector``), so scores and order are those of the FAISS backend,
and halfvec's rounding cannot swap two candidates at the boundary. ``SET LOCAL`` only lasts for
the caller's transaction; the engine never prepares statements (``prepare_threshold=None``,
:mod:`app.db.session`), which would freeze a plan across ``SET``s.

Writes are the ``embeddings`` rows themselves (:meth:`write`, in the caller's transaction);
deletions are the rows' deletion (``ON DELETE CASCADE`` from ``gallery_items``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from sqlalchemy import ColumnElement, Connection, func, select, text
from sqlalchemy.orm import Session

from app.db import pgvector
from app.db.models import Embedding, GalleryItem
from app.index.store import Hit


def _candidates(k: int) -> int:
    return 2 * k + 10


@dataclass
class PgVectorIndex:
    key: str
    dim: int
    ef_search: int = 100
    max_scan_tuples: int = 50_000
    exact_max: int = 20_000

    index_type = "pgvector"

    @property
    def kind(self) -> str:
        return "pgvector-hnsw"

    # -- schema -------------------------------------------------------------------------
    def prepare(self, conn: Connection) -> dict[str, object]:
        """Check the column, create this model's HNSW index when missing and fill ``vec`` of
        rows stored without it (written by the faiss backend); returns a status."""
        if not pgvector.installed(conn):
            raise_missing(conn)
        name = pgvector.ensure_hnsw(conn, self.key, self.dim)
        filled = 0
        while True:
            rows = conn.execute(
                select(Embedding.id, Embedding.vector)
                .where(Embedding.model_version == self.key, text(f"{pgvector.COLUMN} IS NULL"))
                .limit(2000)
            ).all()
            if not rows:
                break
            for row_id, blob in rows:
                conn.execute(
                    text(
                        f"UPDATE embeddings SET {pgvector.COLUMN} = CAST(:v AS halfvec) "
                        "WHERE id = :id"
                    ),
                    {"v": pgvector.halfvec_literal(np.frombuffer(blob, "<f4")), "id": row_id},
                )
            filled += len(rows)
        return {"source": "postgresql", "hnsw_index": name, "filled": filled}

    # -- writes -------------------------------------------------------------------------
    def write(self, session: Session, embedding_id: int, vector: np.ndarray) -> None:
        """Set the halfvec of a flushed embedding row (same transaction as the row)."""
        session.execute(
            text(f"UPDATE embeddings SET {pgvector.COLUMN} = CAST(:v AS halfvec) WHERE id = :id"),
            {"v": pgvector.halfvec_literal(vector), "id": embedding_id},
        )

    # -- reads --------------------------------------------------------------------------
    def count(
        self, session: Session, conditions: Sequence[ColumnElement[bool]], cap: int
    ) -> tuple[int, bool]:
        """How many searchable items pass ``conditions``, counted up to ``cap``; and whether
        there are more."""
        inner = (
            select(Embedding.item_id)
            .join(GalleryItem, GalleryItem.id == Embedding.item_id)
            .where(Embedding.model_version == self.key, *conditions)
            .limit(cap + 1)
            .subquery()
        )
        n = int(session.scalar(select(func.count()).select_from(inner)) or 0)
        return min(n, cap), n > cap

    def total(self, session: Session) -> int:
        return int(
            session.scalar(
                select(func.count(Embedding.id)).where(Embedding.model_version == self.key)
            )
            or 0
        )

    def search(
        self,
        session: Session,
        query: np.ndarray,
        k: int,
        conditions: Sequence[ColumnElement[bool]] = (),
        *,
        exact: bool | None = None,
    ) -> list[Hit]:
        """The ``k`` best items passing ``conditions``, best first, by cosine similarity.
        ``exact`` None: exact when at most ``exact_max`` items pass."""
        q = np.ascontiguousarray(query, dtype=np.float32).reshape(-1)
        if q.shape[0] != self.dim:
            raise ValueError(f"query has dimension {q.shape[0]}, the index {self.dim}")
        if k <= 0:
            return []
        conds = list(conditions)
        if exact is None:
            _, more = self.count(session, conds, self.exact_max)
            exact = not more
        distance = text(
            f"(embeddings.{pgvector.COLUMN}::halfvec({self.dim}) "
            f"<#> CAST(:q AS halfvec({self.dim})))" + (" + 0" if exact else "")
        )
        if not exact:
            # The planner would rather sort the rows a btree finds whenever its statistics
            # (or a selective filter) make that look cheaper: this path is the HNSW scan.
            session.execute(text("SET LOCAL enable_sort = off"))
            session.execute(text(f"SET LOCAL hnsw.ef_search = {int(self.ef_search)}"))
            if conds:
                session.execute(text("SET LOCAL hnsw.iterative_scan = relaxed_order"))
                session.execute(
                    text(f"SET LOCAL hnsw.max_scan_tuples = {int(self.max_scan_tuples)}")
                )
        stmt = (
            select(Embedding.item_id, Embedding.vector)
            .join(GalleryItem, GalleryItem.id == Embedding.item_id)
            .where(Embedding.model_version == self.key, *conds)
            .order_by(distance)
            .limit(_candidates(k))
        )
        rows = session.execute(stmt, {"q": pgvector.halfvec_literal(q)}).all()
        if not exact:  # back to the defaults for the rest of the caller's transaction
            session.execute(text("RESET enable_sort"))
            if conds:
                session.execute(text("RESET hnsw.iterative_scan"))
        if not rows:
            return []
        ids = np.fromiter((int(r[0]) for r in rows), np.int64, len(rows))
        vectors = np.stack([np.frombuffer(r[1], "<f4") for r in rows])
        scores = vectors @ q
        order = np.lexsort((ids, -scores))[:k]
        return [Hit(int(ids[i]), float(scores[i])) for i in order]


def raise_missing(conn: Connection) -> None:
    from app.errors import SketchReidError

    if not pgvector.available(conn):
        raise SketchReidError(pgvector.MISSING)
    raise SketchReidError(
        "the database has no embeddings.vec column: it was migrated before pgvector was "
        "installed on the server; run `sketchreid db upgrade` with "
        "SKETCHREID_INDEX_BACKEND=pgvector to add it"
    )
