"""/api/v1/watchlists (searches kept standing: create, list, pause / resume, delete) and
/api/v1/alerts (the crops they matched as they were indexed: list, acknowledge). An
investigator sees the watchlists and alerts of their own key, an admin all of them."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query, Response
from pydantic import BaseModel, ConfigDict, Field

from app.api.deps import CtxDep, InvestigatorDep, SessionDep, single_valued
from app.api.schemas import NOT_BLANK, CaseRef, GalleryItemOut, error_responses
from app.db.models import Alert, Case, GalleryItem, Watchlist
from app.db.types import MAX_ID
from app.services import search as search_service
from app.services import watchlists as service
from app.services.cases import cases_by_id
from app.services.context import ServiceContext

router = APIRouter(tags=["watchlists"])


class WatchlistIn(BaseModel):
    # A threshold is required: min_score, max_rank or both (stated in the schema, too).
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "anyOf": [
                {"required": ["min_score"], "properties": {"min_score": {"type": "number"}}},
                {"required": ["max_rank"], "properties": {"max_rank": {"type": "integer"}}},
            ]
        },
    )

    search_id: uuid.UUID = Field(
        description="the search to keep standing: its sketches in its view, moved by its "
        "feedback and by the marks made on it"
    )
    name: str | None = Field(
        default=None,
        max_length=service.MAX_NAME,
        pattern=NOT_BLANK,
        description="left out: the case's reference or the search",
    )
    case_id: int | None = Field(default=None, description="left out: the search's case")
    camera_ids: list[str] | None = Field(
        default=None, description="only crops of these cameras; left out: the search's cameras"
    )
    min_score: float | None = Field(
        default=None, ge=-1.0, le=1.0, description="alert on a crop scoring at least this"
    )
    max_rank: int | None = Field(
        default=None,
        ge=1,
        le=service.MAX_RANK,
        description="alert on a crop among the first N the query returns from the gallery "
        "(within the cameras)",
    )


class WatchlistPatch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    status: Literal["active", "paused"]


class BestNow(BaseModel):
    gallery_id: int
    score: float


class WatchlistOut(BaseModel):
    id: int
    name: str
    status: Literal["active", "paused"]
    api_key_id: int | None
    case: CaseRef | None
    search_id: uuid.UUID | None
    camera_ids: list[str]
    min_score: float | None
    max_rank: int | None
    created_at: datetime
    alerts: int
    open_alerts: int
    best_now: list[BestNow] | None = Field(
        default=None,
        description="on creation: the crops already in the gallery that score best (they "
        "raise no alert: only crops indexed from now on do), to judge the threshold by",
    )

    @classmethod
    def of(
        cls, row: Watchlist, case: Case | None, alerts: int = 0, open_alerts: int = 0
    ) -> WatchlistOut:
        return cls(
            id=row.id,
            name=row.name,
            status=row.status,  # type: ignore[arg-type]
            api_key_id=row.api_key_id,
            case=CaseRef.of(case),
            search_id=row.search_id,
            camera_ids=list(row.camera_ids or []),
            min_score=row.min_score,
            max_rank=row.max_rank,
            created_at=row.created_at,
            alerts=alerts,
            open_alerts=open_alerts,
        )


class WatchlistList(BaseModel):
    items: list[WatchlistOut]


class AlertOut(BaseModel):
    id: int
    created_at: datetime
    watchlist_id: int
    watchlist_name: str
    case: CaseRef | None
    gallery_id: int
    score: float = Field(description="cosine similarity of the watchlist's query and the crop")
    rank: int | None = Field(description="the crop's rank in the gallery (max_rank watchlists)")
    acknowledged_at: datetime | None
    acknowledged_by: int | None
    item: GalleryItemOut | None = Field(description="the crop; null: deleted since")

    @classmethod
    def of(
        cls, alert: Alert, watch: Watchlist, item: GalleryItem | None, case: Case | None
    ) -> AlertOut:
        return cls(
            id=alert.id,
            created_at=alert.created_at,
            watchlist_id=watch.id,
            watchlist_name=watch.name,
            case=CaseRef.of(case),
            gallery_id=alert.gallery_id,
            score=alert.score,
            rank=alert.rank,
            acknowledged_at=alert.acknowledged_at,
            acknowledged_by=alert.acknowledged_by,
            item=GalleryItemOut.of(item) if item is not None else None,
        )


class AlertPage(BaseModel):
    items: list[AlertOut]
    total: int
    open: int = Field(description="alerts not yet acknowledged (all of them, not this page)")
    limit: int
    offset: int
    next_offset: int | None


def _changed(ctx: ServiceContext) -> None:
    """This process's watcher sees the change before the next crop."""
    if ctx.watcher is not None:
        ctx.watcher.invalidate()


