"""Everything a request needs, opened once per process: settings, database, model, index.

``open_context`` is what the API lifespan, ``sketchreid ingest`` and the benchmarks call:

1. connect to the database and refuse one that is behind the migrations' head;
2. load the model bundle (once);
3. embed gallery items that have no embedding for this model yet (a new bundle);
4. load the saved FAISS index, or rebuild it from the stored embeddings when the saved copy is
   missing or disagrees with the database (the source of truth).

With ``INDEX_BACKEND=pgvector`` step 4 checks the halfvec column and creates the model's HNSW
index in PostgreSQL instead (:class:`app.index.pgvector.PgVectorIndex`): nothing is held in
memory. With a broker (``BROKER_URL``, the cluster profile) step 3 is left to the workers
(``sketchreid worker`` queues the items again at its start), and a worker's context
(``worker=True``) skips step 4.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session, sessionmaker

from app.core.config import Settings
from app.db.bounded import maintenance
from app.db.migrate import ensure_up_to_date
from app.db.models import Embedding, GalleryItem
from app.db.session import DbLimits, make_engine, make_session_factory, session_scope
from app.errors import SketchReidError
from app.index.pgvector import PgVectorIndex
from app.index.store import VectorIndex
from app.ml.bundle.manifest import Bundle, Manifest, vector_shaping
from app.ml.images import DecodeBudget, load_image
from app.ml.infer.batching import InferenceQueue
from app.queue.producer import IngestQueue
from app.services.blobs import BlobStore
from app.services.model import load_model

if TYPE_CHECKING:
    from app.services.watchlists import Watcher
    from app.services.webhook import WebhookNotifier

log = logging.getLogger(__name__)


def embedding_key(manifest: Manifest) -> str:
    """Identifies the embedding space: name, version and a digest of what shapes the vectors.

    Two bundles with the same name and version but other weights or preprocessing get other
    keys, so stale vectors are never mixed with new ones.
    """
    shaping = vector_shaping(manifest)
    digest = hashlib.sha256(json.dumps(shaping, sort_keys=True).encode()).hexdigest()[:12]
    return f"{manifest.name}:{manifest.version}:{digest}"


@dataclass
class ServiceContext:
    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]
    bundle: Bundle
    index: VectorIndex | PgVectorIndex
    blobs: BlobStore
    embedding_key: str
    inference: InferenceQueue
    decode_budget: DecodeBudget | None = None
    index_status: dict[str, Any] = field(default_factory=dict)
    # The ingestion queue (cluster profile, BROKER_URL set): uploads are queued for workers.
    queue: IngestQueue | None = None
    # Scores newly indexed crops against the watchlists (app.services.watchlists).
    watcher: Watcher | None = None

    @property
    def dim(self) -> int:
        return int(self.bundle.embedder.dim)

    def decode(self, data: bytes) -> Any:
        """The one image loader with the service's limits and its decoding budget."""
        return load_image(
            data,
            max_side=self.settings.DECODE_MAX_SIDE,
            max_pixels=self.settings.MAX_IMAGE_PIXELS,
            budget=self.decode_budget,
        )

    @property
    def faiss(self) -> VectorIndex | None:
        """The in-memory index of this process (None with the pgvector backend)."""
        return self.index if isinstance(self.index, VectorIndex) else None

    def embedding_row(self, item_id: int, vector: np.ndarray) -> Embedding:
        """The stored embedding of one gallery item under the active model."""
        return Embedding(
            item_id=item_id,
            model_version=self.embedding_key,
            dim=self.dim,
            vector=vector_to_bytes(vector),
        )

    def add_embedding(self, session: Session, item_id: int, vector: np.ndarray) -> None:
        """Write (flush, not commit) the embedding row of ``item_id``; with pgvector its halfvec
        too, in the same transaction. The in-memory index is the caller's business."""
        row = self.embedding_row(item_id, vector)
        session.add(row)
        session.flush()
        if isinstance(self.index, PgVectorIndex):
            self.index.write(session, int(row.id), vector)


def make_queue(settings: Settings) -> InferenceQueue:
    """The dynamic batching queue that every request's model call goes through."""
    return InferenceQueue(
        max_batch=settings.INFERENCE_MAX_BATCH,
        max_wait_ms=settings.INFERENCE_MAX_WAIT_MS,
        max_queued=settings.INFERENCE_QUEUE_SIZE,
        embed_batch_size=settings.EMBED_BATCH_SIZE,
    )


def vector_to_bytes(vector: np.ndarray) -> bytes:
    return np.ascontiguousarray(vector, dtype="<f4").tobytes()


