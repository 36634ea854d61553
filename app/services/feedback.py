"""Relevance feedback: marks on a search's results, and the feedback a new search carries.

A mark is an investigator's judgement of one result: ``confirmed`` (the suspect), ``rejected``
(someone else) or ``none`` (withdrawn). Marks are added, never changed: an item's mark is its
latest row, and every row keeps who (API key) and when.

A search carries feedback as gallery ids: the ids sent with it (``confirmed_id`` /
``rejected_id``) and, with ``refine``, the earlier search's own feedback and its marks. The
query is moved with :func:`app.ml.retrieval.feedback.build_query`; every id is checked to exist (404
otherwise, saying when and by whom a deleted item was deleted).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.db.models import Search, SearchMark
from app.errors import UserInputError
from app.services.context import ServiceContext, load_vectors
from app.services.errors import OutOfRangeError
from app.services.gallery import get_item

Mark = Literal["confirmed", "rejected", "none"]
# Confirmed plus rejected ids one search may carry.
MAX_FEEDBACK_IDS = 200


@dataclass(frozen=True)
class Feedback:
    """Gallery ids judged the suspect (``confirmed``) or someone else (``rejected``), sorted."""

    confirmed: tuple[int, ...] = ()
    rejected: tuple[int, ...] = ()

    @property
    def ids(self) -> tuple[int, ...]:
        return self.confirmed + self.rejected

    def __bool__(self) -> bool:
        return bool(self.confirmed or self.rejected)

    def as_json(self) -> dict[str, list[int]]:
        return {"confirmed_ids": list(self.confirmed), "rejected_ids": list(self.rejected)}


def recorded_feedback(record: Search) -> Feedback:
    """The feedback a stored search was made with."""
    params = record.parameters
    return Feedback(
        tuple(int(i) for i in params.get("confirmed_ids") or ()),
        tuple(int(i) for i in params.get("rejected_ids") or ()),
    )


def mark_history(session: Session, search_id: uuid.UUID) -> list[SearchMark]:
    """Every mark made on the search's results, oldest first."""
    stmt = select(SearchMark).where(SearchMark.search_id == search_id).order_by(SearchMark.id)
    return list(session.scalars(stmt))


def current_marks(session: Session, search_id: uuid.UUID) -> dict[int, str]:
    """gallery id -> its latest mark, leaving out withdrawn ones."""
    latest: dict[int, str] = {}
    for row in mark_history(session, search_id):
        latest[int(row.gallery_id)] = row.mark
    return {gid: mark for gid, mark in latest.items() if mark != "none"}


def add_mark(
    session: Session, record: Search, gallery_id: int, mark: Mark, *, api_key_id: int | None
) -> SearchMark:
    """Record a judgement of one of ``record``'s results and commit it.

    Refuses an id that is not among the search's results (400) and an item deleted since
    (404, saying when and by whom).
    """
    if mark not in ("confirmed", "rejected", "none"):
        raise OutOfRangeError(
            f"mark must be confirmed, rejected or none, got {mark!r}", field="mark"
        )
    listed = {int(r["gallery_id"]) for r in record.results}
    if gallery_id not in listed:
        raise UserInputError(
            f"gallery item {gallery_id} is not among the results of search {record.id}: "
            "mark the results you were shown"
        )
    get_item(session, gallery_id)  # 404 when deleted since
    row = SearchMark(search_id=record.id, gallery_id=gallery_id, mark=mark, api_key_id=api_key_id)
    session.add(row)
    session.commit()
    return row


def combine(
    confirmed: Iterable[int], rejected: Iterable[int], refine: Search | None, session: Session
) -> Feedback:
    """The feedback of a new search: the refined search's feedback, then its marks, then the
    ids sent with the request; a later statement about an id replaces an earlier one.

    An id sent both as confirmed and as rejected is refused (400).
    """
    sent_confirmed, sent_rejected = set(confirmed), set(rejected)
    both = sorted(sent_confirmed & sent_rejected)
    if both:
        raise UserInputError(
            f"gallery item(s) {', '.join(map(str, both))} sent both as confirmed and as rejected"
        )
    marks: dict[int, str] = {}
    if refine is not None:
        earlier = recorded_feedback(refine)
        marks.update(dict.fromkeys(earlier.confirmed, "confirmed"))
        marks.update(dict.fromkeys(earlier.rejected, "rejected"))
        marks.update(current_marks(session, refine.id))
    marks.update(dict.fromkeys(sent_confirmed, "confirmed"))
    marks.update(dict.fromkeys(sent_rejected, "rejected"))
    result = Feedback(
        tuple(sorted(i for i, m in marks.items() if m == "confirmed")),
        tuple(sorted(i for i, m in marks.items() if m == "rejected")),
    )
    if len(result.ids) > MAX_FEEDBACK_IDS:
        raise OutOfRangeError(
            f"a search can carry at most {MAX_FEEDBACK_IDS} confirmed and rejected ids, "
            f"got {len(result.ids)}",
            field="confirmed_id",
        )
    return result


def feedback_vectors(
    ctx: ServiceContext, session: Session, feedback: Feedback
) -> tuple[np.ndarray, np.ndarray]:
    """Stored embeddings (confirmed, rejected) of the feedback ids under the active model.

    Every id must be a gallery item (404 otherwise: unknown, or deleted and by whom).
    """
    for gallery_id in feedback.ids:
        get_item(session, gallery_id)
    ids, vectors = load_vectors(session, ctx.embedding_key, ctx.dim, list(feedback.ids))
    row = {int(i): k for k, i in enumerate(ids)}
    missing = sorted(set(feedback.ids) - set(row))
    if missing:  # an item whose image could not be embedded with this model
        raise UserInputError(
            f"gallery item(s) {', '.join(map(str, missing))} have no embedding for the active "
            "model and cannot be used as feedback"
        )
    confirmed = vectors[[row[i] for i in feedback.confirmed]]
    rejected = vectors[[row[i] for i in feedback.rejected]]
    return confirmed.reshape(-1, ctx.dim), rejected.reshape(-1, ctx.dim)
