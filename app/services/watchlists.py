"""Watchlists: searches kept standing, and the alerts they raise.

A watchlist keeps the query vector of an earlier search (its sketches in its view, moved by
its feedback and marks: :func:`app.services.search.query_of_search`), optional cameras, and a
threshold: a cosine score (``min_score``) and / or a rank within the gallery (``max_rank``:
the crop is among the first N the query would return from the whole gallery, or from its
cameras).

Design: every crop is scored as it is indexed, in the process that embeds it: without a
broker the API server or ``sketchreid ingest`` (the embedded single-process profile works the
same as beside a server database); with one (the cluster profile) the ``sketchreid worker``
that embedded it, after its commit (:func:`app.services.indexing.index_items`; API replicas
score nothing). A message delivered again is scored again and raises nothing new: one alert per
watchlist and crop (a unique constraint). :meth:`Watcher.on_indexed` multiplies its
vector by the matrix of the active watchlists' vectors, held in memory and reloaded when the
set of active watchlists changes (a cheap aggregate query, at most once a second, notices
changes made by another process; this process's own changes are seen at once). A rank
threshold runs an index search (a :class:`RankIndex`: FAISS in memory, or pgvector in
PostgreSQL) only for a crop that reaches the watchlist's last known ``max_rank``-th score.
A hit is stored as an :class:`~app.db.models.Alert`, audited (``alert.raise``), and handed
to the webhook thread (:mod:`app.services.webhook`), which posts it without holding up
ingestion. A failure in any of this is logged and never fails
the upload. Crops indexed before a watchlist was made are not alerted on (its ``best_now``
shows them).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, Protocol

import numpy as np
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from app.db.models import Alert, ApiKey, Case, GalleryItem, Watchlist
from app.db.types import MAX_ID, is_valid_id, utcnow
from app.index.pgvector import PgVectorIndex
from app.index.store import Hit, VectorIndex
from app.services import audit
from app.services.cases import get_case
from app.services.errors import NotFoundError, OutOfRangeError
from app.services.gallery import camera_filter
from app.services.text import check_text
from app.services.webhook import WebhookNotifier

log = logging.getLogger(__name__)

MAX_RANK = 100
MAX_NAME = 200
MAX_LIST_LIMIT = 200
Status = Literal["active", "paused"]


def _visible(key: ApiKey) -> list[Any]:
    return [] if key.role == "admin" else [Watchlist.api_key_id == key.id]


def get_watchlist(session: Session, watchlist_id: int, key: ApiKey) -> Watchlist:
    row = session.get(Watchlist, watchlist_id) if is_valid_id(watchlist_id) else None
    if row is None or (key.role != "admin" and row.api_key_id != key.id):
        raise NotFoundError(f"watchlist {watchlist_id} does not exist")
    return row


def check_threshold(min_score: float | None, max_rank: int | None) -> None:
    if min_score is None and max_rank is None:
        raise OutOfRangeError(
            "give min_score (a cosine score, -1 to 1) or max_rank (1 to "
            f"{MAX_RANK}), or both: a watchlist needs a threshold",
            field="min_score",
        )
    if min_score is not None and not (math.isfinite(min_score) and -1.0 <= min_score <= 1.0):
        raise OutOfRangeError(
            f"min_score must be between -1 and 1, got {min_score}", field="min_score"
        )
    if max_rank is not None and not 1 <= max_rank <= MAX_RANK:
        raise OutOfRangeError(
            f"max_rank must be between 1 and {MAX_RANK}, got {max_rank}", field="max_rank"
        )


@dataclass
class NewWatchlist:
    name: str
    camera_ids: Sequence[str] = ()
    min_score: float | None = None
    max_rank: int | None = None
    case_id: int | None = None


def create_watchlist(
    session: Session,
    key: ApiKey,
    spec: NewWatchlist,
    *,
    query: np.ndarray,
    embedding_key: str,
    search_id: Any = None,
) -> Watchlist:
    """Store a watchlist of ``query`` (checked first; nothing is written on a refusal)."""
    name = check_text(spec.name, "name").strip()
    if not name or len(name) > MAX_NAME:
        raise OutOfRangeError(f"name must be 1 to {MAX_NAME} characters", field="name")
    check_threshold(spec.min_score, spec.max_rank)
    cameras = camera_filter(spec.camera_ids)
    case = get_case(session, spec.case_id, key) if spec.case_id is not None else None
    row = Watchlist(
        name=name,
        api_key_id=key.id,
        case_id=case.id if case is not None else None,
        search_id=search_id,
        status="active",
        camera_ids=cameras,
        min_score=spec.min_score,
        max_rank=spec.max_rank,
        embedding_key=embedding_key,
        vector=np.ascontiguousarray(query, dtype="<f4").tobytes(),
    )
    session.add(row)
    session.flush()
    audit.record(
        session,
        audit.WATCHLIST_CREATE,
        api_key_id=key.id,
        actor="api",
        details={
            "watchlist_id": row.id,
            "name": name,
            "search_id": str(search_id) if search_id is not None else None,
            "case_id": row.case_id,
            "camera_ids": cameras,
            "min_score": spec.min_score,
            "max_rank": spec.max_rank,
        },
    )
    session.commit()
    return row


def set_status(session: Session, row: Watchlist, key: ApiKey, status: Status) -> Watchlist:
    if status not in ("active", "paused"):
        raise OutOfRangeError(f"status must be active or paused, got {status!r}", field="status")
    if row.status != status:
        audit.record(
            session,
            audit.WATCHLIST_UPDATE,
            api_key_id=key.id,
            actor="api",
            details={"watchlist_id": row.id, "status": {"from": row.status, "to": status}},
        )
        row.status = status
        session.commit()
    return row


def delete_watchlist(session: Session, row: Watchlist, key: ApiKey) -> None:
    """Remove a watchlist and its alerts (their ``alert.raise`` events stay)."""
    count = session.scalar(select(func.count(Alert.id)).where(Alert.watchlist_id == row.id))
    audit.record(
        session,
        audit.WATCHLIST_DELETE,
        api_key_id=key.id,
        actor="api",
        details={"watchlist_id": row.id, "name": row.name, "alerts": int(count or 0)},
    )
    session.delete(row)
    session.commit()


def list_watchlists(session: Session, key: ApiKey) -> list[tuple[Watchlist, int, int]]:
    """(watchlist, alerts, open alerts) of the watchlists ``key`` may see, newest first."""
    rows = list(
        session.scalars(select(Watchlist).where(*_visible(key)).order_by(Watchlist.id.desc()))
    )
    counts: dict[int, tuple[int, int]] = {}
    if rows:
        stmt = (
            select(
                Alert.watchlist_id,
                func.count(Alert.id),
                func.count(Alert.id).filter(Alert.acknowledged_at.is_(None)),
            )
            .where(Alert.watchlist_id.in_([r.id for r in rows]))
            .group_by(Alert.watchlist_id)
        )
        counts = {int(w): (int(n), int(o)) for w, n, o in session.execute(stmt)}
    return [(r, *counts.get(r.id, (0, 0))) for r in rows]


def list_alerts(
    session: Session,
    key: ApiKey,
    *,
    open_only: bool = False,
    limit: int = 50,
    offset: int = 0,
) -> tuple[list[tuple[Alert, Watchlist, GalleryItem | None]], int, int]:
    """A page of alerts of the watchlists ``key`` may see, newest first; how many match, and
    how many of all of them are still open (not acknowledged)."""
    if not 1 <= limit <= MAX_LIST_LIMIT:
        raise OutOfRangeError(
            f"limit must be between 1 and {MAX_LIST_LIMIT}, got {limit}", field="limit"
        )
    if not 0 <= offset <= MAX_ID:
        raise OutOfRangeError(
            f"offset must be between 0 and {MAX_ID}, got {offset}", field="offset"
        )
    base = select(Alert, Watchlist).join(Watchlist, Watchlist.id == Alert.watchlist_id)
    base = base.where(*_visible(key))
    opened = Alert.acknowledged_at.is_(None)
    open_count = session.scalar(
        select(func.count(Alert.id))
        .join(Watchlist, Watchlist.id == Alert.watchlist_id)
        .where(*_visible(key), opened)
    )
    conditions = [opened] if open_only else []
    total = session.scalar(
        select(func.count(Alert.id))
        .join(Watchlist, Watchlist.id == Alert.watchlist_id)
        .where(*_visible(key), *conditions)
    )
    rows = session.execute(
        base.where(*conditions).order_by(Alert.id.desc()).limit(limit).offset(offset)
    ).all()
    ids = [int(a.gallery_id) for a, _ in rows]
    items = (
        {i.id: i for i in session.scalars(select(GalleryItem).where(GalleryItem.id.in_(ids)))}
        if ids
        else {}
    )
    return (
        [(a, w, items.get(int(a.gallery_id))) for a, w in rows],
        int(total or 0),
        int(open_count or 0),
    )


def acknowledge(session: Session, alert_id: int, key: ApiKey) -> tuple[Alert, Watchlist]:
    alert = session.get(Alert, alert_id) if is_valid_id(alert_id) else None
    watch = session.get(Watchlist, alert.watchlist_id) if alert is not None else None
    if alert is None or watch is None or (key.role != "admin" and watch.api_key_id != key.id):
        raise NotFoundError(f"alert {alert_id} does not exist")
    if alert.acknowledged_at is None:
        alert.acknowledged_at = utcnow()
        alert.acknowledged_by = key.id
        audit.record(
            session,
            audit.ALERT_ACK,
            api_key_id=key.id,
            actor="api",
            gallery_id=alert.gallery_id,
            details={"alert_id": alert.id, "watchlist_id": watch.id},
        )
        session.commit()
    return alert, watch


# --- scoring new crops -------------------------------------------------------------------


@dataclass
class _Active:
    """The active watchlists of one embedding space, as arrays."""

    fingerprint: tuple[int, int, int]
    ids: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    matrix: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.float32))
    min_score: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    max_rank: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    # filtered[k]: watchlist k names cameras; by_camera[c][k]: camera c is one of them.
    filtered: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))
    by_camera: dict[str, np.ndarray] = field(default_factory=dict)
    # bars[k]: the score a crop must reach to be among watchlist k's first max_rank (the
    # max_rank-th best score of its last rank search; -inf: not known). The gallery only grows
    # between deletions, so a crop below the bar cannot be among them and skips the search.
    bars: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    rows: dict[int, Watchlist] = field(default_factory=dict)


def alert_payload(
    alert: Alert, watch: Watchlist, item: GalleryItem | None, case: Case | None
) -> dict[str, Any]:
    """The JSON an alert is posted as (the same fields the API lists)."""

    def iso(when: datetime | None) -> str | None:
        return when.isoformat() if when is not None else None

    return {
        "alert_id": alert.id,
        "created_at": iso(alert.created_at),
        "score": alert.score,
        "rank": alert.rank,
        "gallery_id": alert.gallery_id,
        "watchlist": {"id": watch.id, "name": watch.name},
        "case": {"id": case.id, "reference": case.reference} if case is not None else None,
        "camera_id": item.camera_id if item is not None else None,
        "captured_at": iso(item.captured_at) if item is not None else None,
        "sha256": item.sha256 if item is not None else None,
        "url": f"/api/v1/alerts/{alert.id}",
        "image_url": f"/api/v1/gallery/{alert.gallery_id}/image",
    }


class RankIndex(Protocol):
    """What a rank threshold needs of the gallery's index, whichever backend holds it."""

    def total(self, session: Session) -> int:
        """How many crops the index holds (a drop means deletions: the bars are reset)."""
        ...

    def top(
        self, session: Session, query: np.ndarray, k: int, camera_ids: Sequence[str]
    ) -> list[Hit]:
        """The ``k`` best crops for ``query``, best first (only those of ``camera_ids`` when
        it names any), as the searches would return them."""
        ...


