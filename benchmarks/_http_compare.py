"""``bench_service.py --http``: the in-process app's twin as a live ``sketchreid serve`` process.

The server (``_server.Server``, uvicorn, one worker) gets the in-process app's DATA_DIR, database
and model bundle, and every one of its settings as a ``SKETCHREID_*`` variable, with the backend,
precision, device and intra-op threads its bundle actually runs (the benchmark loads the bundle
with PyTorch; its sessions take this process's PyTorch thread count, which the caller may have
set). The rest of the environment is inherited unchanged (``threads=None``). Before anything
is timed, the two answers of ``GET /api/v1/model`` (model, inference backend, precision and
threads, batching settings, index type and size) must agree, else the run stops.

Each start first saves the in-process index to DATA_DIR/index, so the server loads that very index
(the same HNSW graph, not a rebuild); the caller restarts the server whenever the in-process app
changed the gallery.
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path
from typing import Any

import httpx
from fastapi.testclient import TestClient

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _server import Server, request_counts

# /api/v1/model "batching" entries that count work done rather than describe settings.
COUNTERS = frozenset({"queued", "requests", "items", "passes", "largest_batch", "refused"})
Stats = dict[str, tuple[float, float]]  # stage or "request" -> (median, p95) ms


def server_env(client: TestClient) -> dict[str, str]:
    """``SKETCHREID_*`` variables reproducing the in-process app's settings and inference."""
    ctx = client.app.state.ctx  # type: ignore[attr-defined]
    env = {f"SKETCHREID_{k}": str(v) for k, v in ctx.settings.model_dump().items()}
    env["SKETCHREID_BACKEND"] = ctx.bundle.inference["backend"]
    env["SKETCHREID_PRECISION"] = ctx.bundle.inference["precision"]
    env["SKETCHREID_MODEL_DEVICE"] = str(ctx.bundle.embedder.device)
    # The threads the in-process model really runs with (PyTorch's count of this process when
    # it loaded the bundle, which another caller may have changed), so both run alike.
    env["SKETCHREID_INFERENCE_THREADS"] = str(ctx.bundle.embedder.intra_op_threads())
    return env


def model_view(client: httpx.Client, headers: dict[str, str]) -> dict[str, Any]:
    """``GET /api/v1/model`` without the batching counters."""
    r = client.get("/api/v1/model", headers=headers)
    r.raise_for_status()
    info: dict[str, Any] = r.json()
    info["batching"] = {k: v for k, v in info["batching"].items() if k not in COUNTERS}
    return info


class Twin:
    """At most one ``sketchreid serve`` twin of ``client``'s app at a time (``start`` stops the
    previous one); stopped on leaving the ``with`` block. The in-process app must be idle while
    the twin runs (nothing here runs it), and the twin restarted after the gallery changed."""

    def __init__(self, client: TestClient, headers: dict[str, str]) -> None:
        self.client, self.headers = client, headers
        self.server: Server | None = None
        self.http: httpx.Client | None = None

    def start(self) -> httpx.Client:
        """A fresh server on the in-process app's current index; an httpx client for it."""
        self.stop()
        ctx = self.client.app.state.ctx  # type: ignore[attr-defined]
        settings = ctx.settings
        ctx.index.save(settings.index_dir, ctx.embedding_key)
        self.server = Server(
            data_dir=settings.DATA_DIR,
            database_url=settings.DATABASE_URL,
            model_dir=Path(settings.MODEL_DIR),
            extra_env=server_env(self.client),
            threads=None,
        )
        self.server.start()
        self.http = httpx.Client(base_url=self.server.base_url, timeout=600)
        self.check(self.http)
        return self.http

    def ready(self) -> httpx.Client:
        """The running server (checked again: same index size), else a fresh one."""
        if self.http is None:
            return self.start()
        self.check(self.http)
        return self.http

    def check(self, http: httpx.Client) -> None:
        mine, theirs = model_view(self.client, self.headers), model_view(http, self.headers)
        if mine != theirs:
            raise RuntimeError(f"the server differs from the in-process app:\n{mine}\n{theirs}")

    def stop(self) -> None:
        if self.http is not None:
            self.http.close()
        if self.server is not None:
            self.server.stop()
        self.server = self.http = None

    def __enter__(self) -> Twin:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def served(http: httpx.Client, route: str) -> int:
    """2xx answers to POST ``route`` the live server has counted since it started."""
    counts = request_counts(str(http.base_url).rstrip("/"))
    return sum(n for (m, r, s), n in counts.items() if m == "POST" and r == route and s[0] == "2")


def ratio(a: float, b: float) -> float:
    return a / b if b > 0 else float("nan")


def print_comparison(
    batch: int,
    ingest: dict[str, tuple[int, float]],
    ingest_served: int,
    rows: list[tuple[int, bool, Stats, Stats, int]],
    searches: int,
) -> None:
    """Side by side: in-process (TestClient) against live HTTP (uvicorn, httpx)."""
    print(
        "\nin-process (TestClient) against live HTTP (uvicorn + httpx, same DATA_DIR, database "
        "and settings; never both at the same time)"
    )
    (n_in, rate_in), (n_http, rate_http) = ingest["in-process"], ingest["http"]
    print(
        f"ingestion in batches of {batch} (in-process first, then over HTTP): in-process "
        f"{rate_in:.1f} crops/s ({n_in} files), "
        f"live HTTP {rate_http:.1f} crops/s ({n_http} files, {ingest_served} batch requests "
        f"served by the server), HTTP / in-process {ratio(rate_http, rate_in):.2f}"
    )
    print(
        f"whole-request ms, median / p95 over {searches} searches per path (top_k 10; the paths "
        "alternate search by search)"
    )
    print(
        f"{'gallery':>8} {'rerank':>6} {'in-process p50/p95':>20} {'HTTP p50/p95':>20} "
        f"{'HTTP served':>11} {'HTTP/in-process p50':>19}"
    )
    for size, rerank, mine, theirs, count in rows:
        (p50, p95), (h50, h95) = mine["request"], theirs["request"]
        print(
            f"{size:>8} {('yes' if rerank else 'no'):>6} {p50:>10.2f}/{p95:<9.2f} "
            f"{h50:>10.2f}/{h95:<9.2f} {count:>11} {ratio(h50, p50):>19.3f}"
        )
    medians = [ratio(t["request"][0], m["request"][0]) for _, _, m, t, _ in rows]
    if medians:
        print(f"median of the ratios: {statistics.median(medians):.3f} (target <= 1.10)")
