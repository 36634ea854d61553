"""What active watchlists cost ingestion: crops/s with none, with N score-threshold watchlists,
and with N rank-threshold ones, in one run.

Usage (from the repository root)::

    .venv/bin/python benchmarks/bench_watchlists.py                      # ~1-2 minutes, 2 cores
    .venv/bin/python benchmarks/bench_watchlists.py --watchlists 1000 --crops 64 --rounds 3

Each crop goes through the service's single-upload path (``app.services.gallery.ingest_image``:
decode, embed through the batching queue, store, index, then
:meth:`app.services.watchlists.Watcher.on_indexed`). The gallery is first filled with
``--gallery`` crops; every measured crop is new (its own bytes). The watchlists are random
unit vectors in the model's space (as many as ``--watchlists``), written once; a configuration
is chosen by pausing / activating them, so every configuration reads the same database. The
rounds alternate the configurations (off: no watcher at all, as before watchlists existed;
none: the watcher with no active watchlist; score; rank; off, ...) so that drift in the
machine's load falls on all of them. Score thresholds are 0.99 (practically no alert: the cost
measured is the scoring, not the alerts); rank thresholds are ``--max-rank``. Without
``--model`` the random-weight bundle of ``bench_service.py`` is built.

Besides crops/s, the time of the scoring call alone (``on_indexed``) is reported, median over
the measured crops.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from sqlalchemy import update

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from app.core.config import load_settings  # noqa: E402
from app.db import migrate  # noqa: E402
from app.db.models import Watchlist  # noqa: E402
from app.db.session import session_scope  # noqa: E402
from app.ml.bundle.store import load_bundle  # noqa: E402
from app.services import apikeys, gallery  # noqa: E402
from app.services.context import close_context, open_context  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_service import build_bundle, crop  # noqa: E402

CONFIGS = ("off", "none", "score", "rank")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--watchlists", type=int, default=1000)
    parser.add_argument("--gallery", type=int, default=500, help="crops in the gallery first")
    parser.add_argument("--crops", type=int, default=48, help="crops per configuration per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--max-rank", type=int, default=10)
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--torch-threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.torch_threads)

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model = args.model or build_bundle(root / "bundle")
        url = f"sqlite:///{root / 'bench.db'}"
        migrate.upgrade(url)
        settings = load_settings(
            DATA_DIR=root / "data", DATABASE_URL=url, MODEL_DIR=model, INDEX_SYNC_SECONDS=0
        )
        ctx = open_context(settings, load_bundle(model))
        assert ctx.watcher is not None
        try:
            with session_scope(ctx.sessions) as session:
                key, _ = apikeys.create_key(session, "bench", "investigator")
                key_id = key.id
                t = time.perf_counter()
                for seed in range(args.gallery):
                    gallery.ingest_image(ctx, session, crop(seed))
                print(f"gallery: {args.gallery} crops in {time.perf_counter() - t:.1f} s")
                rng = np.random.default_rng(0)
                vectors = rng.normal(size=(2 * args.watchlists, ctx.dim)).astype(np.float32)
                vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
                for k, v in enumerate(vectors):
                    by_rank = k >= args.watchlists
                    session.add(
                        Watchlist(
                            name=f"w{k}",
                            api_key_id=key_id,
                            status="paused",
                            camera_ids=[],
                            min_score=None if by_rank else 0.99,
                            max_rank=args.max_rank if by_rank else None,
                            embedding_key=ctx.embedding_key,
                            vector=v.astype("<f4").tobytes(),
                        )
                    )
                session.commit()

            def activate(config: str) -> None:
                with session_scope(ctx.sessions) as session:
                    session.execute(update(Watchlist).values(status="paused"))
                    if config == "score":
                        session.execute(
                            update(Watchlist)
                            .where(Watchlist.max_rank.is_(None))
                            .values(status="active")
                        )
                    elif config == "rank":
                        session.execute(
                            update(Watchlist)
                            .where(Watchlist.max_rank.is_not(None))
                            .values(status="active")
                        )
                    session.commit()

            watcher = ctx.watcher
            inner = watcher.on_indexed
            scoring: list[float] = []

            def timed(*a: object) -> list[int]:
                t = time.perf_counter()
                out = inner(*a)  # type: ignore[arg-type]
                scoring.append(time.perf_counter() - t)
                return out

            watcher.on_indexed = timed  # type: ignore[method-assign]
            rates: dict[str, list[float]] = {c: [] for c in CONFIGS}
            scores_ms: dict[str, list[float]] = {c: [] for c in CONFIGS}
            seed = 1_000_000
            for _ in range(args.rounds):
                for config in CONFIGS:
                    ctx.watcher = None if config == "off" else watcher
                    activate(config)
                    watcher.invalidate()  # as the API does after a change
                    scoring.clear()
                    with session_scope(ctx.sessions) as session:
                        # one crop first: the watcher reloads its watchlists and, for rank
                        # thresholds, learns each one's bar with one search each (not measured)
                        gallery.ingest_image(ctx, session, crop(seed))
                        seed += 1
                        scoring.clear()
                        t = time.perf_counter()
                        for _ in range(args.crops):
                            gallery.ingest_image(ctx, session, crop(seed))
                            seed += 1
                        rates[config].append(args.crops / (time.perf_counter() - t))
                    scores_ms[config].extend(s * 1000 for s in scoring)
        finally:
            ctx.watcher = watcher
            close_context(ctx, save_index=False)

    print(
        f"\n{args.watchlists} active watchlists of each kind, gallery {args.gallery}+ crops, "
        f"{args.crops} crops x {args.rounds} rounds per configuration, torch threads "
        f"{args.torch_threads}, dim {ctx.dim}"
    )
    print(
        f"{'configuration':<28} {'crops/s (median)':>17} {'rounds min-max':>15} {'vs off':>7} "
        f"{'scoring ms p50':>15} {'mean':>7} {'max':>7}"
    )
    base = statistics.median(rates["off"])
    labels = {
        "off": "no watcher (before #23)",
        "none": "no active watchlist",
        "score": f"{args.watchlists} score thresholds",
        "rank": f"{args.watchlists} rank thresholds ({args.max_rank})",
    }
    for config in CONFIGS:
        rate = statistics.median(rates[config])
        spread = f"{min(rates[config]):.1f}-{max(rates[config]):.1f}"
        ms = scores_ms[config]
        print(
            f"{labels[config]:<28} {rate:>17.1f} {spread:>15} {rate / base:>6.2f}x "
            + (
                f"{statistics.median(ms):>15.2f} {statistics.mean(ms):>7.2f} {max(ms):>7.2f}"
                if ms
                else f"{'-':>15}"
            )
        )


if __name__ == "__main__":
    main()
