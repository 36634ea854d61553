"""Text that both databases can store, checked wherever free text enters the service.

PostgreSQL's text types cannot hold the NUL character (U+0000): psycopg refuses the value
(``DataError``), in an insert as in a filter. A lone UTF-16 surrogate (U+D800 … U+DFFF, which
JSON's ``"\\ud800"`` escape and Python's ``surrogateescape`` produce) is not a character at all:
it has no UTF-8 encoding, so neither database driver can send it and no JSON answer can carry
it. Both are refused on SQLite too (it would store the NUL), so that a value one database
accepts the other accepts as well, and the refusal is a 400 naming the field, never a 500.
"""

from __future__ import annotations

from app.errors import UserInputError


class UnstorableTextError(UserInputError):
    """Text with a NUL character or a lone surrogate: HTTP 400, the message names the field."""

    def __init__(self, message: str, field: str) -> None:
        super().__init__(message)
        self.field = field


def unstorable_reason(value: str) -> str | None:
    """Why ``value`` cannot be stored (a NUL character, a lone surrogate), or None."""
    nul = value.find("\x00")
    if nul >= 0:
        return f"contains a NUL character (\\x00) at position {nul + 1}"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        code = ord(value[exc.start])
        return (
            f"contains a lone surrogate (U+{code:04X}) at position {exc.start + 1}, "
            "which is not a character"
        )
    return None


def check_text(value: str, field: str) -> str:
    """``value`` itself when the database can store it; else :class:`UnstorableTextError`."""
    reason = unstorable_reason(value)
    if reason is not None:
        raise UnstorableTextError(f"{field} {reason}; text with it cannot be stored", field)
    return value


def display_name(filename: str | None, limit: int = 200) -> str | None:
    """An uploaded file's base name as a person named it (a client's directories dropped), at
    most ``limit`` characters; None when there is none or it could not be stored."""
    if not filename:
        return None
    name = filename.replace("\\", "/").rsplit("/", 1)[-1].strip()
    return name[:limit] if name and unstorable_reason(name) is None else None
