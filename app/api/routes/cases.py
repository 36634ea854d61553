"""/api/v1/cases (open, list, retitle cases), /api/v1/searches/{id}/case (move a search to a
case) and /api/v1/searches/{id}/notes (notes on a search and its results). An investigator
sees the cases of their own key, an admin every case; every change is audited."""

from __future__ import annotations

import uuid

from fastapi import APIRouter

from app.api.deps import InvestigatorDep, SessionDep
from app.api.schemas import (
    CaseIn,
    CaseList,
    CaseOut,
    CaseRef,
    CaseUpdate,
    NoteIn,
    NoteOut,
    SearchCaseIn,
    error_responses,
)
from app.services import cases
from app.services import search as search_service

router = APIRouter(tags=["cases"])


@router.post(
    "/cases", response_model=CaseOut, status_code=201, responses=error_responses(400, 409, 422)
)
def create_case(body: CaseIn, session: SessionDep, key: InvestigatorDep) -> CaseOut:
    """Open a case: a reference unique among your cases (409 when taken) and a title."""
    case = cases.create_case(session, key, body.reference, body.title)
    return CaseOut.full(case, 0)


@router.get("/cases", response_model=CaseList)
def list_cases(session: SessionDep, key: InvestigatorDep) -> CaseList:
    """Your cases (an admin's: every case), newest first."""
    return CaseList(items=[CaseOut.full(c, n) for c, n in cases.list_cases(session, key)])


@router.get("/cases/{case_id:id}", response_model=CaseOut, responses=error_responses(404, 422))
def get_case(case_id: int, session: SessionDep, key: InvestigatorDep) -> CaseOut:
    case = cases.get_case(session, case_id, key)
    return CaseOut.full(case, cases.search_count(session, case.id))


@router.patch(
    "/cases/{case_id:id}", response_model=CaseOut, responses=error_responses(400, 404, 422)
)
def update_case(
    case_id: int, body: CaseUpdate, session: SessionDep, key: InvestigatorDep
) -> CaseOut:
    """Change the case's title (audited with the old and the new one)."""
    case = cases.update_case(session, cases.get_case(session, case_id, key), key, body.title)
    return CaseOut.full(case, cases.search_count(session, case.id))


@router.put(
    "/searches/{search_id:uuid}/case",
    response_model=CaseRef | None,
    responses=error_responses(404, 422),
)
def move_search(
    search_id: uuid.UUID, body: SearchCaseIn, session: SessionDep, key: InvestigatorDep
) -> CaseRef | None:
    """Put the search into a case (null: out of any); audited with from and to."""
    record = search_service.get_search(session, search_id, key, use="case")
    return CaseRef.of(cases.move_search(session, record, body.case_id, key))


@router.post(
    "/searches/{search_id:uuid}/notes",
    response_model=NoteOut,
    status_code=201,
    responses=error_responses(400, 404, 422),
)
def add_note(
    search_id: uuid.UUID, body: NoteIn, session: SessionDep, key: InvestigatorDep
) -> NoteOut:
    """A note on the search, or with `gallery_id` on one of its results (who and when are
    kept; notes are never changed; the audit trail keeps the text)."""
    record = search_service.get_search(session, search_id, key, use="note")
    return NoteOut.of(cases.add_note(session, record, key, body.text, body.gallery_id))