class FaissRanks:
    """Ranks in this process's in-memory FAISS index. ``refresh`` first brings the index up
    to the database (a worker, whose index is not loaded at its start and is filled the first
    time a rank threshold needs it; the API server's index is kept by its own writes)."""

    def __init__(self, index: VectorIndex, refresh: Callable[[], object] | None = None) -> None:
        self.index = index
        self.refresh = refresh

    def total(self, session: Session) -> int:
        return len(self.index)

    def top(
        self, session: Session, query: np.ndarray, k: int, camera_ids: Sequence[str]
    ) -> list[Hit]:
        if self.refresh is not None:
            self.refresh()
        allowed: list[int] | None = None
        if camera_ids:
            allowed = list(
                session.scalars(
                    select(GalleryItem.id).where(GalleryItem.camera_id.in_(list(camera_ids)))
                )
            )
        return self.index.search(query, k, allowed)


class PgVectorRanks:
    """Ranks in PostgreSQL (the pgvector backend): every process sees the same index."""

    def __init__(self, index: PgVectorIndex) -> None:
        self.index = index

    def total(self, session: Session) -> int:
        return self.index.total(session)

    def top(
        self, session: Session, query: np.ndarray, k: int, camera_ids: Sequence[str]
    ) -> list[Hit]:
        conditions = [GalleryItem.camera_id.in_(list(camera_ids))] if camera_ids else []
        found = self.index.search(session, query, k, conditions)
        session.rollback()  # ends the read (and its SET LOCALs) before alerts are written
        return found


