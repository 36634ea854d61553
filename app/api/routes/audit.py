"""/api/v1/audit: the audit trail of deletions, purges, key changes, admins' reads of other
keys' searches and the casework (cases, notes, watchlists, alerts) (admin only)."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query

from app.api.deps import AdminDep, SessionDep, single_valued
from app.api.schemas import AuditEventOut, AuditPage, error_responses
from app.db.types import MAX_ID
from app.services import audit

router = APIRouter(prefix="/audit", tags=["audit"])

_ONE_EACH = Depends(single_valued(query=("action", "gallery_id", "limit", "offset")))


@router.get("", response_model=AuditPage, responses=error_responses(422))
def list_events(
    session: SessionDep,
    _key: AdminDep,
    _once: Annotated[None, _ONE_EACH],
    action: Annotated[
        Literal[
            "gallery.delete",
            "searches.purge",
            "apikey.create",
            "apikey.revoke",
            "search.open",
            "case.create",
            "case.update",
            "search.case",
            "note.add",
            "watchlist.create",
            "watchlist.update",
            "watchlist.delete",
            "alert.raise",
            "alert.ack",
        ]
        | None,
        Query(),
    ] = None,
    gallery_id: Annotated[int | None, Query(ge=1, le=MAX_ID)] = None,
    limit: Annotated[int, Query(ge=1, le=audit.MAX_LIST_LIMIT)] = 100,
    offset: Annotated[int, Query(ge=0, le=MAX_ID)] = 0,
) -> AuditPage:
    items, total = audit.list_events(
        session, action=action, gallery_id=gallery_id, limit=limit, offset=offset
    )
    next_offset = offset + len(items) if offset + len(items) < total else None
    return AuditPage(
        items=[AuditEventOut.of(e) for e in items],
        total=total,
        limit=limit,
        offset=offset,
        next_offset=next_offset,
    )
