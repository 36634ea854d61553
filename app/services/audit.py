"""The audit trail: what happened to the evidence after the fact (deletions and purges), who
was given and who lost access (API keys created and revoked), an admin opening a search
made with another key, and the casework (cases, notes, watchlists and their alerts).

Searches are audited by their own records (``searches``); this table keeps what would
otherwise vanish with the thing it concerns, and who looked at a search besides the one who
made it. Events are only ever added.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Literal

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.db.models import AuditEvent
from app.db.types import MAX_ID
from app.services.errors import OutOfRangeError

GALLERY_DELETE = "gallery.delete"
SEARCHES_PURGE = "searches.purge"
# details: key_id, name, role (and expires_at) of the key created or revoked; the event's
# api_key_id is the admin key that did it (None: the server's command line).
APIKEY_CREATE = "apikey.create"
APIKEY_REVOKE = "apikey.revoke"
# An admin read a search made with another key. details: search_id, owner (the key that made
# it), what (record, sketch, translated, mark, refine) and, for a file, index.
SEARCH_OPEN = "search.open"
# Casework (app.services.cases, app.services.watchlists). details name the case / search /
# watchlist / alert; changes carry {"from", "to"}; a note's event keeps its text.
CASE_CREATE = "case.create"
CASE_UPDATE = "case.update"
SEARCH_CASE = "search.case"
NOTE_ADD = "note.add"
WATCHLIST_CREATE = "watchlist.create"
WATCHLIST_UPDATE = "watchlist.update"
WATCHLIST_DELETE = "watchlist.delete"
ALERT_RAISE = "alert.raise"
ALERT_ACK = "alert.ack"
ACTIONS = (
    GALLERY_DELETE,
    SEARCHES_PURGE,
    APIKEY_CREATE,
    APIKEY_REVOKE,
    SEARCH_OPEN,
    CASE_CREATE,
    CASE_UPDATE,
    SEARCH_CASE,
    NOTE_ADD,
    WATCHLIST_CREATE,
    WATCHLIST_UPDATE,
    WATCHLIST_DELETE,
    ALERT_RAISE,
    ALERT_ACK,
)
MAX_LIST_LIMIT = 500

Actor = Literal["api", "cli"]


def record(
    session: Session,
    action: str,
    *,
    api_key_id: int | None,
    actor: Actor,
    gallery_id: int | None = None,
    details: dict[str, Any] | None = None,
) -> AuditEvent:
    """Add an event to the session; it commits with the change it records."""
    event = AuditEvent(
        api_key_id=api_key_id,
        actor=actor,
        action=action,
        gallery_id=gallery_id,
        details=details or {},
    )
    session.add(event)
    return event


def deletions(session: Session, gallery_ids: Iterable[int]) -> dict[int, AuditEvent]:
    """The deletion event of each of ``gallery_ids`` that was deleted."""
    ids = sorted({int(i) for i in gallery_ids})
    found: dict[int, AuditEvent] = {}
    for start in range(0, len(ids), 500):
        chunk = ids[start : start + 500]
        for event in session.scalars(
            select(AuditEvent).where(
                AuditEvent.action == GALLERY_DELETE, AuditEvent.gallery_id.in_(chunk)
            )
        ):
            found[int(event.gallery_id or 0)] = event
    return found


def describe_deletion(event: AuditEvent) -> str:
    by = f"API key {event.api_key_id}" if event.api_key_id is not None else "the command line"
    return f"was deleted at {event.created_at.isoformat()} by {by}"


def list_events(
    session: Session,
    *,
    action: str | None = None,
    gallery_id: int | None = None,
    limit: int = 100,
    offset: int = 0,
) -> tuple[list[AuditEvent], int]:
    """A page of events, oldest first, and how many match."""
    if not 1 <= limit <= MAX_LIST_LIMIT:
        raise OutOfRangeError(
            f"limit must be between 1 and {MAX_LIST_LIMIT}, got {limit}", field="limit"
        )
    if not 0 <= offset <= MAX_ID:
        raise OutOfRangeError(
            f"offset must be between 0 and {MAX_ID}, got {offset}", field="offset"
        )
    conditions = []
    if action is not None:
        conditions.append(AuditEvent.action == action)
    if gallery_id is not None:
        conditions.append(AuditEvent.gallery_id == gallery_id)
    total = session.scalar(select(func.count(AuditEvent.id)).where(*conditions))
    items = list(
        session.scalars(
            select(AuditEvent)
            .where(*conditions)
            .order_by(AuditEvent.id)
            .limit(limit)
            .offset(offset)
        )
    )
    return items, int(total or 0)
