"""ISO 8601 timestamps from users: a UTC offset is required (naive times are refused).

Times are kept in UTC, so a time whose UTC equivalent falls outside years 1-9999 is refused
(422) rather than overflowing later.

A naive time from CCTV export could be local time of any of several sites; guessing UTC would
silently shift evidence by hours, so the service asks for an explicit offset instead.
"""

from __future__ import annotations

from datetime import UTC, datetime

from app.errors import UserInputError
from app.services.errors import OutOfRangeError


def parse_timestamp(value: str | datetime | None, name: str) -> datetime | None:
    """``None``/empty -> None; otherwise an aware UTC datetime, or ``UserInputError``."""
    if value is None:
        return None
    if isinstance(value, datetime):
        parsed = value
    else:
        text = value.strip()
        if not text:
            return None
        try:
            parsed = datetime.fromisoformat(text.replace("z", "Z"))
        except ValueError:
            raise UserInputError(
                f"{name} {value!r} is not an ISO 8601 timestamp (e.g. 2024-05-01T13:45:00Z)"
            ) from None
    if parsed.tzinfo is None or parsed.utcoffset() is None:
        raise UserInputError(
            f"{name} {value!s} has no time zone: add Z or an offset such as +02:00"
        )
    try:
        return parsed.astimezone(UTC)
    except OverflowError:  # e.g. 0001-01-01T00:00+01:00 is in year 0 in UTC
        raise OutOfRangeError(
            f"{name} {value!s} is out of range: in UTC it must fall between "
            f"{datetime.min.isoformat()}Z and {datetime.max.isoformat()}Z",
            field=name,
        ) from None
