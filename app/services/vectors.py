"""The stored embeddings of a search's candidates, for re-ranking, read from memory.

The database is the source of truth; the FAISS index mirrors it (``sync_index``) and holds
the same float32 vectors. Reading the candidates' vectors back from the index instead of
loading ~100 blobs from the database gives the same numbers because

* an embedding is written once per (item, model key) and never changed (a new model is a new
  key, and the index holds only the active key's vectors);
* a committed gallery id is never given again (AUTOINCREMENT on SQLite, sequences on
  PostgreSQL);

so a vector the index holds for an id is the one the database holds for it, as long as the
database still has that id. Which ids that is comes from the database (one id-only query):
an item deleted, or replaced, by another process since the last ``sync_index`` is left out,
as it was when the vectors came from the database. Ids the index does not hold (an ``ivf``
index, or one removed from memory meanwhile) are read from the database.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sqlalchemy import bindparam, select
from sqlalchemy.orm import Session

from app.db.models import Embedding
from app.index.idset import unique_ids
from app.services.context import ServiceContext, load_vectors

# Built once: a bound, expanding IN list skips re-coercing every id on each call.
_STORED = select(Embedding.item_id).where(
    Embedding.model_version == bindparam("key"),
    Embedding.item_id.in_(bindparam("ids", expanding=True)),
)


def stored_ids(session: Session, key: str, ids: Sequence[int]) -> np.ndarray:
    """The ids among ``ids`` that have an embedding for ``key`` in the database, ascending."""
    if not ids:
        return np.zeros(0, np.int64)
    rows = session.connection().execute(_STORED, {"key": key, "ids": [int(i) for i in ids]})
    return unique_ids(np.fromiter(rows.scalars(), dtype=np.int64))


def candidate_vectors(
    ctx: ServiceContext, session: Session, ids: Sequence[int]
) -> tuple[np.ndarray, np.ndarray]:
    """(ids, vectors) of the candidates stored under the active model, ordered by id.

    The same as ``load_vectors(session, ctx.embedding_key, ctx.dim, ids)``, with the vectors
    taken from the index where it holds them (see the module docstring).
    """
    wanted = stored_ids(session, ctx.embedding_key, ids)
    if ctx.faiss is None:  # pgvector: the float32 vectors are only in the database
        return load_vectors(session, ctx.embedding_key, ctx.dim, wanted.tolist())
    found, vectors = ctx.faiss.vectors(wanted)
    missing = np.setdiff1d(wanted, found, assume_unique=True)
    if missing.size == 0:
        return found, vectors
    more_ids, more = load_vectors(session, ctx.embedding_key, ctx.dim, missing.tolist())
    all_ids = np.concatenate([found, more_ids])
    order = np.argsort(all_ids, kind="stable")
    return all_ids[order], np.concatenate([vectors, more])[order]
