"""The pgvector schema: the extension, the ``embeddings.vec`` halfvec column and one HNSW index
per embedding space (model key).

Revision 0006 calls :func:`install` on PostgreSQL: it creates the extension and the column when
the server has pgvector, and fails with :data:`MISSING` when it has not and the settings ask
for the pgvector backend (``SKETCHREID_INDEX_BACKEND=pgvector``). A database migrated without
pgvector (the embedded default on PostgreSQL) gets the column later from ``sketchreid db
upgrade`` run with the pgvector backend, which calls :func:`install` again (it is idempotent).

The column has no dimension (each model has its own); the HNSW index of a model is a partial
expression index, ``(vec::halfvec(dim)) halfvec_ip_ops WHERE model_version = key``, created by
:func:`ensure_hnsw` when a process first serves that model (its dimension and key come from
the bundle, not from a migration). halfvec: 2 bytes a value keeps a 512-d row (1 KiB) out of
TOAST, and its rounding cost no recall (docs/scaling.md).
"""

from __future__ import annotations

import hashlib

from sqlalchemy import Connection, text

from app.errors import SketchReidError

COLUMN = "vec"
# HNSW build parameters of the per-model indexes (pgvector's defaults).
HNSW_M = 16
HNSW_EF_CONSTRUCTION = 64
# pg_advisory_xact_lock key serialising index creation across replicas and workers.
_LOCK_KEY = 0x5EC7C4E1

MISSING = (
    "the PostgreSQL server has no pgvector extension (pg_available_extensions lists no "
    "'vector'), which SKETCHREID_INDEX_BACKEND=pgvector needs: install it on the server "
    "(Debian/Ubuntu: postgresql-<version>-pgvector; container image pgvector/pgvector:pg17), "
    "then run `sketchreid db upgrade` again; or use SKETCHREID_INDEX_BACKEND=faiss"
)


def available(conn: Connection) -> bool:
    """Whether the server can create the extension."""
    row = conn.execute(text("SELECT 1 FROM pg_available_extensions WHERE name = 'vector'"))
    return row.first() is not None


def installed(conn: Connection) -> bool:
    """Whether ``embeddings.vec`` exists (extension and column installed)."""
    row = conn.execute(
        text(
            "SELECT 1 FROM information_schema.columns "
            "WHERE table_schema = current_schema() AND table_name = 'embeddings' "
            "AND column_name = :column"
        ),
        {"column": COLUMN},
    )
    return row.first() is not None


def install(conn: Connection, *, required: bool) -> bool:
    """Create the extension and the column when the server has pgvector; returns whether it
    did. Without pgvector: ``SketchReidError`` (:data:`MISSING`) when ``required``, else
    ``False``."""
    if not available(conn):
        if required:
            raise SketchReidError(MISSING)
        return False
    try:
        conn.execute(text("CREATE EXTENSION IF NOT EXISTS vector"))
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc) else exc.__class__.__name__
        raise SketchReidError(
            f"cannot create the pgvector extension ({first}): a superuser must run "
            "`CREATE EXTENSION vector` in this database once, then `sketchreid db upgrade`"
        ) from None
    conn.execute(text(f"ALTER TABLE embeddings ADD COLUMN IF NOT EXISTS {COLUMN} halfvec"))
    return True


def uninstall(conn: Connection) -> None:
    """Drop the column (its HNSW indexes go with it); the extension stays."""
    conn.execute(text(f"ALTER TABLE embeddings DROP COLUMN IF EXISTS {COLUMN}"))


def hnsw_index_name(key: str, dim: int) -> str:
    return f"ix_embeddings_vec_hnsw_{hashlib.sha256(key.encode()).hexdigest()[:16]}_{dim}"


def _literal(value: str) -> str:
    """A SQL string literal (standard_conforming_strings: only quotes are doubled)."""
    if "\x00" in value:
        raise ValueError("NUL in a model key")
    return "'" + value.replace("'", "''") + "'"


def ensure_hnsw(conn: Connection, key: str, dim: int) -> str:
    """Create the HNSW index of model ``key`` (dimension ``dim``) when it does not exist yet;
    returns its name. Serialised across processes by an advisory lock; building over existing
    rows holds a lock that blocks writes to ``embeddings`` until it is done."""
    name = hnsw_index_name(key, dim)
    conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _LOCK_KEY})
    conn.execute(
        text(
            f"CREATE INDEX IF NOT EXISTS {name} ON embeddings USING hnsw "
            f"(({COLUMN}::halfvec({int(dim)})) halfvec_ip_ops) "
            f"WITH (m = {HNSW_M}, ef_construction = {HNSW_EF_CONSTRUCTION}) "
            f"WHERE model_version = {_literal(key)}"
        )
    )
    return name


def halfvec_literal(vector: object) -> str:
    """The text form pgvector reads: ``[v1,v2,...]`` (float32 values, rounded by the cast)."""
    import numpy as np

    arr = np.asarray(vector, dtype=np.float32).reshape(-1)
    return "[" + ",".join(repr(float(x)) for x in arr) + "]"
