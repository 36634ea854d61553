"""Database trouble (issue 24): a database that is stopped (``pg_ctl stop -m immediate``) or
frozen (SIGSTOP) gives 503 with Retry-After and a message in bounded time, /readyz says not
ready within about a second, no acknowledged upload is lost, and the service recovers without a
restart. Requests hold a pooled connection only while they use the database, not while images
are decoded and embedded.

The outage tests run a private PostgreSQL cluster (``pgcluster``), never the machine's own.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError

from app.api.main import create_app
from app.api.routes.health import READY_TIMEOUT_S
from app.core.config import Settings, load_settings
from app.db import migrate
from app.db.bounded import DatabaseNoAnswer
from app.db.models import GalleryItem
from app.db.session import DbLimits, make_engine, session_scope
from app.ml.bundle.store import Bundle
from app.services.context import SPARE_CONNECTIONS, sync_index
from app.services.errors import UnavailableError
from app.services.outages import as_outage

from .conftest import Keys, create_keys, running_server
from .helpers import Counting, jpeg, sketch_png
from .pgcluster import PrivateCluster, find_bin

CONNECT_S = 2.0
STATEMENT_S = 2.0
# A stalled database fails a request after at most a ping and a connect attempt
# (2 x CONNECT_S) or one unanswered statement (STATEMENT_S + 1); doubled for a busy machine.
BOUND_S = 2 * max(2 * CONNECT_S, STATEMENT_S + 1)


@pytest.fixture(scope="module")
def cluster() -> Iterator[PrivateCluster]:
    bindir = find_bin()
    if bindir is None:
        reason = "no PostgreSQL binaries (initdb, pg_ctl) for a private cluster"
        if os.environ.get("SKETCHREID_REQUIRE_POSTGRES") == "1":
            pytest.fail(reason + " (SKETCHREID_REQUIRE_POSTGRES=1)")
        pytest.skip(reason)
    cluster = PrivateCluster(bindir)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.close()


@pytest.fixture
def outage_settings(
    cluster: PrivateCluster, tmp_path: Path, bundle_dir: Path
) -> Iterator[Settings]:
    cluster.thaw()
    if not (cluster.data / "postmaster.pid").is_file():
        cluster.start()
    name = f"outage_{uuid.uuid4().hex[:8]}"
    admin = make_url(cluster.url)
    with psycopg.connect(
        host="127.0.0.1", port=cluster.port, user="postgres", dbname="postgres", autocommit=True
    ) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = admin.set(database=name).render_as_string(hide_password=False)
    migrate.upgrade(url)
    yield load_settings(
        DATA_DIR=tmp_path / "data",
        DATABASE_URL=url,
        MODEL_DIR=bundle_dir,
        INDEX_SYNC_SECONDS=0,
        ORPHAN_SWEEP_SECONDS=0,
        DB_CONNECT_TIMEOUT_SECONDS=CONNECT_S,
        DB_STATEMENT_TIMEOUT_SECONDS=STATEMENT_S,
    )
    cluster.thaw()


def _timed(call: Callable[[], httpx.Response]) -> tuple[httpx.Response, float]:
    start = time.monotonic()
    response = call()
    return response, time.monotonic() - start


def _assert_unavailable(response: httpx.Response, elapsed: float) -> None:
    assert response.status_code == 503, response.text
    assert int(response.headers["Retry-After"]) > 0
    detail = response.json()["detail"]
    assert "database" in detail and "send it again" in detail, detail
    assert elapsed < BOUND_S, f"answered after {elapsed:.1f} s"


def _assert_not_ready(http: httpx.Client) -> None:
    ready, elapsed = _timed(lambda: http.get("/readyz"))
    assert ready.status_code == 503
    assert ready.json()["checks"]["database"] is False
    assert ready.json()["status"] == "unavailable"
    assert elapsed < READY_TIMEOUT_S + 0.6, f"/readyz answered after {elapsed:.1f} s"


def _stored_ids(settings: Settings, app: Any) -> tuple[set[int], set[int]]:
    ctx = app.state.ctx
    with session_scope(ctx.sessions) as session:
        db_ids = set(session.scalars(select(GalleryItem.id)))
    return db_ids, set(ctx.index.ids().tolist())


class Uploader:
    """Uploads new crops one after another in a thread; remembers the acknowledged ids."""

    def __init__(self, base: str, headers: dict[str, str]) -> None:
        self.http = httpx.Client(base_url=base, headers=headers, timeout=60)
        self.acknowledged: set[int] = set()
        self.statuses: list[int] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        seed = 10_000
        while not self.stop.is_set():
            seed += 1
            r = self.http.post(
                "/api/v1/gallery", files={"image": ("crop.jpg", jpeg(seed), "image/jpeg")}
            )
            self.statuses.append(r.status_code)
            if r.status_code == 201:
                self.acknowledged.add(int(r.json()["id"]))
            elif r.status_code == 503:
                time.sleep(0.1)

    def wait_for(self, count: int, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while len(self.acknowledged) < count:
            assert time.monotonic() < deadline, f"only {len(self.acknowledged)} acknowledged"
            time.sleep(0.05)

    def finish(self) -> None:
        self.stop.set()
        self.thread.join(60)
        self.http.close()


def test_a_stopped_database_is_a_503_and_loses_no_acknowledged_upload(
    cluster: PrivateCluster, outage_settings: Settings, bundle: Bundle
) -> None:
    keys = create_keys(outage_settings)
    app = create_app(outage_settings, bundle=bundle)
    with running_server(app) as base:
        uploader = Uploader(base, keys.operator)
        http = httpx.Client(base_url=base, timeout=60)
        try:
            uploader.wait_for(3)
            cluster.stop_immediate()
            for call in (
                lambda: http.get("/api/v1/gallery", headers=keys.investigator),
                lambda: http.post(
                    "/api/v1/search",
                    files={"sketch": ("s.png", sketch_png(1), "image/png")},
                    headers=keys.investigator,
                ),
                lambda: http.post(
                    "/api/v1/gallery",
                    files={"image": ("crop.jpg", jpeg(99), "image/jpeg")},
                    headers=keys.operator,
                ),
            ):
                _assert_unavailable(*_timed(call))
            _assert_not_ready(http)
            before = len(uploader.acknowledged)
            cluster.start()
            uploader.wait_for(before + 3)  # recovered without a restart
        finally:
            uploader.finish()
        assert 503 in uploader.statuses
        assert set(uploader.statuses) <= {201, 503}, uploader.statuses
        listed = http.get("/api/v1/gallery?limit=500", headers=keys.investigator)
        assert listed.status_code == 200
        db_ids, index_ids = _stored_ids(outage_settings, app)
        assert uploader.acknowledged <= db_ids
        assert uploader.acknowledged <= index_ids
        assert {i["id"] for i in listed.json()["items"]} == db_ids
        assert http.get("/readyz").status_code == 200
        http.close()


def test_a_frozen_database_is_a_503_in_bounded_time_and_readyz_within_a_second(
    cluster: PrivateCluster, outage_settings: Settings, bundle: Bundle
) -> None:
    keys = create_keys(outage_settings)
    app = create_app(outage_settings, bundle=bundle)
    with running_server(app) as base, httpx.Client(base_url=base, timeout=60) as http:
        first = http.post(
            "/api/v1/gallery",
            files={"image": ("crop.jpg", jpeg(1), "image/jpeg")},
            headers=keys.operator,
        )
        assert first.status_code == 201
        acknowledged = {first.json()["id"]}
        # Pooled connections exist: the frozen server has them open.
        assert http.get("/api/v1/gallery", headers=keys.investigator).status_code == 200
        cluster.freeze()
        try:
            results: list[tuple[httpx.Response, float]] = []
            lock = threading.Lock()

            def listing() -> None:
                got = _timed(lambda: http.get("/api/v1/gallery", headers=keys.investigator))
                with lock:
                    results.append(got)

            threads = [threading.Thread(target=listing) for _ in range(20)]
            for t in threads:
                t.start()
            time.sleep(0.5)
            _assert_not_ready(http)  # while 20 requests wait on the database
            upload, elapsed = _timed(
                lambda: http.post(
                    "/api/v1/gallery",
                    files={"image": ("crop.jpg", jpeg(2), "image/jpeg")},
                    headers=keys.operator,
                )
            )
            _assert_unavailable(upload, elapsed)
            for t in threads:
                t.join(60)
            assert len(results) == 20
            for response, elapsed in results:
                _assert_unavailable(response, elapsed)
        finally:
            cluster.thaw()
        deadline = time.monotonic() + 30
        while http.get("/readyz").status_code != 200:  # back without a restart
            assert time.monotonic() < deadline, http.get("/readyz").text
            sync_index(app.state.ctx)  # an upload cut off at commit may have committed
            time.sleep(0.2)
        listed = http.get("/api/v1/gallery", headers=keys.investigator)
        assert listed.status_code == 200
        db_ids, index_ids = _stored_ids(outage_settings, app)
        assert acknowledged <= db_ids and db_ids == index_ids


def test_statements_are_bounded_on_the_server_and_on_the_client(
    cluster: PrivateCluster, outage_settings: Settings
) -> None:
    url = outage_settings.DATABASE_URL
    limits = DbLimits(connect_s=2, statement_s=1, pool_size=2)
    engine = make_engine(url, limits)
    try:
        # A live server cancels a statement past the statement timeout.
        with engine.connect() as conn, pytest.raises(OperationalError) as cancelled:
            conn.execute(text("SELECT pg_sleep(5)"))
        outage = as_outage(cancelled.value)
        assert isinstance(outage, UnavailableError) and "statement timeout" in str(outage)
        # A server that stops answering mid-transaction: the client gives up.
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
            cluster.freeze()
            try:
                start = time.monotonic()
                with pytest.raises(OperationalError) as stalled:
                    conn.execute(text("SELECT 1"))
                elapsed = time.monotonic() - start
            finally:
                cluster.thaw()
        assert isinstance(stalled.value.orig, DatabaseNoAnswer)
        assert elapsed < limits.answer_s + 1.5, elapsed
        assert "did not answer" in str(as_outage(stalled.value))
    finally:
        engine.dispose()

    # A pooled connection is pinged with the connect timeout before use, so a stalled server
    # fails a new transaction after about 2 x connect_s, not after the statement limit.
    slow = DbLimits(connect_s=2, statement_s=30, pool_size=1)
    engine = make_engine(url, slow)
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))  # now pooled
        cluster.freeze()
        try:
            start = time.monotonic()
            with pytest.raises(OperationalError), engine.connect() as conn:
                conn.execute(text("SELECT 1"))
            elapsed = time.monotonic() - start
        finally:
            cluster.thaw()
        assert elapsed < 2 * slow.connect_s + 2, elapsed
        with engine.connect() as conn:  # and works again once the server answers
            assert conn.execute(text("SELECT 1")).scalar() == 1
    finally:
        engine.dispose()


class PoolProbe(Counting):
    """Records how many pooled connections are checked out whenever a model runs."""

    engine: Any = None

    def __init__(self, inner: Any) -> None:
        super().__init__(inner)
        self.checked_out: list[int] = []

    def _record(self, what: str, n: int) -> None:
        self.checked_out.append(self.engine.pool.checkedout())
        super()._record(what, n)


def test_no_connection_is_held_while_images_are_decoded_and_embedded(
    make_settings: Callable[..., Settings], bundle: Bundle, keys: Keys
) -> None:
    embedder, translator = PoolProbe(bundle.embedder), PoolProbe(bundle.translator)
    copy = Bundle(
        bundle.path,
        bundle.manifest,
        bundle.members,
        embedder,  # type: ignore[arg-type]
        translator,  # type: ignore[arg-type]
        bundle.generator,
    )
    settings = make_settings(WORKER_THREADS=6)
    with TestClient(create_app(settings, bundle=copy)) as client:
        engine = client.app.state.ctx.engine  # type: ignore[attr-defined]
        embedder.engine = translator.engine = engine
        assert engine.pool.size() == 6 + SPARE_CONNECTIONS
        r = client.post(
            "/api/v1/gallery",
            files={"image": ("a.jpg", jpeg(1), "image/jpeg")},
            headers=keys.operator,
        )
        assert r.status_code == 201
        r = client.post(
            "/api/v1/gallery/batch",
            files=[("images", (f"{i}.jpg", jpeg(10 + i), "image/jpeg")) for i in range(3)],
            headers=keys.operator,
        )
        assert r.status_code == 200 and r.json()["created"] == 3
        r = client.post(
            "/api/v1/search",
            files={"sketch": ("s.png", sketch_png(1), "image/png")},
            data={"view": "fused", "confirmed_id": "1"},
            headers=keys.investigator,
        )
        assert r.status_code == 200, r.text
        # A refined search reads the earlier one and its marks before embedding.
        first = r.json()["search_id"]
        r = client.post(
            "/api/v1/search",
            files={"sketch": ("s.png", sketch_png(2), "image/png")},
            data={"refine": first},
            headers=keys.investigator,
        )
        assert r.status_code == 200, r.text
        assert len(embedder.checked_out) >= 4 and translator.checked_out
        assert embedder.checked_out + translator.checked_out == [0] * (
            len(embedder.checked_out) + len(translator.checked_out)
        )
        with session_scope(client.app.state.ctx.sessions) as session:  # type: ignore[attr-defined]
            assert session.scalar(select(func.count(GalleryItem.id))) == 4
