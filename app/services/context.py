"""Everything a request needs, opened once per process: settings, database, model, index.

``open_context`` is what the API lifespan, ``sketchreid ingest`` and the benchmarks call:

1. connect to the database and refuse one that is behind the migrations' head;
2. load the model bundle (once);
3. embed gallery items that have no embedding for this model yet (a new bundle);
4. load the saved FAISS index, or rebuild it from the stored embeddings when the saved copy is
   missing or disagrees with the database (the source of truth).
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
from app.db.migrate import ensure_up_to_date
from app.db.models import Embedding, GalleryItem
from app.db.session import make_engine, make_session_factory, session_scope
from app.errors import SketchReidError
from app.index.store import VectorIndex
from app.ml.bundle.store import Bundle, Manifest
from app.ml.images import load_image
from app.ml.infer.batching import InferenceQueue
from app.services.blobs import BlobStore
from app.services.model import load_model

if TYPE_CHECKING:
    from app.services.watchlists import Watcher

log = logging.getLogger(__name__)


def embedding_key(manifest: Manifest) -> str:
    """Identifies the embedding space: name, version and a digest of what shapes the vectors.

    Two bundles with the same name and version but other weights or preprocessing get other
    keys, so stale vectors are never mixed with new ones.
    """
    shaping = {
        "members": [m.sha256 for m in manifest.members],
        "input_size": list(manifest.input_size),
        "mean": list(manifest.mean),
        "std": list(manifest.std),
        "tta_flip": manifest.tta_flip,
        "combine": manifest.combine,
    }
    digest = hashlib.sha256(json.dumps(shaping, sort_keys=True).encode()).hexdigest()[:12]
    return f"{manifest.name}:{manifest.version}:{digest}"


@dataclass
class ServiceContext:
    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]
    bundle: Bundle
    index: VectorIndex
    blobs: BlobStore
    embedding_key: str
    inference: InferenceQueue
    index_status: dict[str, Any] = field(default_factory=dict)
    # Scores newly indexed crops against the watchlists (app.services.watchlists).
    watcher: Watcher | None = None

    @property
    def dim(self) -> int:
        return int(self.bundle.embedder.dim)

    def decode(self, data: bytes) -> Any:
        """The one image loader with the service's limits."""
        return load_image(
            data,
            max_side=self.settings.DECODE_MAX_SIDE,
            max_pixels=self.settings.MAX_IMAGE_PIXELS,
        )

    def embedding_row(self, item_id: int, vector: np.ndarray) -> Embedding:
        """The stored embedding of one gallery item under the active model."""
        return Embedding(
            item_id=item_id,
            model_version=self.embedding_key,
            dim=self.dim,
            vector=vector_to_bytes(vector),
        )


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


def index_consistent(ctx: ServiceContext) -> bool:
    with session_scope(ctx.sessions) as session:
        return db_fingerprint(session, ctx.embedding_key) == index_fingerprint(ctx.index)


def sync_index(ctx: ServiceContext) -> tuple[int, int]:
    """Make the index hold exactly the database's embedded ids; returns (added, removed).

    Picks up items written by another process (e.g. ``sketchreid ingest`` while the server
    runs). Cheap when nothing changed: one aggregate query.
    """
    with session_scope(ctx.sessions) as session:
        if db_fingerprint(session, ctx.embedding_key) == index_fingerprint(ctx.index):
            return 0, 0
        db_ids = set(
            session.scalars(
                select(Embedding.item_id).where(Embedding.model_version == ctx.embedding_key)
            )
        )
        present = set(ctx.index.ids().tolist())
        missing = sorted(db_ids - present)
        extra = sorted(present - db_ids)
        removed = ctx.index.remove(extra) if extra else 0
        added = 0
        if missing:
            ids, vectors = load_vectors(session, ctx.embedding_key, ctx.dim, missing)
            ids_now = set(ctx.index.ids().tolist())  # a request may have added some meanwhile
            keep = np.asarray([i not in ids_now for i in ids.tolist()], dtype=bool)
            if keep.any():
                ctx.index.add(ids[keep], vectors[keep])
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
                session.add(ctx.embedding_row(item_id, vector))
            session.commit()
            done += len(ids)
    return done, failed


def prepare_index(ctx: ServiceContext) -> dict[str, Any]:
    """Load the saved index when it matches the database, else rebuild it from the database."""
    settings = ctx.settings
    with session_scope(ctx.sessions) as session:
        db_ids = np.asarray(
            sorted(
                session.scalars(
                    select(Embedding.item_id).where(Embedding.model_version == ctx.embedding_key)
                )
            ),
            dtype=np.int64,
        )
        problem = ctx.index.load(settings.index_dir, ctx.embedding_key, db_ids)
        if problem is None:
            status = {"source": "file", "count": len(ctx.index)}
        else:
            log.warning("rebuilding the index from the database: %s", problem)
            ids, vectors = load_vectors(session, ctx.embedding_key, ctx.dim)
            ctx.index.build(ids, vectors)
            ctx.index.save(settings.index_dir, ctx.embedding_key)
            status = {"source": "rebuilt", "reason": problem, "count": len(ctx.index)}
    status.update(type=ctx.index.index_type, kind=ctx.index.kind)
    ctx.index_status = status
    return status


def open_context(settings: Settings, bundle: Bundle | None = None) -> ServiceContext:
    """Open the database, load the model and the index (see the module docstring)."""
    engine = make_engine(settings.DATABASE_URL)
    try:
        ensure_up_to_date(engine)
        if bundle is None:
            bundle = load_model(settings)
        dim = int(bundle.embedder.dim)
        ctx = ServiceContext(
            settings=settings,
            engine=engine,
            sessions=make_session_factory(engine),
            bundle=bundle,
            index=VectorIndex(
                dim,
                settings.INDEX_TYPE,
                hnsw_m=settings.INDEX_HNSW_M,
                hnsw_ef_construction=settings.INDEX_HNSW_EF_CONSTRUCTION,
                hnsw_ef_search=settings.INDEX_HNSW_EF_SEARCH,
                ivf_nprobe=settings.INDEX_IVF_NPROBE,
                auto_approx_min=settings.INDEX_AUTO_APPROX_FROM,
                exact_filter_max=settings.INDEX_EXACT_FILTER_MAX,
                hnsw_filter_ef_max=settings.INDEX_HNSW_FILTER_EF_MAX,
            ),
            blobs=BlobStore(settings.blob_dir),
            embedding_key=embedding_key(bundle.manifest),
            inference=make_queue(settings),
        )
        try:
            settings.DATA_DIR.mkdir(parents=True, exist_ok=True)
            backfill_embeddings(ctx, batch_size=settings.EMBED_BATCH_SIZE)
            prepare_index(ctx)
            ctx.watcher = make_watcher(ctx)
        except BaseException:
            ctx.inference.close()
            raise
    except BaseException:
        engine.dispose()
        raise
    return ctx


def make_watcher(ctx: ServiceContext) -> Watcher:
    """The watchlist scorer of this process, with the alert webhook when one is configured."""
    from app.services.watchlists import Watcher
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
    return Watcher(ctx.sessions, ctx.embedding_key, ctx.dim, ctx.index, notifier)


def close_context(ctx: ServiceContext, save_index: bool = True) -> None:
    """Finish the model work that waits in the queue and the alerts that wait for the webhook,
    save the index, close the database."""
    try:
        ctx.inference.close()
        if ctx.watcher is not None:
            ctx.watcher.close()
        if save_index:
            sync_index(ctx)
            ctx.index.save(ctx.settings.index_dir, ctx.embedding_key)
    finally:
        ctx.engine.dispose()
