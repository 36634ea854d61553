"""What `sketchreid worker` does with a queued message: embed gallery items and index them.

The same inference path as the API's (``ctx.inference``: the dynamic batching queue, the
bundle's precision and backend), then, per item, the embedding row (and its halfvec with
pgvector) and ``status = 'indexed'`` in one transaction. Idempotent by item and model key: an
item that already has an embedding for the worker's model is only marked indexed, and two
workers racing on one item (a message delivered twice) leave one row (the unique constraint
on ``(item_id, model_version)``; the loser's savepoint is rolled back). Items deleted since
they were queued are skipped; an item whose blob is missing or cannot be decoded is marked
``failed`` with the reason (uploading the same bytes again queues it again).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta

import numpy as np
from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError

from app.db.models import Embedding, GalleryItem
from app.db.session import session_scope
from app.db.types import utcnow
from app.errors import SketchReidError
from app.services.context import ServiceContext, load_vectors

log = logging.getLogger(__name__)

MAX_REASON = 500


@dataclass
class IndexReport:
    indexed: int = 0  # embedded now
    already: int = 0  # had an embedding for this model (a message delivered again)
    failed: int = 0
    missing: int = 0  # deleted since queued
    seconds: float = 0.0


def index_items(ctx: ServiceContext, item_ids: Sequence[int]) -> IndexReport:
    start = time.perf_counter()
    report = IndexReport()
    key = ctx.embedding_key
    ids = sorted({int(i) for i in item_ids})
    with session_scope(ctx.sessions) as session:
        rows = session.execute(
            select(GalleryItem.id, GalleryItem.blob_path, GalleryItem.camera_id).where(
                GalleryItem.id.in_(ids)
            )
        ).all()
        cameras: dict[int, str | None] = {int(r[0]): r[2] for r in rows}
        report.missing = len(ids) - len(rows)
        done = set(
            session.scalars(
                select(Embedding.item_id).where(
                    Embedding.model_version == key, Embedding.item_id.in_(ids)
                )
            )
        )
        images, todo = [], []
        failures: dict[int, str] = {}
        for item_id, blob_path, _ in rows:
            if item_id in done:
                continue
            try:
                images.append(ctx.decode(ctx.blobs.read(blob_path)))
                todo.append(int(item_id))
            except (OSError, SketchReidError) as exc:
                failures[int(item_id)] = f"cannot read the stored image {blob_path}: {exc}"
        vectors: np.ndarray | list[np.ndarray] = (
            ctx.inference.embed(ctx.bundle.embedder, images, modality="photo") if images else []
        )
        scored: list[tuple[int, np.ndarray]] = []
        for item_id, vector in zip(todo, vectors, strict=True):
            try:
                with session.begin_nested():
                    ctx.add_embedding(session, item_id, vector)
                report.indexed += 1
                scored.append((item_id, np.asarray(vector, np.float32)))
            except IntegrityError:  # another worker stored it first (or the item went away)
                report.already += 1
        report.already += len(done)
        indexed_ids = [i for i in todo if i not in failures] + sorted(done)
        if indexed_ids:
            session.execute(
                update(GalleryItem)
                .where(GalleryItem.id.in_(indexed_ids))
                .values(status="indexed", status_reason=None)
            )
        for item_id, reason in failures.items():
            log.error("gallery item %d: %s", item_id, reason)
            session.execute(
                update(GalleryItem)
                .where(GalleryItem.id == item_id)
                .values(status="failed", status_reason=reason[:MAX_REASON])
            )
        report.failed = len(failures)
        session.commit()
        if ctx.watcher is not None and done:
            # A message delivered again: its worker may have died between the commit and the
            # scoring, so these are scored again; an alert exists once per watchlist and crop
            # (a unique constraint), so one already raised is not raised twice.
            again, vectors_again = load_vectors(session, key, ctx.dim, sorted(done))
            scored += zip(again.tolist(), vectors_again, strict=True)
    if ctx.watcher is not None:
        # after the commit: a rank threshold searches the index, which now holds these crops
        for item_id, vector in scored:  # never raises: a failure is logged
            ctx.watcher.on_indexed(item_id, cameras.get(item_id), vector)
    report.seconds = time.perf_counter() - start
    return report


def stale_pending(ctx: ServiceContext, older_than_s: float, limit: int = 100_000) -> list[int]:
    """Items pending for longer than ``older_than_s``: their message was never published (a
    crash between the upload's commit and the publish), or their task gave up (the database
    was unreachable for all its retries)."""
    cutoff = utcnow() - timedelta(seconds=older_than_s)
    with session_scope(ctx.sessions) as session:
        return list(
            session.scalars(
                select(GalleryItem.id)
                .where(GalleryItem.status == "pending", GalleryItem.created_at < cutoff)
                .order_by(GalleryItem.id)
                .limit(limit)
            )
        )


def other_model_items(ctx: ServiceContext, limit: int = 100_000) -> list[int]:
    """Items indexed under another model than this worker's (a model change re-embeds through
    the queue), set to pending; their ids."""
    key = ctx.embedding_key
    with session_scope(ctx.sessions) as session:
        has_vector = (
            select(Embedding.id)
            .where(Embedding.item_id == GalleryItem.id, Embedding.model_version == key)
            .exists()
        )
        ids = list(
            session.scalars(
                select(GalleryItem.id)
                .where(GalleryItem.status == "indexed", ~has_vector)
                .order_by(GalleryItem.id)
                .limit(limit)
            )
        )
        if ids:
            session.execute(
                update(GalleryItem)
                .where(GalleryItem.id.in_(ids))
                .values(status="pending", status_reason=None)
            )
            session.commit()
    return ids
