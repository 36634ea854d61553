"""Dynamic batching: sequential vs batched embedding, and search throughput with 1 and 16
concurrent clients, batched vs unbatched, all in one run.

Usage (from the repository root)::

    .venv/bin/python benchmarks/bench_batching.py                  # ~1-2 minutes on 2 cores
    .venv/bin/python benchmarks/bench_batching.py --images 512 --searches 96 --waits 2 5

1. Embedding (``app.ml.infer.batching.InferenceQueue`` in front of the bundle's embedder, photos):
   ``--images`` crops embedded one call per crop from one thread (today's single upload), one
   crop per call from ``--clients`` threads without batching (they queue on the model's lock),
   the same threads through the queue, and one call for all crops (the ceiling).
2. Search: the FastAPI app in-process (``TestClient``, no network), a gallery of ``--gallery``
   crops ingested through the batch endpoint, then ``--searches`` searches (translate + embed +
   exact search, top 10) from 1 client and from ``--clients`` clients, with batching off
   (``INFERENCE_MAX_BATCH=1``) and on (``--max-batch``, each of ``--waits`` ms).
   Throughput is searches/s; latency the median and p95 of the request as the client saw it.

``--backend onnx`` runs both parts on ONNX Runtime (what ``BACKEND=auto`` serves where
onnxruntime is installed); ``--threads`` sets the intra-op threads of a pass, as the service's
``INFERENCE_THREADS`` (PyTorch's and ONNX Runtime's; default: PyTorch's own count). Without
``--model`` the random-weight bundle of ``bench_service.py`` is built (ResNet-20,
FC 256, CycleGAN generator ngf 32 / 6 blocks at 64x32).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from fastapi.testclient import TestClient

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from app.api.main import create_app  # noqa: E402
from app.core.config import load_settings  # noqa: E402
from app.db import migrate  # noqa: E402
from app.db.session import session_scope  # noqa: E402
from app.ml.bundle.store import Bundle, load_bundle  # noqa: E402
from app.ml.images import load_image  # noqa: E402
from app.ml.infer.batching import InferenceQueue  # noqa: E402
from app.services import apikeys  # noqa: E402
from app.services.model import load_model  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_service import build_bundle, crop, sketch  # noqa: E402


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


def run_clients(
    clients: int, total: int, one: Callable[[int], Any]
) -> tuple[float, float, list[float]]:
    """``total`` calls of ``one(i)`` spread over ``clients`` threads, each calling in a loop;
    returns (wall seconds, process CPU seconds, per-call latencies in ms)."""
    latencies: list[float] = []
    lock = threading.Lock()
    counter = iter(range(total))
    barrier = threading.Barrier(clients)

    def client() -> None:
        barrier.wait()
        while True:
            with lock:
                i = next(counter, None)
            if i is None:
                return
            t = time.perf_counter()
            one(i)
            ms = (time.perf_counter() - t) * 1000
            with lock:
                latencies.append(ms)

    start, cpu = time.perf_counter(), time.process_time()
    with ThreadPoolExecutor(clients) as pool:
        for f in [pool.submit(client) for _ in range(clients)]:
            f.result()
    return time.perf_counter() - start, time.process_time() - cpu, latencies


@dataclass
class Row:
    label: str
    clients: int
    rate: float  # items (crops or searches) per wall second
    cpu_ms: float  # process CPU ms per item
    per_pass: str  # images per forward pass
    p50: float = float("nan")
    p95: float = float("nan")


def bench_embedding(bundle: Bundle, args: argparse.Namespace) -> list[Row]:
    images = [load_image(crop(i)) for i in range(args.images)]
    embedder = bundle.embedder
    embedder.embed(images[:16], batch_size=16)  # warm-up
    n = len(images)
    rows: list[Row] = []

    wall, cpu, _ = run_clients(1, n, lambda i: embedder.embed([images[i]]))
    rows.append(Row("one crop per call (direct)", 1, n / wall, cpu * 1000 / n, "1"))

    direct = InferenceQueue(max_batch=1, max_wait_ms=0)
    wall, cpu, _ = run_clients(args.clients, n, lambda i: direct.embed(embedder, [images[i]]))
    rows.append(Row("one crop per call, unbatched", args.clients, n / wall, cpu * 1000 / n, "1"))

    for wait in args.waits:
        queue = InferenceQueue(max_batch=args.max_batch, max_wait_ms=wait, max_queued=4096)
        wall, cpu, _ = run_clients(
            args.clients, n, lambda i, q=queue: q.embed(embedder, [images[i]])
        )
        info = queue.describe()
        queue.close()
        rows.append(
            Row(
                f"one crop per call, batched {args.max_batch}/{wait:g} ms",
                args.clients,
                n / wall,
                cpu * 1000 / n,
                f"{info['items'] / max(info['passes'], 1):.1f}",
            )
        )

    wall, cpu = time.perf_counter(), time.process_time()
    embedder.embed(images, batch_size=args.max_batch)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    rows.append(
        Row(
            f"all crops, calls of {args.max_batch} (ceiling)",
            1,
            n / wall,
            cpu * 1000 / n,
            str(args.max_batch),
        )
    )
    return rows


def bench_search(model: Path, bundle: Bundle, tmp: Path, args: argparse.Namespace) -> list[Row]:
    db_url = f"sqlite:///{tmp / 'bench.db'}"
    migrate.upgrade(db_url)
    configs: list[tuple[str, dict[str, object]]] = [("unbatched", {"INFERENCE_MAX_BATCH": 1})]
    for wait in args.waits:
        configs.append(
            (
                f"batched {args.max_batch}/{wait:g} ms",
                {"INFERENCE_MAX_BATCH": args.max_batch, "INFERENCE_MAX_WAIT_MS": wait},
            )
        )
    sketches = [sketch(i) for i in range(64)]
    rows: list[Row] = []
    for label, overrides in configs:
        settings = load_settings(
            DATA_DIR=tmp / "data",
            DATABASE_URL=db_url,
            MODEL_DIR=model,
            INDEX_SYNC_SECONDS=0,
            INDEX_TYPE="flat",
            **overrides,
        )
        with TestClient(create_app(settings, bundle=bundle)) as client:
            ctx = client.app.state.ctx  # type: ignore[attr-defined]
            if len(ctx.index) < args.gallery:
                with session_scope(ctx.sessions) as session:
                    _, op_key = apikeys.create_key(session, "bench-op", "operator")
                for k in range(len(ctx.index), args.gallery, 50):
                    chunk = range(k, min(k + 50, args.gallery))
                    r = client.post(
                        "/api/v1/gallery/batch",
                        files=[("images", (f"{i}.jpg", crop(i), "image/jpeg")) for i in chunk],
                        headers={"X-API-Key": op_key},
                    )
                    assert r.status_code == 200 and r.json()["failed"] == 0, r.text
            with session_scope(ctx.sessions) as session:
                _, inv_key = apikeys.create_key(session, f"bench-{label}", "investigator")
            headers = {"X-API-Key": inv_key}

            def search(
                i: int, client: TestClient = client, headers: dict[str, str] = headers
            ) -> None:
                r = client.post(
                    "/api/v1/search",
                    files={"sketch": ("s.png", sketches[i % len(sketches)], "image/png")},
                    data={"top_k": 10},
                    headers=headers,
                )
                assert r.status_code == 200, r.text

            for i in range(3):  # warm-up
                search(i)
            for clients in (1, args.clients):
                before = ctx.inference.describe()
                wall, cpu, lat = run_clients(clients, args.searches, search)
                after = ctx.inference.describe()
                passes = after["passes"] - before["passes"]
                per_pass = f"{(after['items'] - before['items']) / passes:.1f}" if passes else "1"
                rows.append(
                    Row(
                        label,
                        clients,
                        args.searches / wall,
                        cpu * 1000 / args.searches,
                        per_pass,
                        statistics.median(lat),
                        pct(lat, 95),
                    )
                )
    return rows


def print_table(title: str, rows: list[Row], unit: str, latency: bool) -> None:
    print(f"\n{title}")
    head = f"{'how':<40} {'clients':>7} {unit + '/s':>9} {'x row 1':>7} {'CPU ms':>7}"
    head += f" {'img/pass':>8}"
    if latency:
        head += f" {'p50 ms':>8} {'p95 ms':>8}"
    print(head)
    for row in rows:
        line = (
            f"{row.label:<40} {row.clients:>7} {row.rate:>9.2f} {row.rate / rows[0].rate:>7.2f} "
            f"{row.cpu_ms:>7.1f} {row.per_pass:>8}"
        )
        if latency:
            line += f" {row.p50:>8.1f} {row.p95:>8.1f}"
        print(line)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="bundle folder (default: build a random one)")
    parser.add_argument("--images", type=int, default=256, help="crops for the embedding part")
    parser.add_argument("--gallery", type=int, default=200, help="crops in the search gallery")
    parser.add_argument("--searches", type=int, default=48, help="searches per configuration")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--max-batch", type=int, default=16)
    parser.add_argument("--waits", type=float, nargs="+", default=[2.0], help="max wait, ms")
    parser.add_argument("--skip-embedding", action="store_true")
    parser.add_argument("--skip-search", action="store_true")
    parser.add_argument(
        "--backend",
        choices=["torch", "onnx"],
        default="torch",
        help="what runs the networks (onnx: exported into the temporary folder first)",
    )
    parser.add_argument(
        "--precision",
        choices=["fp32", "int8", "auto"],
        default="fp32",
        help="with --backend onnx, as SKETCHREID_PRECISION (int8/auto: the bundle's prepared "
        "int8 files, or quantised into the temporary folder)",
    )
    parser.add_argument(
        "--threads",
        "--torch-threads",
        type=int,
        default=0,
        help="intra-op threads of a pass, as INFERENCE_THREADS (0: the service's default, "
        "PyTorch's own count: OMP_NUM_THREADS, else one per core)",
    )
    args = parser.parse_args(argv)
    if args.precision != "fp32" and args.backend != "onnx":
        parser.error("--precision int8/auto needs --backend onnx")
    if args.threads:
        torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory(prefix="bench-batching-") as tmp:
        tmp_path = Path(tmp)
        model = args.model or build_bundle(tmp_path / "model")
        if args.backend == "onnx":
            bundle = load_model(
                load_settings(
                    MODEL_DIR=model,
                    DATA_DIR=tmp_path / "onnx",
                    BACKEND="onnx",
                    PRECISION=args.precision,
                    INFERENCE_THREADS=args.threads,
                )
            )
        else:
            bundle = load_bundle(model)
        print(
            f"model {bundle.name} {bundle.version}: dim {bundle.embedder.dim}, translator "
            f"{bundle.translator is not None}, {bundle.inference}; torch threads "
            f"{torch.get_num_threads()}"
        )
        started = time.perf_counter()
        if not args.skip_embedding:
            print_table(
                f"embedding {args.images} photos (CPU ms = process CPU time per crop)",
                bench_embedding(bundle, args),
                "crops",
                latency=False,
            )
        if not args.skip_search:
            searches = bench_search(model, bundle, tmp_path, args)
            print_table(
                f"search, in-process app, gallery {args.gallery}, {args.searches} searches per "
                "row (translate + embed + exact top 10; CPU ms per search)",
                searches,
                "search",
                latency=True,
            )
            lone = {r.label: r for r in searches if r.clients == 1}
            for row in searches:
                if row.clients > 1:
                    print(
                        f"{row.label}: {row.clients} clients / 1 client "
                        f"{row.rate / lone[row.label].rate:.2f}x"
                    )
        print(f"\n(total {time.perf_counter() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
