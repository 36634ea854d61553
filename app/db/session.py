"""Engine and session creation for SQLite and PostgreSQL.

Requests hold a pooled connection only while they use the database: a session takes one at
its first statement and gives it back at commit or rollback (:func:`release` before slow work
such as decoding and inference). PostgreSQL connections have a connect timeout, a server-side
statement timeout and a client-side limit on every wait for an answer (``app.db.bounded``), so
a database that is down or stalled fails a request in bounded time instead of hanging it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, exc
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from app.db.bounded import BoundedConnection
from app.errors import SketchReidError


@dataclass(frozen=True)
class DbLimits:
    """How long the service waits for its database, and how many connections it pools.

    ``connect_s``: to open a connection (PostgreSQL counts whole seconds, at least 2) and to
    wait for a free pooled one; ``statement_s``: the server cancels a statement running longer
    (PostgreSQL), and the client gives up on a server that has not answered ``statement_s`` + 1
    seconds after being asked (``None``: no limit, for migrations that rewrite large tables);
    ``pool_size``: connections kept (no overflow beyond them).
    """

    connect_s: float = 5.0
    statement_s: float | None = 10.0
    pool_size: int = 5

    @property
    def answer_s(self) -> float | None:
        return None if self.statement_s is None else self.statement_s + 1.0


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def _postgres_setup(limits: DbLimits) -> Any:
    def setup(dbapi_connection: Any, _record: Any) -> None:
        """Sessions in UTC whatever the server's zone or the client's PGTZ: in a zone east of
        UTC PostgreSQL would show 9999-12-31T23:59Z as year 10000, which no datetime can hold.
        Statements cancelled by the server after ``limits.statement_s``."""
        with dbapi_connection.cursor() as cursor:
            cursor.execute("SET TIME ZONE 'UTC'")
            ms = 0 if limits.statement_s is None else int(limits.statement_s * 1000)
            cursor.execute(f"SET statement_timeout = {ms}")
        dbapi_connection.commit()
        if isinstance(dbapi_connection, BoundedConnection):
            dbapi_connection.answer_timeout = limits.answer_s

    return setup


def _postgres_connect(limits: DbLimits) -> Any:
    def connect(_dialect: Any, _record: Any, cargs: Any, cparams: dict[str, Any]) -> Any:
        cparams.setdefault("connect_timeout", max(2, round(limits.connect_s)))
        # psycopg prepares a statement after 5 runs and the server may then keep a generic
        # plan that ignores later SET LOCALs (pgvector's hnsw.ef_search, iterative_scan) and
        # the partial HNSW index's predicate: plan every query with its values.
        cparams.setdefault("prepare_threshold", None)
        return BoundedConnection.connect(*cargs, **cparams)

    return connect


def _postgres_ping(limits: DbLimits) -> Any:
    def ping(dbapi_connection: Any, _record: Any, _proxy: Any) -> None:
        """A pooled connection is checked before use (the server may have restarted or
        stalled since): no answer within ``limits.connect_s`` and the pool opens another."""
        if not isinstance(dbapi_connection, BoundedConnection):
            return
        try:
            dbapi_connection.ping(limits.connect_s)
        except Exception as error:
            raise exc.DisconnectionError(str(error)) from error

    return ping


def make_engine(url: str, limits: DbLimits | None = None, **kwargs: Any) -> Engine:
    """An engine for ``url``; SQLite gets WAL, foreign keys and a busy timeout, PostgreSQL the
    timeouts of ``limits`` (defaults: :class:`DbLimits`).

    The parent folder of a SQLite file is created; a bad URL raises ``SketchReidError``.
    """
    limits = limits or DbLimits()
    pool = {"pool_size": limits.pool_size, "max_overflow": 0, "pool_timeout": limits.connect_s}
    try:
        parsed = make_url(url)
    except exc.ArgumentError as error:
        raise SketchReidError(f"bad database URL {url!r}: {error}") from None
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database
        if database and database != ":memory:":
            Path(database).parent.mkdir(parents=True, exist_ok=True)
            kwargs = {**pool, **kwargs}  # a file: a queue pool, sized like PostgreSQL's
        engine = create_engine(
            parsed, connect_args={"check_same_thread": False, "timeout": 30}, **kwargs
        )
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    if parsed.get_backend_name() != "postgresql":
        return create_engine(parsed, pool_pre_ping=True, **kwargs)
    psycopg3 = parsed.get_driver_name() == "psycopg"
    engine = create_engine(parsed, pool_pre_ping=not psycopg3, **{**pool, **kwargs})
    if psycopg3:  # the driver the service ships with: bounded waits, its own ping
        event.listen(engine, "do_connect", _postgres_connect(limits))
        event.listen(engine, "checkout", _postgres_ping(limits))
    event.listen(engine, "connect", _postgres_setup(limits))
    return engine


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(bind=engine, expire_on_commit=False)


@contextmanager
def session_scope(factory: sessionmaker[Session]) -> Iterator[Session]:
    """A session that is closed (and rolled back if not committed) on exit."""
    session = factory()
    try:
        yield session
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def release(session: Session) -> None:
    """Give the session's connection back to the pool (ending its read-only transaction)
    before slow work that needs no database; loaded objects stay usable. Only where nothing is
    pending: a write must be committed or rolled back by the code that made it."""
    if session.new or session.dirty or session.deleted:
        raise RuntimeError("release() with unsaved changes in the session")
    session.commit()