@router.post(
    "/watchlists",
    response_model=WatchlistOut,
    status_code=201,
    responses=error_responses(400, 404, 422),
)
def create_watchlist(
    body: WatchlistIn, ctx: CtxDep, session: SessionDep, key: InvestigatorDep
) -> WatchlistOut:
    """Keep a search standing: every crop indexed from now on is scored against its query,
    and one at or above `min_score`, or within the first `max_rank`, raises an alert."""
    service.check_threshold(body.min_score, body.max_rank)
    record = search_service.get_search(session, body.search_id, key, use="watchlist")
    case_id = body.case_id if body.case_id is not None else record.case_id
    cases = cases_by_id(session, [case_id])
    query = search_service.query_of_search(ctx, session, record)
    cameras = (
        body.camera_ids
        if body.camera_ids is not None
        else list(record.parameters.get("camera_id") or [])
    )
    name = body.name or (
        f"Case {cases[case_id].reference}" if case_id in cases else f"Search {record.id}"
    )
    spec = service.NewWatchlist(
        name=name,
        camera_ids=cameras,
        min_score=body.min_score,
        max_rank=body.max_rank,
        case_id=case_id,
    )
    row = service.create_watchlist(
        session, key, spec, query=query, embedding_key=ctx.embedding_key, search_id=record.id
    )
    _changed(ctx)
    out = WatchlistOut.of(row, cases_by_id(session, [row.case_id]).get(row.case_id or 0))
    best = service.ranks_of(ctx.index).top(session, query, 5, row.camera_ids or ())
    out.best_now = [BestNow(gallery_id=h.id, score=h.score) for h in best]
    return out


@router.get("/watchlists", response_model=WatchlistList)
def list_watchlists(session: SessionDep, key: InvestigatorDep) -> WatchlistList:
    rows = service.list_watchlists(session, key)
    cases = cases_by_id(session, (r.case_id for r, _, _ in rows))
    return WatchlistList(
        items=[WatchlistOut.of(r, cases.get(r.case_id or 0), n, o) for r, n, o in rows]
    )


@router.patch(
    "/watchlists/{watchlist_id:id}",
    response_model=WatchlistOut,
    responses=error_responses(404, 422),
)
def update_watchlist(
    watchlist_id: int, body: WatchlistPatch, ctx: CtxDep, session: SessionDep, key: InvestigatorDep
) -> WatchlistOut:
    """Pause a watchlist (it raises no alert while paused) or make it active again."""
    row = service.set_status(
        session, service.get_watchlist(session, watchlist_id, key), key, body.status
    )
    _changed(ctx)
    return WatchlistOut.of(row, cases_by_id(session, [row.case_id]).get(row.case_id or 0))


@router.delete(
    "/watchlists/{watchlist_id:id}", status_code=204, responses=error_responses(404, 422)
)
def delete_watchlist(
    watchlist_id: int, ctx: CtxDep, session: SessionDep, key: InvestigatorDep
) -> Response:
    """Remove a watchlist and its alerts (the audit trail keeps them)."""
    service.delete_watchlist(session, service.get_watchlist(session, watchlist_id, key), key)
    _changed(ctx)
    return Response(status_code=204)


_ONE_EACH = Depends(single_valued(query=("status", "limit", "offset")))


@router.get("/alerts", response_model=AlertPage, responses=error_responses(422))
def list_alerts(
    session: SessionDep,
    key: InvestigatorDep,
    _once: Annotated[None, _ONE_EACH],
    status: Annotated[Literal["open", "all"], Query(description="open: not acknowledged")] = "all",
    limit: Annotated[int, Query(ge=1, le=service.MAX_LIST_LIMIT)] = 50,
    offset: Annotated[int, Query(ge=0, le=MAX_ID)] = 0,
) -> AlertPage:
    """Alerts of your watchlists (an admin's: all), newest first."""
    rows, total, open_count = service.list_alerts(
        session, key, open_only=status == "open", limit=limit, offset=offset
    )
    cases = cases_by_id(session, (w.case_id for _, w, _ in rows))
    next_offset = offset + len(rows) if offset + len(rows) < total else None
    return AlertPage(
        items=[AlertOut.of(a, w, i, cases.get(w.case_id or 0)) for a, w, i in rows],
        total=total,
        open=open_count,
        limit=limit,
        offset=offset,
        next_offset=next_offset,
    )


@router.post(
    "/alerts/{alert_id:id}/ack", response_model=AlertOut, responses=error_responses(404, 422)
)
def acknowledge_alert(alert_id: int, session: SessionDep, key: InvestigatorDep) -> AlertOut:
    """Mark an alert as seen (audited with who and when)."""
    alert, watch = service.acknowledge(session, alert_id, key)
    item = session.get(GalleryItem, alert.gallery_id)
    case = session.get(Case, watch.case_id) if watch.case_id is not None else None
    return AlertOut.of(alert, watch, item, case)
