"""Infrastructure failures as errors a client can act on: a database that is down, stalled or
out of connections is a 503 with ``Retry-After``; a full disk is a 507. Anything else stays
unexpected (a 500 with a traceback in the log)."""

from __future__ import annotations

import errno
import logging
import shutil
from pathlib import Path

import psycopg
from sqlalchemy import exc as sa_exc

from app.db.bounded import DatabaseNoAnswer
from app.services.errors import InsufficientStorageError, UnavailableError

log = logging.getLogger(__name__)

# Seconds a client is asked to wait before sending a request the database could not serve.
DB_RETRY_AFTER_S = 5
_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


def _database_disk_full(error: sa_exc.DBAPIError) -> bool:
    if isinstance(error.orig, psycopg.errors.DiskFull):
        return True
    return "database or disk is full" in str(error.orig)  # SQLite's SQLITE_FULL


def _why_unavailable(error: BaseException) -> str | None:
    if isinstance(error, sa_exc.TimeoutError):  # no pooled connection came free in time
        return "every database connection is in use"
    if not isinstance(error, sa_exc.DBAPIError):
        return None
    orig = error.orig
    if isinstance(orig, DatabaseNoAnswer):
        return "the database did not answer in time"
    if isinstance(orig, psycopg.errors.QueryCanceled):
        return "a database statement ran past the statement timeout"
    if isinstance(orig, psycopg.errors.ConnectionTimeout):
        return "the database did not accept a connection in time"
    if "database is locked" in str(orig):  # SQLite's busy timeout
        return "the database is busy"
    if error.connection_invalidated or isinstance(
        error, sa_exc.OperationalError | sa_exc.InterfaceError
    ):
        return "the database cannot be reached"
    return None


def check_free_space(folder: Path, needed: int, keep_free_mb: float) -> None:
    """Refuse (507) a write of ``needed`` bytes into ``folder`` that would leave less than
    ``keep_free_mb`` free (``MIN_FREE_DISK_MB``), before anything is written."""
    try:
        free = shutil.disk_usage(folder).free
    except FileNotFoundError:
        return  # not made yet: the write will say
    if free - needed < keep_free_mb * 1048576:
        log.warning(
            "disk nearly full: %.1f MB free in %s, %.0f MB kept free; write refused",
            free / 1048576,
            folder,
            keep_free_mb,
        )
        raise InsufficientStorageError(
            f"the server's disk is nearly full ({free / 1048576:,.1f} MB free, "
            f"{keep_free_mb:g} MB are kept free): nothing was stored; try again once an "
            "operator has freed space"
        )


def as_outage(error: BaseException) -> UnavailableError | InsufficientStorageError | None:
    """The client-facing error for ``error`` when it is an outage, else None."""
    if isinstance(error, UnavailableError | InsufficientStorageError):
        return error
    if isinstance(error, OSError) and error.errno in _DISK_FULL:
        return InsufficientStorageError(
            "the server's disk is full: nothing was stored; try again once an operator has "
            "freed space"
        )
    if isinstance(error, sa_exc.DBAPIError) and _database_disk_full(error):
        return InsufficientStorageError(
            "the database's disk is full: nothing was stored; try again once an operator has "
            "freed space"
        )
    why = _why_unavailable(error)
    if why is None:
        return None
    log.warning("database unavailable: %s (%s)", why, _first_line(error))
    return UnavailableError(
        f"{why}: this request was not completed; send it again in {DB_RETRY_AFTER_S} s "
        "(Retry-After)",
        DB_RETRY_AFTER_S,
    )


def _first_line(error: BaseException) -> str:
    text = str(getattr(error, "orig", None) or error).strip().splitlines()
    return f"{type(error).__name__}: {text[0][:200] if text else ''}"