def ranks_of(
    index: VectorIndex | PgVectorIndex, refresh: Callable[[], object] | None = None
) -> RankIndex:
    """The :class:`RankIndex` of a process's index (``refresh``: see :class:`FaissRanks`)."""
    if isinstance(index, PgVectorIndex):
        return PgVectorRanks(index)
    return FaissRanks(index, refresh)


class Watcher:
    """Scores newly indexed crops against the active watchlists (see the module docstring)."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        embedding_key: str,
        dim: int,
        ranks: RankIndex,
        notifier: WebhookNotifier | None = None,
        *,
        refresh_seconds: float = 1.0,
    ) -> None:
        self.sessions = sessions
        self.embedding_key = embedding_key
        self.dim = dim
        self.ranks = ranks
        self.notifier = notifier
        self._active = _Active(fingerprint=(-1, -1, -1))
        self._lock = threading.Lock()
        self._index_size = 0
        self.refresh_seconds = refresh_seconds
        self._checked = -math.inf

    def _fingerprint(self, session: Session) -> tuple[int, int, int]:
        row = session.execute(
            select(
                func.count(Watchlist.id),
                func.coalesce(func.sum(Watchlist.id), 0),
                func.coalesce(func.sum(Watchlist.id * Watchlist.id), 0),
            ).where(Watchlist.status == "active", Watchlist.embedding_key == self.embedding_key)
        ).one()
        return int(row[0]), int(row[1]), int(row[2])

    def invalidate(self) -> None:
        """Look at the database before the next crop (this process changed a watchlist)."""
        self._checked = -math.inf

    def _current(self) -> _Active:
        """The active watchlists: the database is asked whether their set changed at most
        every ``refresh_seconds`` (and at once after :meth:`invalidate`)."""
        now = time.monotonic()
        if now - self._checked < self.refresh_seconds:
            return self._active
        with self.sessions() as session:
            active = self._load(session)
        self._checked = now
        return active

    def _load(self, session: Session) -> _Active:
        """The active watchlists, reloaded only when their set changed."""
        fingerprint = self._fingerprint(session)
        with self._lock:
            if fingerprint == self._active.fingerprint:
                return self._active
        rows = list(
            session.scalars(
                select(Watchlist)
                .where(Watchlist.status == "active", Watchlist.embedding_key == self.embedding_key)
                .order_by(Watchlist.id)
            )
        )
        for row in rows:
            session.expunge(row)
        active = _Active(
            fingerprint=fingerprint,
            ids=np.asarray([r.id for r in rows], np.int64),
            matrix=(
                np.stack([np.frombuffer(r.vector, dtype="<f4") for r in rows]).astype(np.float32)
                if rows
                else np.zeros((0, self.dim), np.float32)
            ),
            min_score=np.asarray(
                [r.min_score if r.min_score is not None else np.inf for r in rows], np.float32
            ),
            max_rank=np.asarray([r.max_rank or 0 for r in rows], np.int64),
            filtered=np.asarray([bool(r.camera_ids) for r in rows], bool),
            bars=np.full(len(rows), -np.inf, np.float32),
            rows={r.id: r for r in rows},
        )
        for k, r in enumerate(rows):
            for camera in r.camera_ids or ():
                active.by_camera.setdefault(camera, np.zeros(len(rows), bool))[k] = True
        with self._lock:
            self._active = active
        return active

    def _rank(self, session: Session, active: _Active, k: int, item_id: int) -> int | None:
        """The crop's rank for watchlist ``k``'s query in the gallery (within its cameras),
        when it is among the first ``max_rank``; else None. Updates the watchlist's bar."""
        row = active.rows[int(active.ids[k])]
        assert row.max_rank is not None
        found = self.ranks.top(session, active.matrix[k], row.max_rank, row.camera_ids or ())
        active.bars[k] = found[-1].score if len(found) == row.max_rank else -np.inf
        for position, hit in enumerate(found, 1):
            if hit.id == item_id:
                return position
        return None

    def on_indexed(self, item_id: int, camera_id: str | None, vector: np.ndarray) -> list[int]:
        """Score one newly indexed crop; store, audit and post its alerts. Returns the alert
        ids. Never raises: a failure is logged and the crop stays ingested."""
        try:
            return self._score(item_id, camera_id, vector)
        except Exception:
            log.exception("watchlists: scoring gallery item %s failed", item_id)
            return []

    def _score(self, item_id: int, camera_id: str | None, vector: np.ndarray) -> list[int]:
        active = self._current()
        if not active.ids.size:
            return []
        with self.sessions() as session:
            if active.max_rank.any():
                total = self.ranks.total(session)
                if total < self._index_size:  # deletions may have lowered the bars
                    active.bars.fill(-np.inf)
                self._index_size = total
            scores = active.matrix @ np.asarray(vector, np.float32).reshape(-1)
            named = active.by_camera.get(camera_id or "")
            watching = ~active.filtered if named is None else ~active.filtered | named
            by_score = scores >= active.min_score
            by_rank = (active.max_rank > 0) & (scores >= active.bars - 1e-5)
            hits: list[tuple[int, float, int | None]] = []
            for k in np.flatnonzero(watching & (by_score | by_rank)).tolist():
                watchlist_id, score = int(active.ids[k]), float(scores[k])
                rank = None
                if by_rank[k]:
                    rank = self._rank(session, active, k, item_id)
                if by_score[k] or rank is not None:
                    hits.append((watchlist_id, score, rank))
            if not hits:
                return []
            return self._raise(session, item_id, hits)

    def _raise(
        self, session: Session, item_id: int, hits: list[tuple[int, float, int | None]]
    ) -> list[int]:
        made: list[Alert] = []
        for watchlist_id, score, rank in hits:
            alert = Alert(watchlist_id=watchlist_id, gallery_id=item_id, score=score, rank=rank)
            session.add(alert)
            try:
                session.flush()
            except IntegrityError:  # already alerted (or the watchlist was deleted meanwhile)
                session.rollback()
                continue
            audit.record(
                session,
                audit.ALERT_RAISE,
                api_key_id=None,
                actor="api",
                gallery_id=item_id,
                details={
                    "alert_id": alert.id,
                    "watchlist_id": watchlist_id,
                    "score": score,
                    "rank": rank,
                },
            )
            session.commit()
            made.append(alert)
        if made and self.notifier is not None:
            item = session.get(GalleryItem, item_id)
            for alert in made:
                watch = session.get(Watchlist, alert.watchlist_id)
                if watch is None:
                    continue
                case = session.get(Case, watch.case_id) if watch.case_id is not None else None
                self.notifier.send(alert_payload(alert, watch, item, case))
        return [a.id for a in made]

    def close(self) -> None:
        if self.notifier is not None:
            self.notifier.close()
