"""Concurrent clients against a live server for a fixed time: errors and latency.

Usage (from the repository root)::

    .venv/bin/python benchmarks/load.py --clients 16 --duration 60                 # SQLite
    .venv/bin/python benchmarks/load.py --clients 16 --duration 60 --database postgres
    .venv/bin/python benchmarks/load.py --json runs/load.json

A ``sketchreid serve`` process (``--model``, default ``model_store/default``) with a fresh
data folder and database holding ``--gallery`` crops (ingested through the batch endpoint).
Then ``--clients`` threads, each with its own connection, loop for ``--duration`` seconds
picking at random (seeded): a search with a sketch (``--search`` share; a third of them
re-ranked, some with a camera filter), the upload of a new crop, or a gallery page. Reported
per kind: requests, errors (any answer but 2xx, or no answer), p50 / p95 / max latency; and
the 5xx the server itself counted (``/metrics``).
"""

from __future__ import annotations

import argparse
import io
import json
import random
import statistics
import sys
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _server import Server, server_errors, temp_database


def picture(n: int, grey: bool = False) -> bytes:
    """A distinct small picture for each ``n`` (JPEG crop, or a grey PNG "sketch")."""
    rng = np.random.default_rng(n)
    coarse = rng.integers(0, 256, size=(8, 4, 3), dtype=np.uint8)
    img = Image.fromarray(coarse, "RGB").resize((48, 96), Image.Resampling.BILINEAR)
    buf = io.BytesIO()
    if grey:
        img.convert("L").save(buf, format="PNG")
    else:
        img.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


class Recorder:
    def __init__(self) -> None:
        self.latency: dict[str, list[float]] = defaultdict(list)
        self.errors: dict[str, list[str]] = defaultdict(list)
        self.lock = threading.Lock()

    def add(self, kind: str, seconds: float, error: str | None) -> None:
        with self.lock:
            self.latency[kind].append(seconds)
            if error is not None:
                self.errors[kind].append(error)

    def summary(self, duration: float) -> dict[str, dict[str, float | int | list[str]]]:
        out: dict[str, dict[str, float | int | list[str]]] = {}
        for kind, values in sorted(self.latency.items()):
            ms = sorted(v * 1000 for v in values)
            out[kind] = {
                "requests": len(ms),
                "per_s": round(len(ms) / duration, 2),
                "errors": len(self.errors[kind]),
                "p50_ms": round(statistics.median(ms), 1),
                "p95_ms": round(ms[min(len(ms) - 1, int(0.95 * len(ms)))], 1),
                "max_ms": round(ms[-1], 1),
                "first_errors": self.errors[kind][:5],
            }
        return out


def _one(client: httpx.Client, kind: str, n: int, rng: random.Random) -> httpx.Response:
    if kind == "search":
        data: dict[str, str | list[str]] = {"top_k": "10"}
        if rng.random() < 1 / 3:
            data["rerank"] = "true"
        if rng.random() < 0.25:
            data["camera_id"] = ["c1", "c2"]
        files = {"sketch": ("s.png", picture(n, grey=True), "image/png")}
        return client.post("/api/v1/search", files=files, data=data)
    if kind == "ingest":
        files = {"image": ("c.jpg", picture(n), "image/jpeg")}
        return client.post("/api/v1/gallery", files=files, data={"camera_id": f"c{n % 4}"})
    return client.get("/api/v1/gallery", params={"limit": 50, "offset": rng.randrange(0, 200)})


def _client(base: str, keys: dict[str, str], until: float, seed: int, shares: tuple[float, float],
            rec: Recorder) -> None:  # fmt: skip
    rng = random.Random(seed)
    n = 10_000_000 + seed * 100_000
    with httpx.Client(base_url=base, timeout=300) as client:
        while time.monotonic() < until:
            roll = rng.random()
            kind = "search" if roll < shares[0] else "ingest" if roll < sum(shares) else "list"
            client.headers["X-API-Key"] = keys["operator" if kind == "ingest" else "investigator"]
            n += 1
            start = time.monotonic()
            try:
                r = _one(client, kind, n, rng)
                error = None if r.is_success else f"{r.status_code}: {r.text[:200]}"
            except httpx.HTTPError as exc:
                error = f"{type(exc).__name__}: {exc}"
            rec.add(kind, time.monotonic() - start, error)


def seed_gallery(base: str, key: str, count: int) -> None:
    with httpx.Client(base_url=base, headers={"X-API-Key": key}, timeout=600) as client:
        for start in range(0, count, 50):
            files = [
                ("images", (f"{n}.jpg", picture(n), "image/jpeg"))
                for n in range(start, min(count, start + 50))
            ]
            meta = json.dumps([{"camera_id": f"c{n % 4}"} for n in range(len(files))])
            r = client.post("/api/v1/gallery/batch", files=files, data={"metadata": meta})
            r.raise_for_status()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument("--model", type=Path, default=Path("model_store/default"))
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--duration", type=float, default=60.0, help="seconds")
    parser.add_argument("--gallery", type=int, default=500, help="crops stored before the run")
    parser.add_argument("--search", type=float, default=0.6, help="share of searches")
    parser.add_argument("--ingest", type=float, default=0.3, help="share of uploads (rest: list)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="sketchreid-load-"))
    rec = Recorder()
    with temp_database(args.database, work) as url:
        server = Server(data_dir=work / "data", database_url=url, model_dir=args.model.resolve())
        server.migrate()
        keys = {role: server.create_key(role) for role in ("operator", "investigator")}
        server.start()
        try:
            seed_gallery(server.base_url, keys["operator"], args.gallery)
            until = time.monotonic() + args.duration
            threads = [
                threading.Thread(
                    target=_client,
                    args=(
                        server.base_url,
                        keys,
                        until,
                        args.seed * 1000 + i,
                        (args.search, args.ingest),
                        rec,
                    ),
                )
                for i in range(args.clients)
            ]
            started = time.monotonic()
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            elapsed = time.monotonic() - started
            fivexx = server_errors(server.base_url)
        finally:
            server.stop()
    kinds = rec.summary(elapsed)
    report = {
        "database": args.database,
        "model": str(args.model),
        "clients": args.clients,
        "duration_s": round(elapsed, 1),
        "gallery_before": args.gallery,
        "requests": sum(len(v) for v in rec.latency.values()),
        "errors": sum(len(v) for v in rec.errors.values()),
        "server_5xx": fivexx,
        "by_kind": kinds,
        "work": str(work),
    }
    print(json.dumps(report, indent=2))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0 if report["errors"] == 0 and fivexx == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
