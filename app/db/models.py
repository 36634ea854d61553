"""Tables of the retrieval service (SQLAlchemy 2 typed declarative models).

The database is the source of truth: the FAISS index is rebuilt from ``embeddings`` whenever
its saved copy is missing or disagrees.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    CheckConstraint,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    UniqueConstraint,
    Uuid,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from app.db.types import UTCDateTime, utcnow

ROLES = ("admin", "operator", "investigator")
# An item's place in ingestion: queued (cluster profile: a worker has yet to embed it), in the
# index under the served model, or given up on (status_reason says why).
STATUSES = ("pending", "indexed", "failed")

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# SQLite only auto-increments INTEGER PRIMARY KEY; PostgreSQL gets BIGINT identity.
IdType = BigInteger().with_variant(Integer(), "sqlite")


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class ApiKey(Base):
    __tablename__ = "api_keys"
    __table_args__ = (
        CheckConstraint(f"role IN {ROLES!r}", name="role"),
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(IdType, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(200))
    role: Mapped[str] = mapped_column(String(20))
    # sha256 hex of the whole key ("skr_" + secret); the key itself is never stored.
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    # First characters of the key, so a person can tell keys apart in `apikey list`.
    key_prefix: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)
    # The key stops working at this time (None: it works until revoked).
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)
    # The admin key that created / revoked this one (None: done on the server's command line,
    # or before this was recorded); the audit trail keeps the same with when.
    created_by: Mapped[int | None] = mapped_column(
        ForeignKey("api_keys.id", ondelete="SET NULL"), default=None
    )
    revoked_by: Mapped[int | None] = mapped_column(
        ForeignKey("api_keys.id", ondelete="SET NULL"), default=None
    )


class GalleryItem(Base):
    __tablename__ = "gallery_items"
    # Ids are never reused (SQLite would otherwise hand out a deleted maximum id again), so a
    # gallery id in an old search record never points at a different crop.
    __table_args__ = (
        Index(None, "camera_id", "captured_at"),
        CheckConstraint(f"status IN {STATUSES!r}", name="status"),
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(IdType, primary_key=True, autoincrement=True)
    sha256: Mapped[str] = mapped_column(String(64), unique=True)
    # Relative to DATA_DIR/blobs, e.g. "ab/cd/abcd....jpg".
    blob_path: Mapped[str] = mapped_column(String(300))
    content_type: Mapped[str] = mapped_column(String(50))
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    camera_id: Mapped[str | None] = mapped_column(String(100), default=None)
    captured_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)
    location: Mapped[str | None] = mapped_column(String(500), default=None)
    external_id: Mapped[str | None] = mapped_column(String(200), default=None, index=True)
    # The name the crop was uploaded under (base name only; null when none was sent).
    filename: Mapped[str | None] = mapped_column(String(200), default=None)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    created_by: Mapped[int | None] = mapped_column(
        ForeignKey("api_keys.id", ondelete="SET NULL"), default=None
    )
    status: Mapped[str] = mapped_column(
        String(20), default="indexed", server_default="indexed", index=True
    )
    status_reason: Mapped[str | None] = mapped_column(String(500), default=None)

    embeddings: Mapped[list[Embedding]] = relationship(
        back_populates="item", cascade="all, delete-orphan", passive_deletes=True
    )


class Embedding(Base):
    __tablename__ = "embeddings"
    __table_args__ = (UniqueConstraint("item_id", "model_version"), {"sqlite_autoincrement": True})

    id: Mapped[int] = mapped_column(IdType, primary_key=True, autoincrement=True)
    item_id: Mapped[int] = mapped_column(ForeignKey("gallery_items.id", ondelete="CASCADE"))
    model_version: Mapped[str] = mapped_column(String(200), index=True)
    dim: Mapped[int] = mapped_column(Integer)
    # float32 little-endian, L2-normalised, `dim` values.
    vector: Mapped[bytes] = mapped_column(LargeBinary)
    # PostgreSQL with pgvector also has `vec halfvec` (app.db.pgvector), written with raw SQL
    # by the pgvector backend: it is not mapped, so SQLite and plain PostgreSQL work the same.

    item: Mapped[GalleryItem] = relationship(back_populates="embeddings")


class Search(Base):
    __tablename__ = "searches"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    api_key_id: Mapped[int | None] = mapped_column(
        ForeignKey("api_keys.id", ondelete="SET NULL"), index=True
    )
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    # One entry per sketch, in upload order: {"sha256", "path", "translated_path"}; paths are
    # relative to DATA_DIR/searches, "translated_path" is null when it was not translated.
    sketches: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    parameters: Mapped[dict[str, Any]] = mapped_column(JSON)
    # [{"rank", "gallery_id", "score", "distance"}], best first.
    results: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    model_name: Mapped[str] = mapped_column(String(200))
    model_version: Mapped[str] = mapped_column(String(200))
    # The case it belongs to (None: none); changed later only through the API, audited.
    case_id: Mapped[int | None] = mapped_column(
        ForeignKey("cases.id", ondelete="SET NULL"), default=None, index=True
    )


MARKS = ("confirmed", "rejected", "none")


class SearchMark(Base):
    """An investigator's judgement of one result of a search: the suspect (``confirmed``),
    someone else (``rejected``), or withdrawn (``none``). Rows are only ever added; an item's
    mark is its latest row. They go with their search when it is purged.
    """

    __tablename__ = "search_marks"
    __table_args__ = (
        CheckConstraint(f"mark IN {MARKS!r}", name="mark"),
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(IdType, primary_key=True, autoincrement=True)
    search_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("searches.id", ondelete="CASCADE"), index=True
    )
    # No foreign key: the item may be deleted later and the mark stays on record.
    gallery_id: Mapped[int] = mapped_column(IdType)
    mark: Mapped[str] = mapped_column(String(20))
    api_key_id: Mapped[int | None] = mapped_column(
        ForeignKey("api_keys.id", ondelete="SET NULL"), default=None
    )
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class AuditEvent(Base):
    """Something done to the evidence that must stay on record after the thing itself is gone:
    a gallery item deleted, searches purged. Rows are only ever added (no API changes or
    deletes them); API keys are never deleted, so ``api_key_id`` keeps naming who did it.
    """

    __tablename__ = "audit_events"
    __table_args__ = ({"sqlite_autoincrement": True},)

    id: Mapped[int] = mapped_column(IdType, primary_key=True, autoincrement=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, index=True)
    # The key that did it; None when done on the server's command line (actor "cli").
    api_key_id: Mapped[int | None] = mapped_column(
        ForeignKey("api_keys.id", ondelete="SET NULL"), default=None
    )
    actor: Mapped[str] = mapped_column(String(20))  # "api" or "cli"
    action: Mapped[str] = mapped_column(String(50), index=True)  # "gallery.delete", ...
    # The gallery item concerned (no foreign key: the item is gone; ids are never reused).
    gallery_id: Mapped[int | None] = mapped_column(IdType, default=None, index=True)
    details: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


class Case(Base):
    """A case file searches belong to: a reference (unique per owner key) and a title. Cases
    are never deleted (their searches go by the retention purge; the case stays on record)."""

    __tablename__ = "cases"
    __table_args__ = (
        UniqueConstraint("api_key_id", "reference"),
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(IdType, primary_key=True, autoincrement=True)
    reference: Mapped[str] = mapped_column(String(100))
    title: Mapped[str | None] = mapped_column(String(300), default=None)
    # The key that opened it: an investigator sees the cases of their own key, an admin all.
    api_key_id: Mapped[int | None] = mapped_column(
        ForeignKey("api_keys.id", ondelete="SET NULL"), index=True
    )
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class Note(Base):
    """A note on a search (``gallery_id`` None) or on one of its results: who, when, text.
    Notes are only ever added; they go with their search when it is purged (the audit trail
    keeps each note's text)."""

    __tablename__ = "notes"
    __table_args__ = ({"sqlite_autoincrement": True},)

    id: Mapped[int] = mapped_column(IdType, primary_key=True, autoincrement=True)
    search_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("searches.id", ondelete="CASCADE"), index=True
    )
    # No foreign key: the item may be deleted later and the note stays on record.
    gallery_id: Mapped[int | None] = mapped_column(IdType, default=None)
    text: Mapped[str] = mapped_column(String(4000))
    api_key_id: Mapped[int | None] = mapped_column(
        ForeignKey("api_keys.id", ondelete="SET NULL"), default=None
    )
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class Watchlist(Base):
    """A search kept standing: its query vector is scored against every crop indexed after it
    was made; a crop at or above ``min_score`` (cosine similarity), or within the first
    ``max_rank`` of the gallery for that query, raises an :class:`Alert`."""

    __tablename__ = "watchlists"
    __table_args__ = (
        CheckConstraint("status IN ('active', 'paused')", name="status"),
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(IdType, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(200))
    api_key_id: Mapped[int | None] = mapped_column(
        ForeignKey("api_keys.id", ondelete="SET NULL"), index=True
    )
    case_id: Mapped[int | None] = mapped_column(
        ForeignKey("cases.id", ondelete="SET NULL"), default=None
    )
    # The search it was made from (no foreign key: the search may be purged; the query stays).
    search_id: Mapped[uuid.UUID | None] = mapped_column(Uuid, default=None)
    status: Mapped[str] = mapped_column(String(20), default="active")
    camera_ids: Mapped[list[str]] = mapped_column(JSON, default=list)
    min_score: Mapped[float | None] = mapped_column(Float, default=None)
    max_rank: Mapped[int | None] = mapped_column(Integer, default=None)
    # The embedding space of ``vector`` (float32 little-endian, L2-normalised): a watchlist
    # made under another model does not fire until it is made again.
    embedding_key: Mapped[str] = mapped_column(String(200))
    vector: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class Alert(Base):
    """A newly indexed crop that matched a watchlist; acknowledged by an investigator."""

    __tablename__ = "alerts"
    __table_args__ = (
        UniqueConstraint("watchlist_id", "gallery_id"),
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(IdType, primary_key=True, autoincrement=True)
    watchlist_id: Mapped[int] = mapped_column(
        ForeignKey("watchlists.id", ondelete="CASCADE"), index=True
    )
    # No foreign key: the crop may be deleted later and the alert stays on record.
    gallery_id: Mapped[int] = mapped_column(IdType)
    score: Mapped[float] = mapped_column(Float)
    rank: Mapped[int | None] = mapped_column(Integer, default=None)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, index=True)
    acknowledged_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)
    acknowledged_by: Mapped[int | None] = mapped_column(
        ForeignKey("api_keys.id", ondelete="SET NULL"), default=None
    )
