"""The list of past searches a key may see: its own (an admin's: everyone's), newest first.

The web page shows it so that an investigator can reopen a search as it was; the record itself
is read with :func:`app.services.search.get_search`.
"""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.db.models import ApiKey, Search
from app.db.types import MAX_ID
from app.services.cases import get_case
from app.services.errors import OutOfRangeError

MAX_LIST_LIMIT = 200


def list_searches(
    session: Session,
    key: ApiKey,
    *,
    limit: int = 50,
    offset: int = 0,
    case_id: int | None = None,
) -> tuple[list[Search], int]:
    """A page of the searches ``key`` may read, newest first, and how many there are;
    ``case_id``: only that case's (404 when the key may not see the case)."""
    if not 1 <= limit <= MAX_LIST_LIMIT:
        raise OutOfRangeError(
            f"limit must be between 1 and {MAX_LIST_LIMIT}, got {limit}", field="limit"
        )
    if not 0 <= offset <= MAX_ID:
        raise OutOfRangeError(
            f"offset must be between 0 and {MAX_ID}, got {offset}", field="offset"
        )
    conditions = [] if key.role == "admin" else [Search.api_key_id == key.id]
    if case_id is not None:
        get_case(session, case_id, key)
        conditions.append(Search.case_id == case_id)
    total = int(session.scalar(select(func.count(Search.id)).where(*conditions)) or 0)
    stmt = (
        select(Search)
        .where(*conditions)
        .order_by(Search.created_at.desc(), Search.id)
        .limit(limit)
        .offset(offset)
    )
    return list(session.scalars(stmt)), total
