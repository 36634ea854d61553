"""/api/v1/searches: the past searches the key may read (own; an admin's: all), newest first,
optionally of one case."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query

from app.api.deps import InvestigatorDep, SessionDep, single_valued
from app.api.schemas import SearchHistoryPage, SearchSummaryOut, error_responses
from app.db.types import MAX_ID
from app.services import cases, search_history

router = APIRouter(tags=["search"])

_ONE_EACH = Depends(single_valued(query=("limit", "offset", "case_id")))


@router.get("/searches", response_model=SearchHistoryPage, responses=error_responses(404, 422))
def list_searches(
    session: SessionDep,
    key: InvestigatorDep,
    _once: Annotated[None, _ONE_EACH],
    limit: Annotated[int, Query(ge=1, le=search_history.MAX_LIST_LIMIT)] = 50,
    offset: Annotated[int, Query(ge=0, le=MAX_ID)] = 0,
    case_id: Annotated[
        int | None, Query(ge=1, le=MAX_ID, description="only the searches of this case")
    ] = None,
) -> SearchHistoryPage:
    items, total = search_history.list_searches(
        session, key, limit=limit, offset=offset, case_id=case_id
    )
    by_id = cases.cases_by_id(session, (r.case_id for r in items))
    notes = cases.note_counts(session, (r.id for r in items))
    next_offset = offset + len(items) if offset + len(items) < total else None
    return SearchHistoryPage(
        items=[
            SearchSummaryOut.of(r, by_id.get(r.case_id) if r.case_id else None, notes.get(r.id, 0))
            for r in items
        ],
        total=total,
        limit=limit,
        offset=offset,
        next_offset=next_offset,
    )
