"""Kill the server with SIGKILL during concurrent ingestion; count what survived.

Usage (from the repository root)::

    .venv/bin/python benchmarks/crash_trials.py --trials 5                   # SQLite
    .venv/bin/python benchmarks/crash_trials.py --trials 5 --database postgres
    .venv/bin/python benchmarks/crash_trials.py --json runs/crash.json

One data folder and database for all trials. Each trial starts ``sketchreid serve`` (the
first start builds the index, later ones recover from the previous kill), runs
``--single`` clients that upload one crop per request and ``--batch`` clients that upload
``--batch-size`` crops per request (every crop new), and sends SIGKILL to the server at a
random moment ``--kill-after`` seconds in (seeded). Then, with the server dead:

* acknowledged: items the server answered 201 for (single) or ``created`` (batch);
* lost: acknowledged items without a database row, an embedding or their blob file;
* orphans: files in the blob folder that no row references (temporary files included);

and after the next start (which sweeps files older than ``ORPHAN_MIN_AGE_SECONDS``, set to 0
here so that the first sweep shows what a later one would do): orphans left, whether the
in-memory index holds exactly the database's items (``/readyz``), and that every
acknowledged item is served back with the bytes that were sent (sha256).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import random
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _server import Server, temp_database


def crop(n: int) -> bytes:
    """A distinct small JPEG person crop for each ``n``."""
    rng = np.random.default_rng(n)
    coarse = rng.integers(0, 256, size=(8, 4, 3), dtype=np.uint8)
    img = Image.fromarray(coarse, "RGB").resize((48, 96), Image.Resampling.BILINEAR)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


@dataclass
class Acks:
    """Acknowledged uploads: gallery id -> sha256 of the bytes sent."""

    items: dict[int, str] = field(default_factory=dict)
    requests: int = 0
    refused: int = 0  # answered, but not stored (must stay 0)
    reasons: list[str] = field(default_factory=list)  # why, for the first few
    cut: int = 0  # no answer: the kill came first
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, item_id: int, sha: str) -> None:
        with self.lock:
            self.items[item_id] = sha


class Counter:
    def __init__(self, start: int) -> None:
        self.value = start
        self.lock = threading.Lock()

    def take(self, n: int) -> list[int]:
        with self.lock:
            out = list(range(self.value, self.value + n))
            self.value += n
            return out


def _client(
    base: str, key: str, batch: int, numbers: Counter, acks: Acks, stop: threading.Event
) -> None:
    """Upload new crops (``batch`` per request, 0: single) until ``stop`` or the server dies."""
    with httpx.Client(base_url=base, headers={"X-API-Key": key}, timeout=120) as client:
        while not stop.is_set():
            datas = [crop(n) for n in numbers.take(batch or 1)]
            try:
                if batch:
                    files = [("images", (f"{i}.jpg", d, "image/jpeg")) for i, d in enumerate(datas)]
                    r = client.post("/api/v1/gallery/batch", files=files)
                else:
                    r = client.post(
                        "/api/v1/gallery", files={"image": ("c.jpg", datas[0], "image/jpeg")}
                    )
            except httpx.HTTPError:
                with acks.lock:
                    acks.cut += 1
                return  # the server is gone
            with acks.lock:
                acks.requests += 1
                if r.status_code >= 300:
                    acks.refused += 1
                    acks.reasons.append(f"{r.status_code}: {r.text[:200]}")
                    continue
            if batch:
                for result, data in zip(r.json()["results"], datas, strict=True):
                    if result["status"] == "created":
                        acks.add(int(result["item"]["id"]), hashlib.sha256(data).hexdigest())
                    else:
                        with acks.lock:
                            acks.refused += 1
                            acks.reasons.append(f"batch item: {json.dumps(result)[:200]}")
            else:
                acks.add(int(r.json()["id"]), hashlib.sha256(datas[0]).hexdigest())


def stored_state(server: Server) -> tuple[dict[int, str], set[int], set[str]]:
    """(gallery id -> blob path, ids with an embedding, blob files) read from disk and database."""
    from sqlalchemy import create_engine, text

    engine = create_engine(server.database_url)
    try:
        with engine.connect() as conn:
            items = conn.execute(text("SELECT id, blob_path FROM gallery_items"))
            rows = {int(i): str(p) for i, p in items}
            embedded = {int(i) for (i,) in conn.execute(text("SELECT item_id FROM embeddings"))}
    finally:
        engine.dispose()
    root = server.data_dir / "blobs"
    found = root.rglob("*") if root.exists() else iter(())
    return rows, embedded, {str(p.relative_to(root)) for p in found if p.is_file()}


@dataclass
class Trial:
    trial: int
    kill_after_s: float
    requests: int
    refused: int
    refusals: list[str]
    cut: int
    acknowledged_total: int
    lost_so_far: int
    missing_embedding: int
    missing_blob: int
    orphans_after_kill: int
    orphans_after_restart: int
    index_consistent_after_restart: bool
    served_back_ok: int


def run_trial(n: int, server: Server, keys: dict[str, str], acks: Acks, numbers: Counter,
              args: argparse.Namespace, rng: random.Random) -> Trial:  # fmt: skip
    server.start()
    stop = threading.Event()
    before = (acks.requests, acks.refused, acks.cut)
    sizes = [0] * args.single + [args.batch_size] * args.batch
    threads = [
        threading.Thread(
            target=_client, args=(server.base_url, keys["operator"], size, numbers, acks, stop)
        )
        for size in sizes
    ]
    for t in threads:
        t.start()
    delay = rng.uniform(*args.kill_after)
    time.sleep(delay)
    server.kill()
    stop.set()
    for t in threads:
        t.join()
    rows, embedded, files = stored_state(server)
    referenced = set(rows.values())
    lost = [i for i in acks.items if i not in rows]  # of every trial so far
    no_vector = [i for i in acks.items if i in rows and i not in embedded]
    no_blob = [i for i in rows if rows[i] not in files]
    orphans_after_kill = len(files - referenced)
    server.start()  # sweeps orphans (min age 0) and rebuilds / syncs the index
    _, _, files_after = stored_state(server)
    ready = httpx.get(f"{server.base_url}/readyz", timeout=60).json()
    served = 0
    headers = {"X-API-Key": keys["operator"]}
    with httpx.Client(base_url=server.base_url, headers=headers, timeout=60) as c:
        for item_id, sha in acks.items.items():
            r = c.get(f"/api/v1/gallery/{item_id}/image")
            served += int(r.status_code == 200 and hashlib.sha256(r.content).hexdigest() == sha)
    server.stop()
    return Trial(
        trial=n,
        kill_after_s=round(delay, 2),
        requests=acks.requests - before[0],
        refused=acks.refused - before[1],
        refusals=acks.reasons[len(acks.reasons) - (acks.refused - before[1]) :][:5],
        cut=acks.cut - before[2],
        acknowledged_total=len(acks.items),
        lost_so_far=len(lost),
        missing_embedding=len(no_vector),
        missing_blob=len(no_blob),
        orphans_after_kill=orphans_after_kill,
        orphans_after_restart=len(files_after - referenced),
        index_consistent_after_restart=bool(ready["checks"].get("index")),
        served_back_ok=served,
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument("--model", type=Path, default=Path("model_store/default"))
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--single", type=int, default=4, help="single-upload clients")
    parser.add_argument("--batch", type=int, default=2, help="batch-upload clients")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument(
        "--kill-after", type=float, nargs=2, default=(3.0, 8.0), metavar=("MIN", "MAX")
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    args = parser.parse_args(argv)

    rng = random.Random(args.seed)
    work = Path(tempfile.mkdtemp(prefix="sketchreid-crash-"))
    trials: list[Trial] = []
    with temp_database(args.database, work) as url:
        server = Server(
            data_dir=work / "data",
            database_url=url,
            model_dir=args.model.resolve(),
            extra_env={
                "SKETCHREID_ORPHAN_MIN_AGE_SECONDS": "0",
                "SKETCHREID_INDEX_SYNC_SECONDS": "0",
            },
        )
        server.migrate()
        keys = {"operator": server.create_key("operator")}
        acks, numbers = Acks(), Counter(args.seed * 1_000_000)
        try:
            for n in range(1, args.trials + 1):
                trials.append(run_trial(n, server, keys, acks, numbers, args, rng))
                print(json.dumps(asdict(trials[-1])), flush=True)
        finally:
            server.kill()
    last = trials[-1]
    ok = all(
        t.lost_so_far == t.missing_embedding == t.missing_blob == t.refused == 0
        and t.orphans_after_restart == 0
        and t.index_consistent_after_restart
        and t.served_back_ok == t.acknowledged_total
        for t in trials
    )
    report = {
        "database": args.database,
        "model": str(args.model),
        "settings": {k: v for k, v in vars(args).items() if k not in ("json", "database", "model")},
        "trials": [asdict(t) for t in trials],
        "acknowledged": last.acknowledged_total,
        "lost": max(t.lost_so_far for t in trials),
        "orphans_after_kill": sum(t.orphans_after_kill for t in trials),
        "orphans_after_restart": sum(t.orphans_after_restart for t in trials),
        "passed": ok,
        "work": str(work),
    }
    print(json.dumps({k: v for k, v in report.items() if k != "trials"}, indent=2))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
