"""PostgreSQL connections that give up on a server that does not answer.

A stopped server refuses connections at once, but a stalled one (frozen, swapping, a network
that drops packets without resetting) accepts bytes and never replies: libpq then waits
forever, and the server-side ``statement_timeout`` cannot fire either. Every wait for the
server (a statement, a commit, a ping) is therefore bounded on the client: past the limit the
connection is closed (it is in an unknown state) and ``psycopg.OperationalError`` says so;
SQLAlchemy sees a closed connection, counts it as a disconnect and drops it from the pool.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg import errors as pg_errors
from sqlalchemy import Connection, text


class DatabaseNoAnswer(psycopg.OperationalError):
    """The server did not answer within the client's limit; the connection was closed."""


class BoundedConnection(psycopg.Connection[Any]):
    """A psycopg connection whose every wait for the server ends after ``answer_timeout``
    seconds (``None``: no limit, psycopg's own behaviour)."""

    answer_timeout: float | None = None

    def wait(self, gen: Any, interval: float = 0.1, timeout: float | None = None) -> Any:
        limit = timeout if timeout is not None else self.answer_timeout
        try:
            return super().wait(gen, interval=interval, timeout=limit)
        # psycopg's documented signal for an expired ``timeout`` (Connection.wait).
        except pg_errors._WaitTimeout:
            if timeout is not None:  # psycopg's own bounded waits handle their timeouts
                raise
            self.pgconn.finish()  # mid-protocol: the connection cannot be used again
            raise DatabaseNoAnswer(
                f"the database did not answer within {limit:g} s; connection closed"
            ) from None

    def ping(self, timeout: float) -> None:
        """A round trip to the server, given up after ``timeout`` seconds."""
        saved = self.answer_timeout
        self.answer_timeout = timeout
        try:
            self.execute("SELECT 1")
            if self.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
                self.rollback()
        finally:
            self.answer_timeout = saved


@contextmanager
def maintenance(conn: Connection) -> Iterator[None]:
    """No statement limit inside ``conn``'s transaction, on the server or on the client: for
    work that is long by nature (building an HNSW index over millions of rows at start-up),
    not for requests. Other connections keep their limits."""
    raw = conn.connection.dbapi_connection
    if conn.dialect.name == "postgresql":
        conn.execute(text("SET LOCAL statement_timeout = 0"))
    saved = raw.answer_timeout if isinstance(raw, BoundedConnection) else None
    if isinstance(raw, BoundedConnection):
        raw.answer_timeout = None
    try:
        yield
    finally:
        if isinstance(raw, BoundedConnection):
            raw.answer_timeout = saved
