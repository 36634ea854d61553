"""Per-stage search latency and ingestion throughput of the retrieval service.

Usage (from the repository root)::

    .venv/bin/python benchmarks/bench_service.py                       # 1,000 and 10,000 items
    .venv/bin/python benchmarks/bench_service.py --model model_store/default --searches 50
    .venv/bin/python benchmarks/bench_service.py --http          # also against a live server

Everything runs in-process against a throw-away DATA_DIR and SQLite database (or
``--database-url``), through the FastAPI app with ``TestClient`` (no network):

* ingestion: synthetic person crops (JPEG, 64x128) through ``POST /api/v1/gallery`` (one per
  request) and ``POST /api/v1/gallery/batch`` (``--batch`` per request) -> items/s;
* the 1,000-item gallery is filled through the batch endpoint (the API path);
* the 10,000-item gallery adds the rest as random unit vectors written straight to the
  database (``gallery_items`` + ``embeddings`` rows, no blobs) and loaded with the service
  layer's ``sync_index``: HTTP ingestion of 10k crops would dominate the run and search latency
  depends only on the index and the candidate vectors, not on where they came from;
* searches: ``--searches`` sketches per configuration through ``POST /api/v1/search``, with and
  without re-ranking; median and p95 of each ``timings_ms`` stage and of the whole request.

``--http`` adds the same measurements over real HTTP, on the same DATA_DIR, database, gallery
and sketches: a ``sketchreid serve`` process (benchmarks/_server.py, uvicorn) with the in-process
app's settings, backend, precision and thread environment (benchmarks/_http_compare.py checks
them through ``/api/v1/model``), and an httpx client. The two paths never run at the same time:

* ingestion runs one path after the other: the first half of the batch requests in-process
  (the server not yet started), then the server starts on the in-process app's saved index and,
  after one untimed warm-up search, takes the other half (the in-process app idle); the
  in-process index then picks up the server's items;
* searches: the same server serves every gallery size that needs no new items, and is stopped
  before the random items of a larger one are added and started anew after. Each path gets one
  untimed warm-up search per gallery size, then the searches alternate request by request
  (same sketch; in-process first on even ones, HTTP first on odd ones), so the server is idle
  while the in-process app works and the other way round;
* a second table gives, per gallery size and re-ranking, the in-process and the client-observed
  HTTP whole-request p50 / p95, the searches the server itself counted (its /metrics) and the
  ratio HTTP p50 / in-process p50; and the batch ingestion rate of both paths in crops/s.

Without ``--model`` a random-weight bundle is built (ResNet-20, FC 256, CycleGAN generator
ngf 32 / 6 blocks at 64x32) so the numbers reflect the code path, not accuracy.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import httpx
import numpy as np
import torch
from fastapi.testclient import TestClient
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from app.api.main import create_app  # noqa: E402
from app.core.config import load_settings  # noqa: E402
from app.db import migrate  # noqa: E402
from app.db.models import Embedding, GalleryItem  # noqa: E402
from app.db.session import session_scope  # noqa: E402
from app.ml.bundle.store import save_bundle  # noqa: E402
from app.ml.models.cyclegan import GeneratorSpec, build_generator  # noqa: E402
from app.ml.models.resnet_cifar import MemberSpec, build_member  # noqa: E402
from app.services import apikeys  # noqa: E402
from app.services.context import sync_index, vector_to_bytes  # noqa: E402
from app.services.model import load_model  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _http_compare import Stats, Twin, print_comparison, served  # noqa: E402

STAGES = ("decode", "translate", "embed", "search", "rerank")


def crop(seed: int, size: tuple[int, int] = (64, 128)) -> bytes:
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, size=(8, 4, 3), dtype=np.uint8)
    img = Image.fromarray(coarse, "RGB").resize(size, Image.Resampling.BILINEAR)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def sketch(seed: int) -> bytes:
    rng = np.random.default_rng(10_000 + seed)
    arr = np.full((128, 64), 255, np.uint8)
    for _ in range(20):
        x, y = rng.integers(0, 64), rng.integers(0, 128)
        arr[max(0, y - 10) : y + 10, x] = 0
        arr[y, max(0, x - 8) : x + 8] = 0
    buf = io.BytesIO()
    Image.fromarray(arr, "L").save(buf, format="PNG")
    return buf.getvalue()


def build_bundle(out: Path) -> Path:
    torch.manual_seed(0)
    spec = MemberSpec(arch="resnet20", num_classes=100, fc_dim=256, input_size=(64, 32))
    gen = GeneratorSpec(ngf=32, n_blocks=6, input_size=(64, 32))
    save_bundle(
        out,
        name="bench",
        version="0",
        members=[("m0", spec, build_member(spec).eval(), {})],
        translator=(gen, build_generator(gen).eval(), {}),
        input_size=(64, 32),
    )
    return out


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


def add_random_items(client: TestClient, n: int, seed: int = 0) -> None:
    """n synthetic items with random unit vectors, straight into the database."""
    ctx = client.app.state.ctx  # type: ignore[attr-defined]
    rng = np.random.default_rng(seed)
    with session_scope(ctx.sessions) as session:
        for start in range(0, n, 1000):
            count = min(1000, n - start)
            vectors = rng.normal(size=(count, ctx.dim)).astype(np.float32)
            vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
            items = []
            for k in range(count):
                sha = f"{rng.integers(0, 2**63):016x}".ljust(64, "0")
                items.append(
                    GalleryItem(
                        sha256=sha,
                        blob_path=f"synthetic/{sha}.jpg",
                        content_type="image/jpeg",
                        width=64,
                        height=128,
                        camera_id=f"c{k % 6 + 1}",
                    )
                )
            session.add_all(items)
            session.flush()
            session.add_all(
                Embedding(
                    item_id=item.id,
                    model_version=ctx.embedding_key,
                    dim=ctx.dim,
                    vector=vector_to_bytes(vec),
                )
                for item, vec in zip(items, vectors, strict=True)
            )
            session.commit()
    sync_index(ctx)


def search(
    client: httpx.Client, headers: dict[str, str], seed: int, rerank: bool
) -> tuple[float, dict[str, float]]:
    """One search with sketch ``seed``: whole-request ms and the answer's ``timings_ms``."""
    start = time.perf_counter()
    r = client.post(
        "/api/v1/search",
        files={"sketch": ("s.png", sketch(seed), "image/png")},
        data={"top_k": 10, "rerank": str(rerank).lower()},
        headers=headers,
    )
    elapsed = (time.perf_counter() - start) * 1000
    r.raise_for_status()
    return elapsed, r.json()["timings_ms"]