def vector_from_bytes(data: bytes, dim: int) -> np.ndarray:
    arr = np.frombuffer(data, dtype="<f4")
    if arr.shape[0] != dim:
        raise ValueError(f"stored vector has {arr.shape[0]} values, expected {dim}")
    return arr.astype(np.float32)


def load_vectors(
    session: Session, key: str, dim: int, ids: list[int] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Stored (ids, vectors) for ``key``, ordered by id; ``ids`` restricts to those items."""
    stmt = select(Embedding.item_id, Embedding.vector).where(Embedding.model_version == key)
    if ids is not None:
        if not ids:
            return np.zeros(0, np.int64), np.zeros((0, dim), np.float32)
        stmt = stmt.where(Embedding.item_id.in_(ids))
    stmt = stmt.order_by(Embedding.item_id)
    out_ids: list[int] = []
    rows: list[np.ndarray] = []
    for item_id, blob in session.execute(stmt.execution_options(yield_per=2000)):
        out_ids.append(int(item_id))
        rows.append(vector_from_bytes(blob, dim))
    vectors = np.stack(rows) if rows else np.zeros((0, dim), np.float32)
    return np.asarray(out_ids, dtype=np.int64), vectors


def db_fingerprint(session: Session, key: str) -> tuple[int, int, int, int]:
    """(count, sum, min, max) of the item ids embedded with ``key``: a cheap set check."""
    row = session.execute(
        select(
            func.count(Embedding.item_id),
            func.coalesce(func.sum(Embedding.item_id), 0),
            func.coalesce(func.min(Embedding.item_id), 0),
            func.coalesce(func.max(Embedding.item_id), 0),
        ).where(Embedding.model_version == key)
    ).one()
    return int(row[0]), int(row[1]), int(row[2]), int(row[3])


def index_fingerprint(index: VectorIndex) -> tuple[int, int, int, int]:
    ids = index.ids()
    if ids.size == 0:
        return 0, 0, 0, 0
    return int(ids.size), int(ids.sum()), int(ids.min()), int(ids.max())


def index_size(ctx: ServiceContext) -> int:
    """Items the searches see: the in-memory index's, or the model's rows in PostgreSQL."""
    if isinstance(ctx.index, PgVectorIndex):
        with session_scope(ctx.sessions) as session:
            return ctx.index.total(session)
    return len(ctx.index)


def index_consistent(ctx: ServiceContext) -> bool:
    """Whether the in-memory index holds the database's ids (always: pgvector is the database)."""
    if ctx.faiss is None:
        return True
    with session_scope(ctx.sessions) as session:
        return db_fingerprint(session, ctx.embedding_key) == index_fingerprint(ctx.faiss)


def sync_index(ctx: ServiceContext) -> tuple[int, int]:
    """Make the index hold exactly the database's embedded ids; returns (added, removed).

    Picks up items written by another process (e.g. ``sketchreid ingest`` while the server
    runs, or by `sketchreid worker`). Cheap when nothing changed: one aggregate query. Nothing to
    do with pgvector.
    """
    index = ctx.faiss
    if index is None:
        return 0, 0
    with session_scope(ctx.sessions) as session:
        if db_fingerprint(session, ctx.embedding_key) == index_fingerprint(index):
            return 0, 0
        db_ids = set(
            session.scalars(
                select(Embedding.item_id).where(Embedding.model_version == ctx.embedding_key)
            )
        )
        present = set(index.ids().tolist())
        missing = sorted(db_ids - present)
        extra = sorted(present - db_ids)
        removed = index.remove(extra) if extra else 0
        added = 0
        if missing:
            ids, vectors = load_vectors(session, ctx.embedding_key, ctx.dim, missing)
            ids_now = set(index.ids().tolist())  # a request may have added some meanwhile
            keep = np.asarray([i not in ids_now for i in ids.tolist()], dtype=bool)
            if keep.any():
                index.add(ids[keep], vectors[keep])
                added = int(keep.sum())
    if added or removed:
        log.info("index synchronised with the database: +%d -%d", added, removed)
    return added, removed


def backfill_embeddings(ctx: ServiceContext, batch_size: int = 64) -> tuple[int, int]:
    """Embed gallery items that have no vector for the active model; returns (done, failed).

    Happens after a model change. Items whose blob is missing or unreadable are logged and
    stay out of the index (they cannot be searched until re-ingested).
    """
    done = failed = 0
    with session_scope(ctx.sessions) as session:
        has_vector = (
            select(Embedding.id)
            .where(Embedding.item_id == GalleryItem.id)
            .where(Embedding.model_version == ctx.embedding_key)
            .exists()
        )
        todo = list(
            session.execute(
                select(GalleryItem.id, GalleryItem.blob_path)
                .where(~has_vector)
                .order_by(GalleryItem.id)
            )
        )
        if not todo:
            return 0, 0
        log.warning("embedding %d gallery items for model %s", len(todo), ctx.embedding_key)
        for start in range(0, len(todo), batch_size):
            chunk = todo[start : start + batch_size]
            ids: list[int] = []
            images = []
            for item_id, blob_path in chunk:
                try:
                    images.append(ctx.decode(ctx.blobs.read(blob_path)))
                    ids.append(int(item_id))
                except (OSError, SketchReidError) as exc:
                    failed += 1
                    log.error("gallery item %s: cannot embed %s: %s", item_id, blob_path, exc)
            if not images:
                continue
            vectors = ctx.bundle.embedder.embed(images, modality="photo", batch_size=batch_size)
            for item_id, vector in zip(ids, vectors, strict=True):
                ctx.add_embedding(session, item_id, vector)
            session.commit()
            done += len(ids)
    return done, failed


def prepare_index(ctx: ServiceContext) -> dict[str, Any]:
    """Load the saved index when it matches the database, else rebuild it from the database;
    pgvector: check the column and create the model's HNSW index."""
    settings = ctx.settings
    if isinstance(ctx.index, PgVectorIndex):
        with ctx.engine.begin() as conn, maintenance(conn):  # an index build takes minutes
            status: dict[str, Any] = dict(ctx.index.prepare(conn))
        with session_scope(ctx.sessions) as session:
            status["count"] = ctx.index.total(session)
        status.update(type=ctx.index.index_type, kind=ctx.index.kind)
        ctx.index_status = status
        return status
    index = ctx.index
    with session_scope(ctx.sessions) as session:
        db_ids = np.asarray(
            sorted(
                session.scalars(
                    select(Embedding.item_id).where(Embedding.model_version == ctx.embedding_key)
                )
            ),
            dtype=np.int64,
        )
        problem = index.load(settings.index_dir, ctx.embedding_key, db_ids)
        if problem is None:
            status = {"source": "file", "count": len(index)}
        else:
            log.warning("rebuilding the index from the database: %s", problem)
            ids, vectors = load_vectors(session, ctx.embedding_key, ctx.dim)
            index.build(ids, vectors)
            index.save(settings.index_dir, ctx.embedding_key)
            status = {"source": "rebuilt", "reason": problem, "count": len(index)}
    status.update(type=index.index_type, kind=index.kind)
    ctx.index_status = status
    return status


def make_index(settings: Settings, key: str, dim: int) -> VectorIndex | PgVectorIndex:
    if settings.INDEX_BACKEND == "pgvector":
        return PgVectorIndex(
            key,
            dim,
            ef_search=settings.PGVECTOR_EF_SEARCH,
            max_scan_tuples=settings.PGVECTOR_MAX_SCAN_TUPLES,
            exact_max=settings.INDEX_EXACT_FILTER_MAX,
        )
    return VectorIndex(
        dim,
        settings.INDEX_TYPE,
        hnsw_m=settings.INDEX_HNSW_M,
        hnsw_ef_construction=settings.INDEX_HNSW_EF_CONSTRUCTION,
        hnsw_ef_search=settings.INDEX_HNSW_EF_SEARCH,
        ivf_nprobe=settings.INDEX_IVF_NPROBE,
        auto_approx_min=settings.INDEX_AUTO_APPROX_FROM,
        exact_filter_max=settings.INDEX_EXACT_FILTER_MAX,
        hnsw_filter_ef_max=settings.INDEX_HNSW_FILTER_EF_MAX,
    )


# Pooled connections beyond one per worker thread: the index sync and orphan sweep loops, the
# readiness probe, the lifespan.
SPARE_CONNECTIONS = 4


def db_limits(settings: Settings) -> DbLimits:
    return DbLimits(
        connect_s=settings.DB_CONNECT_TIMEOUT_SECONDS,
        statement_s=settings.DB_STATEMENT_TIMEOUT_SECONDS,
        pool_size=settings.WORKER_THREADS + SPARE_CONNECTIONS,
    )


def open_context(
    settings: Settings, bundle: Bundle | None = None, *, worker: bool = False
) -> ServiceContext:
    """Open the database, load the model and the index (see the module docstring)."""
    engine = make_engine(settings.DATABASE_URL, db_limits(settings))
    try:
        ensure_up_to_date(engine)
        if bundle is None:
            bundle = load_model(settings)
        key = embedding_key(bundle.manifest)
        ctx = ServiceContext(
            settings=settings,
            engine=engine,
            sessions=make_session_factory(engine),
            bundle=bundle,
            index=make_index(settings, key, int(bundle.embedder.dim)),
            blobs=BlobStore(settings.blob_dir),
            embedding_key=key,
            inference=make_queue(settings),
            queue=(
                IngestQueue(settings.BROKER_URL, settings.BROKER_TIMEOUT_SECONDS)
                if settings.BROKER_URL and not worker
                else None
            ),
            decode_budget=DecodeBudget(
                int(settings.DECODE_MEMORY_MB * 1048576), wait_s=settings.DECODE_WAIT_SECONDS
            ),
        )
        try:
            settings.DATA_DIR.mkdir(parents=True, exist_ok=True)
            pgvector = isinstance(ctx.index, PgVectorIndex)
            if pgvector:  # the column and the model's HNSW index, before any vector is written
                prepare_index(ctx)
            if not settings.BROKER_URL:
                backfill_embeddings(ctx, batch_size=settings.EMBED_BATCH_SIZE)
            if not worker and not pgvector:
                prepare_index(ctx)
            # watchlists score crops where they are embedded: in a worker with a broker, else
            # in the process that ingests (see watchlists.py); an API replica with a broker
            # embeds nothing and scores nothing
            ctx.watcher = (
                make_watcher(ctx, worker=worker) if scores_here(settings, worker) else None
            )
        except BaseException:
            ctx.inference.close()
            raise
    except BaseException:
        engine.dispose()
        raise
    return ctx


def scores_here(settings: Settings, worker: bool) -> bool:
    """Whether this process scores new crops against the watchlists: the one that embeds them
    (a worker in the cluster profile; without a broker, the API server or `sketchreid ingest`)."""
    return worker or not settings.BROKER_URL


def make_watcher(ctx: ServiceContext, *, worker: bool = False) -> Watcher:
    """The watchlist scorer of this process, with the alert webhook when one is configured.
    Rank thresholds search PostgreSQL (pgvector), or the in-memory index: the API server's own,
    or a worker's, which is filled from the database when a rank threshold first needs it."""
    from app.services.watchlists import Watcher, ranks_of
    from app.services.webhook import WebhookNotifier

    settings = ctx.settings
    notifier = (
        WebhookNotifier(
            settings.ALERT_WEBHOOK_URL,
            attempts=settings.ALERT_WEBHOOK_ATTEMPTS,
            backoff=settings.ALERT_WEBHOOK_BACKOFF_SECONDS,
            timeout=settings.ALERT_WEBHOOK_TIMEOUT_SECONDS,
            max_queued=settings.ALERT_WEBHOOK_QUEUE,
        )
        if settings.ALERT_WEBHOOK_URL
        else None
    )
    ranks = ranks_of(ctx.index, (lambda: sync_index(ctx)) if worker else None)
    # A worker scores crops uploaded to another process, where watchlists are made too: it
    # asks the database for the active set before every batch (one small query), so a crop
    # uploaded after a watchlist was made is scored against it. An API server learns of its
    # own changes at once (invalidate) and of other processes' within a second.
    return Watcher(
        ctx.sessions,
        ctx.embedding_key,
        ctx.dim,
        ranks,
        notifier,
        refresh_seconds=0.0 if worker else 1.0,
    )


def notifier_of(ctx: ServiceContext | None) -> WebhookNotifier | None:
    """The alert webhook's notifier of this process, if it has one."""
    if ctx is None or ctx.watcher is None:
        return None
    return ctx.watcher.notifier


def close_context(ctx: ServiceContext, save_index: bool = True) -> None:
    """Finish the model work that waits in the queue and the alerts that wait for the webhook,
    save the index, close the database.

    The saved index is a cache of the database: when it cannot be brought up to date (the
    database is gone) or written (a full disk), a log line says so and the next start rebuilds
    it from the database (the saved copy is written atomically, checked against the database
    when loaded, and never half-written)."""
    try:
        ctx.inference.close()
        if ctx.queue is not None:
            ctx.queue.close()
        if ctx.watcher is not None:
            ctx.watcher.close()
        if save_index and ctx.faiss is not None:
            _save_index(ctx, ctx.faiss)
    finally:
        ctx.engine.dispose()


def _save_index(ctx: ServiceContext, faiss: VectorIndex) -> None:
    try:
        sync_index(ctx)
    except Exception as exc:
        log.warning(
            "index not synchronised with the database at shutdown (%s: %s); saving it as it is",
            type(exc).__name__,
            str(exc).splitlines()[0][:200] if str(exc) else "",
        )
    try:
        faiss.save(ctx.settings.index_dir, ctx.embedding_key)
    except OSError as exc:
        log.warning(
            "index not saved at shutdown (%s); it is rebuilt from the database at the next start",
            exc.strerror or exc,
        )
        return
    log.info("index saved at shutdown: %d items", len(faiss))
