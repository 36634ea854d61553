"""Cases and notes: the paperwork around searches.

A case is a reference (unique per key) and an optional title; a search belongs to at most one
case, chosen when it runs (``case_id``) or changed later. A note is text on a search or on one
of its results, kept with who and when. Notes are only added, never changed.

Who sees what: an investigator's key sees the cases it opened (and only its own searches, as
before); an admin sees every case. Opening a case, changing its title, moving a search to
another case and adding a note are recorded in the audit trail (``case.create``,
``case.update``, ``search.case``, ``note.add``), each committed with the change.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable

from sqlalchemy import ColumnElement, func, select
from sqlalchemy.orm import Session

from app.db.models import ApiKey, Case, Note, Search
from app.db.types import is_valid_id
from app.errors import UserInputError
from app.services import audit
from app.services.errors import ConflictError, NotFoundError, OutOfRangeError
from app.services.gallery import get_item
from app.services.text import check_text

MAX_REFERENCE = 100
MAX_TITLE = 300
MAX_NOTE = 4000


def _clean(value: str | None, field: str, limit: int, *, required: bool) -> str | None:
    if value is None:
        if required:
            raise OutOfRangeError(f"{field} is required", field=field)
        return None
    value = check_text(value, field).strip()
    if not value:
        if required:
            raise OutOfRangeError(f"{field} must not be empty", field=field)
        return None
    if len(value) > limit:
        raise OutOfRangeError(
            f"{field} must be at most {limit} characters, got {len(value)}", field=field
        )
    return value


def visible(key: ApiKey) -> list[ColumnElement[bool]]:
    """Conditions selecting the cases ``key`` may see."""
    return [] if key.role == "admin" else [Case.api_key_id == key.id]


def get_case(session: Session, case_id: int, key: ApiKey) -> Case:
    case = session.get(Case, case_id) if is_valid_id(case_id) else None
    if case is None or (key.role != "admin" and case.api_key_id != key.id):
        raise NotFoundError(f"case {case_id} does not exist")
    return case


def create_case(session: Session, key: ApiKey, reference: str, title: str | None) -> Case:
    """Open a case for ``key``; a reference the key already uses is refused (409)."""
    ref = _clean(reference, "reference", MAX_REFERENCE, required=True)
    clean_title = _clean(title, "title", MAX_TITLE, required=False)
    existing = session.scalar(select(Case).where(Case.api_key_id == key.id, Case.reference == ref))
    if existing is not None:
        raise ConflictError(f"you already have case {existing.id} with reference {ref!r}")
    case = Case(reference=ref, title=clean_title, api_key_id=key.id)
    session.add(case)
    session.flush()
    audit.record(
        session,
        audit.CASE_CREATE,
        api_key_id=key.id,
        actor="api",
        details={"case_id": case.id, "reference": ref, "title": clean_title},
    )
    session.commit()
    return case


def update_case(session: Session, case: Case, key: ApiKey, title: str | None) -> Case:
    """Change a case's title (None or empty: no title); audited with the old and new title."""
    clean_title = _clean(title, "title", MAX_TITLE, required=False)
    if clean_title == case.title:
        return case
    audit.record(
        session,
        audit.CASE_UPDATE,
        api_key_id=key.id,
        actor="api",
        details={"case_id": case.id, "title": {"from": case.title, "to": clean_title}},
    )
    case.title = clean_title
    session.commit()
    return case


def list_cases(session: Session, key: ApiKey) -> list[tuple[Case, int]]:
    """The cases ``key`` may see, newest first, each with how many searches it holds."""
    counts = (
        select(Search.case_id, func.count(Search.id).label("n"))
        .where(Search.case_id.is_not(None))
        .group_by(Search.case_id)
        .subquery()
    )
    stmt = (
        select(Case, func.coalesce(counts.c.n, 0))
        .outerjoin(counts, counts.c.case_id == Case.id)
        .where(*visible(key))
        .order_by(Case.created_at.desc(), Case.id.desc())
    )
    return [(case, int(n)) for case, n in session.execute(stmt)]


def search_count(session: Session, case_id: int) -> int:
    return int(session.scalar(select(func.count(Search.id)).where(Search.case_id == case_id)) or 0)


def note_counts(session: Session, search_ids: Iterable[uuid.UUID]) -> dict[uuid.UUID, int]:
    ids = list(search_ids)
    if not ids:
        return {}
    stmt = (
        select(Note.search_id, func.count(Note.id))
        .where(Note.search_id.in_(ids))
        .group_by(Note.search_id)
    )
    return {sid: int(n) for sid, n in session.execute(stmt)}


def cases_by_id(session: Session, ids: Iterable[int | None]) -> dict[int, Case]:
    wanted = sorted({int(i) for i in ids if i is not None})
    if not wanted:
        return {}
    return {c.id: c for c in session.scalars(select(Case).where(Case.id.in_(wanted)))}


def check_case_for_search(session: Session, case_id: int | None, key: ApiKey) -> Case | None:
    """The case a new search goes into (404 when the key may not see it)."""
    return None if case_id is None else get_case(session, case_id, key)


def move_search(session: Session, record: Search, case_id: int | None, key: ApiKey) -> Case | None:
    """Put a search into another case (None: out of any); audited with from and to."""
    case = check_case_for_search(session, case_id, key)
    if record.case_id == case_id:
        return case
    audit.record(
        session,
        audit.SEARCH_CASE,
        api_key_id=key.id,
        actor="api",
        details={"search_id": str(record.id), "case_id": {"from": record.case_id, "to": case_id}},
    )
    record.case_id = case_id
    session.commit()
    return case


def add_note(
    session: Session, record: Search, key: ApiKey, text: str, gallery_id: int | None
) -> Note:
    """A note on the search (``gallery_id`` None) or on one of its results (400 when the id
    is not among them). The audit event keeps the text, so it outlives a purge."""
    clean = _clean(text, "text", MAX_NOTE, required=True)
    assert clean is not None
    if gallery_id is not None:
        listed = {int(r["gallery_id"]) for r in record.results}
        if gallery_id not in listed:
            raise UserInputError(
                f"gallery item {gallery_id} is not among the results of search {record.id}: "
                "note the results you were shown (or leave gallery_id out for the search)"
            )
        get_item(session, gallery_id)  # 404 when deleted since, saying when and by whom
    note = Note(search_id=record.id, gallery_id=gallery_id, text=clean, api_key_id=key.id)
    session.add(note)
    session.flush()
    audit.record(
        session,
        audit.NOTE_ADD,
        api_key_id=key.id,
        actor="api",
        gallery_id=gallery_id,
        details={"search_id": str(record.id), "note_id": note.id, "text": clean},
    )
    session.commit()
    return note


def notes_of(session: Session, search_id: uuid.UUID) -> list[Note]:
    """Every note on a search and its results, oldest first."""
    return list(session.scalars(select(Note).where(Note.search_id == search_id).order_by(Note.id)))