def run_searches(
    clients: Sequence[httpx.Client], headers: dict[str, str], n: int, rerank: bool
) -> list[Stats]:
    """``n`` searches on each client, alternating (the order flips every search)."""
    per_stage: list[dict[str, list[float]]] = [
        {s: [] for s in (*STAGES, "request")} for _ in clients
    ]
    for i in range(n):
        order = list(enumerate(clients))
        for k, client in order if i % 2 == 0 else order[::-1]:
            elapsed, timings = search(client, headers, i, rerank)
            for stage in STAGES:
                per_stage[k][stage].append(float(timings[stage]))
            per_stage[k]["request"].append(elapsed)
    return [
        {k: (statistics.median(v), pct(v, 95)) for k, v in stats.items()} for stats in per_stage
    ]


def upload_batches(
    client: httpx.Client, headers: dict[str, str], todo: list[int], batch: int
) -> tuple[int, float]:
    """Crops ``todo``, ``batch`` per request: (files, crops/s)."""
    start = time.perf_counter()
    for k in range(0, len(todo), batch):
        chunk = todo[k : k + batch]
        r = client.post(
            "/api/v1/gallery/batch",
            files=[("images", (f"{i}.jpg", crop(i), "image/jpeg")) for i in chunk],
            headers=headers,
        )
        assert r.status_code == 200 and r.json()["failed"] == 0, r.text
    return len(todo), len(todo) / max(time.perf_counter() - start, 1e-9) if todo else 0.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="bundle folder (default: build a random one)")
    parser.add_argument("--galleries", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--api-items", type=int, default=1000, help="items ingested over HTTP")
    parser.add_argument("--single", type=int, default=100, help="single-file uploads to time")
    parser.add_argument("--batch", type=int, default=50, help="files per batch request")
    parser.add_argument("--searches", type=int, default=20)
    parser.add_argument("--rerank-candidates", type=int, default=100)
    parser.add_argument("--index-type", default="flat", choices=["flat", "hnsw", "ivf"])
    parser.add_argument("--database-url", default=None)
    parser.add_argument(
        "--backend",
        default="auto",
        choices=["auto", "torch", "onnx"],
        help="inference backend, as SKETCHREID_BACKEND (default auto: what serve runs)",
    )
    parser.add_argument(
        "--precision",
        default="fp32",
        choices=["fp32", "bf16", "auto", "int8"],
        help="inference precision, as SKETCHREID_PRECISION (int8: quantised at start)",
    )
    parser.add_argument(
        "--http", action="store_true", help="also against a live server (see the docstring)"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))

    with tempfile.TemporaryDirectory(prefix="bench-service-") as tmp:
        tmp_path = Path(tmp)
        model = (args.model or build_bundle(tmp_path / "model")).resolve()
        db_url = args.database_url or f"sqlite:///{tmp_path / 'bench.db'}"
        migrate.upgrade(db_url)
        settings = load_settings(
            DATA_DIR=tmp_path / "data",
            DATABASE_URL=db_url,
            MODEL_DIR=model,
            INDEX_SYNC_SECONDS=0,
            INDEX_TYPE=args.index_type,
            RERANK_CANDIDATES=args.rerank_candidates,
            MAX_BATCH_FILES=max(args.batch, 1),
            BACKEND=args.backend,
            PRECISION=args.precision,
        )
        bundle = load_model(settings)  # what `serve` runs: ONNX Runtime under BACKEND=auto
        print(
            f"model {bundle.name} {bundle.version}: dim {bundle.embedder.dim}, translator "
            f"{bundle.translator is not None}; backend {bundle.inference['backend']} "
            f"{bundle.inference['precision']}; index "
            f"{args.index_type}; torch threads "
            f"{torch.get_num_threads()}; database {db_url.split(':')[0]}"
        )
        with contextlib.ExitStack() as stack:
            client = stack.enter_context(TestClient(create_app(settings, bundle=bundle)))
            ctx = client.app.state.ctx  # type: ignore[attr-defined]
            with session_scope(ctx.sessions) as session:
                _, op_key = apikeys.create_key(session, "bench-op", "operator")
                _, inv_key = apikeys.create_key(session, "bench-inv", "investigator")
            op, inv = {"X-API-Key": op_key}, {"X-API-Key": inv_key}
            twin = stack.enter_context(Twin(client, inv)) if args.http else None

            # Ingestion throughput, single uploads.
            start = time.perf_counter()
            for i in range(args.single):
                r = client.post(
                    "/api/v1/gallery",
                    files={"image": ("c.jpg", crop(i), "image/jpeg")},
                    headers=op,
                )
                assert r.status_code == 201, r.text
            single_rate = args.single / (time.perf_counter() - start)

            # Batch uploads up to --api-items; under --http the first half of the batches
            # in-process, then the rest over HTTP.
            todo = list(range(args.single, max(args.api_items, args.single)))
            half = -(-len(todo) // args.batch // 2) * args.batch if args.http else len(todo)
            files, batch_rate = upload_batches(client, op, todo[:half], args.batch)
            print(
                f"ingestion over HTTP: {single_rate:.1f} items/s one file per request "
                f"({args.single} files), {batch_rate:.1f} items/s in batches of {args.batch} "
                f"({files} files)"
            )
            http_ingest, ingest_served = (0, 0.0), 0
            if twin is not None:
                http = twin.start()
                search(http, inv, -1, True)  # warm-up: connection, first forward passes
                http_ingest = upload_batches(http, op, todo[half:], args.batch)
                ingest_served = served(http, "/api/v1/gallery/batch")
                sync_index(ctx)  # the server's items

            rows: list[tuple[int, bool, Stats]] = []
            http_rows: list[tuple[int, bool, Stats, Stats, int]] = []
            for size in sorted(args.galleries):
                have = len(ctx.index)
                if size > have:
                    if twin is not None:
                        twin.stop()  # restarted below, on the grown gallery
                    add_random_items(client, size - have, seed=size)
                clients: list[httpx.Client] = [client]
                if twin is not None:
                    clients.append(twin.ready())
                    for c in clients:  # warm-up, untimed
                        search(c, inv, -1, True)
                for rerank in (False, True):
                    before = served(clients[1], "/api/v1/search") if twin is not None else 0
                    both = run_searches(clients, inv, args.searches, rerank)
                    rows.append((len(ctx.index), rerank, both[0]))
                    if twin is not None:
                        count = served(clients[1], "/api/v1/search") - before
                        http_rows.append((len(ctx.index), rerank, both[0], both[1], count))

    header = f"{'gallery':>8} {'rerank':>6} " + " ".join(f"{s:>17}" for s in (*STAGES, "request"))
    print(
        f"\nsearch latency, ms, median / p95 over {args.searches} searches (top_k 10, "
        f"rerank over {args.rerank_candidates} candidates)"
    )
    print(header)
    for size, rerank, stats in rows:
        cells = " ".join(f"{stats[s][0]:>8.2f}/{stats[s][1]:<8.2f}" for s in (*STAGES, "request"))
        print(f"{size:>8} {('yes' if rerank else 'no'):>6} {cells}")
    if args.http:
        ingest = {"in-process": (files, batch_rate), "http": http_ingest}
        print_comparison(args.batch, ingest, ingest_served, http_rows, args.searches)
    return 0


if __name__ == "__main__":
    sys.exit(main())
