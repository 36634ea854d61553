"""Build time, memory, search time and recall@10 of each vector index kind, exact as baseline.

Usage (from the repository root)::

    .venv/bin/python benchmarks/bench_index.py                    # 1,000,000 x 1024, all kinds
    .venv/bin/python benchmarks/bench_index.py --n 100000 --queries 100
    .venv/bin/python benchmarks/bench_index.py --kinds flat ivf --nprobe 16 32

Everything runs through the service's own ``app.index.store.VectorIndex`` in this process,
one kind after the other (each freed before the next is built), searching on ``--threads``
FAISS threads (default 1) and building on ``--build-threads`` (default the same).

Vectors (``make_gallery``): not uniform random, which has no neighbours worth finding, but a
three-level mixture like person embeddings: 1,000 "appearance groups" (centres drawn from a
Gaussian), ``n / 10`` identities around the group centres, and each vector a view of a random
identity (10 on average, Poisson); variance split 0.35 group / 0.30 identity / 0.35 view,
every coordinate scaled by a decaying spectrum ``(1 + j) ** -0.5`` (a few directions carry
most of the variance, as in trained embeddings), then L2-normalised. Two views of one person
have cosine ~0.65, of two people of one group ~0.35, otherwise ~0. Queries are fresh views of
random identities with 1.5x the view noise (a sketch lies further from its person's photos).

Ground truth is the exact top 10 by inner product (a chunked numpy scan); recall@10 is the
share of it that a kind returns. Search time is one query per call (as the service searches),
p50 / p95 over ``--queries`` queries (exact: ``--exact-queries``). Memory is the growth of the
process's resident set while building (peak) and after it (kept), with the vectors themselves
(``n * dim * 4`` bytes) held outside the index before and after.

Filters (``VectorIndex.search(..., allowed_ids)``, as the service passes the ids that pass the
camera / capture-time conditions): items carry one of 6 cameras at random and ids follow
capture time, so "one camera" keeps 1/6 of the gallery, "1 % time window" a contiguous id
range, and both together ~0.17 %. Each filtered row reports recall@10 against the exact
filtered top 10 and whether every returned id passed the filter.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from app.index.store import VectorIndex, ivf_nlist  # noqa: E402

K = 10
CAMERAS = 6
GROUPS = 1000
VIEWS_PER_IDENTITY = 10
VARIANCE = {"group": 0.35, "identity": 0.30, "view": 0.35}
QUERY_NOISE = 1.5


@dataclass
class Gallery:
    vectors: np.ndarray  # (n, dim) float32, unit rows
    ids: np.ndarray  # (n,) int64, 1..n in capture order
    cameras: np.ndarray  # (n,) int8 in 0..CAMERAS-1
    queries: np.ndarray  # (q, dim) float32, unit rows


def _unit(x: np.ndarray) -> np.ndarray:
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def make_gallery(n: int, dim: int, num_queries: int, seed: int = 0) -> Gallery:
    """The clustered vectors described in the module docstring."""
    rng = np.random.default_rng(seed)
    spectrum = (1.0 + np.arange(dim, dtype=np.float32)) ** -0.5
    spectrum *= np.sqrt(dim / float((spectrum**2).sum()))
    n_ids = max(1, n // VIEWS_PER_IDENTITY)
    groups = rng.standard_normal((GROUPS, dim), dtype=np.float32)
    member_of = rng.integers(0, GROUPS, size=n_ids)
    identities = np.sqrt(VARIANCE["group"]) * groups[member_of]
    identities += np.sqrt(VARIANCE["identity"]) * rng.standard_normal(
        (n_ids, dim), dtype=np.float32
    )
    owner = rng.integers(0, n_ids, size=n)
    vectors = np.empty((n, dim), dtype=np.float32)
    view_sd = np.sqrt(VARIANCE["view"])
    for start in range(0, n, 65_536):
        stop = min(start + 65_536, n)
        block = identities[owner[start:stop]]
        block += view_sd * rng.standard_normal((stop - start, dim), dtype=np.float32)
        vectors[start:stop] = _unit(block * spectrum)
    picked = rng.integers(0, n_ids, size=num_queries)
    queries = identities[picked] + QUERY_NOISE * view_sd * rng.standard_normal(
        (num_queries, dim), dtype=np.float32
    )
    return Gallery(
        vectors=vectors,
        ids=np.arange(1, n + 1, dtype=np.int64),
        cameras=rng.integers(0, CAMERAS, size=n).astype(np.int8),
        queries=_unit(queries * spectrum),
    )


def exact_top_k(vectors: np.ndarray, queries: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    """Row positions of the exact top K per query (among ``mask`` rows), a chunked scan."""
    nq = queries.shape[0]
    best_s = np.full((nq, K), -np.inf, dtype=np.float32)
    best_i = np.full((nq, K), -1, dtype=np.int64)
    for start in range(0, vectors.shape[0], 65_536):
        block = vectors[start : start + 65_536]
        scores = queries @ block.T
        if mask is not None:
            scores[:, ~mask[start : start + 65_536]] = -np.inf
        rows = np.broadcast_to(np.arange(start, start + block.shape[0]), scores.shape)
        all_s = np.concatenate([best_s, scores], axis=1)
        all_i = np.concatenate([best_i, rows], axis=1)
        keep = np.argpartition(-all_s, K - 1, axis=1)[:, :K]
        best_s = np.take_along_axis(all_s, keep, axis=1)
        best_i = np.take_along_axis(all_i, keep, axis=1)
    return best_i


def rss_kib(field: str = "VmRSS") -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def reset_peak() -> None:
    """Reset VmHWM (Linux: write 5 to clear_refs) so that it measures from now on."""
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


def release_memory() -> None:
    gc.collect()
    with contextlib.suppress(OSError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def timed_search(
    index: VectorIndex, queries: np.ndarray, allowed: np.ndarray | None = None
) -> tuple[list[float], list[list[int]]]:
    times, found = [], []
    for q in queries:
        start = time.perf_counter()
        hits = index.search(q, K, allowed)
        times.append((time.perf_counter() - start) * 1000)
        found.append([h.id for h in hits])
    return times, found


def recall(found: list[list[int]], truth_ids: np.ndarray) -> float:
    per_query = [
        len(set(f) & set(t.tolist())) / len(t) for f, t in zip(found, truth_ids, strict=True)
    ]
    return float(np.mean(per_query))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000, help="vectors (default 1M)")
    parser.add_argument(
        "--dim", type=int, default=1024, help="the shipped bundle's (two 512-d members) is 1024"
    )
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--exact-queries", type=int, default=30, help="timed exact searches")
    parser.add_argument("--kinds", nargs="+", default=["hnsw", "ivf"], choices=["hnsw", "ivf"])
    parser.add_argument("--hnsw-m", type=int, default=32)
    parser.add_argument("--ef-construction", type=int, default=40)
    parser.add_argument("--ef-search", type=int, nargs="+", default=[16, 32, 64, 128])
    parser.add_argument("--nprobe", type=int, nargs="+", default=[8, 16, 32, 64])
    parser.add_argument("--exact-filter-max", type=int, default=20_000)
    parser.add_argument("--threads", type=int, default=1, help="FAISS threads for searching")
    parser.add_argument(
        "--build-threads", type=int, help="FAISS threads while building (default: --threads)"
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    build_threads = args.build_threads or args.threads
    faiss.omp_set_num_threads(args.threads)
    run_start = time.perf_counter()

    print(
        f"{args.n:,} vectors x {args.dim}, {args.queries} queries, {args.threads} FAISS "
        f"thread(s) searching, {build_threads} building; "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"load average {os.getloadavg()[0]:.2f} at start",
        flush=True,
    )
    start = time.perf_counter()
    gallery = make_gallery(args.n, args.dim, args.queries, args.seed)
    x, ids, queries = gallery.vectors, gallery.ids, gallery.queries
    rng = np.random.default_rng(args.seed + 1)
    window = max(1, args.n // 100)
    first = int(rng.integers(0, args.n - window + 1))
    in_window = (ids > first) & (ids <= first + window)
    filters = {
        "one camera": gallery.cameras == 0,
        "1% time window": in_window,
        "camera + window": in_window & (gallery.cameras == 0),
    }
    truth = {"none": ids[exact_top_k(x, queries, None)]}
    for name, mask in filters.items():
        truth[name] = ids[exact_top_k(x, queries, mask)]
    allowed = {name: ids[mask] for name, mask in filters.items()}
    print(f"data and exact ground truth: {time.perf_counter() - start:.1f} s", flush=True)

    rows: list[tuple[str, str, str, str, float, float, float]] = []
    filter_rows: list[tuple[str, str, float, float, float, float, bool]] = []
    for kind in ["flat", *args.kinds]:
        release_memory()
        before = rss_kib()
        reset_peak()
        index = VectorIndex(
            args.dim,
            kind,
            hnsw_m=args.hnsw_m,
            hnsw_ef_construction=args.ef_construction,
            exact_filter_max=args.exact_filter_max,
        )
        start = time.perf_counter()
        faiss.omp_set_num_threads(build_threads)
        index.build(ids, x)
        faiss.omp_set_num_threads(args.threads)
        build_s = time.perf_counter() - start
        kept = (rss_kib() - before) / 1024
        peak = (rss_kib("VmHWM") - before) / 1024
        build = f"{build_s:8.1f}"
        memory = f"{kept:7.0f} / {peak:7.0f}"
        label = kind if kind != "ivf" else f"ivf ({ivf_nlist(args.n)} lists)"
        print(f"built {label} in {build_s:.1f} s, +{kept:.0f} MiB (peak +{peak:.0f})", flush=True)
        if kind == "flat":
            settings = [("", None)]
            timed = queries[: args.exact_queries]
        elif kind == "hnsw":
            settings = [(f"efSearch {ef}", ef) for ef in args.ef_search]
            timed = queries
        else:
            settings = [(f"nprobe {p}", p) for p in args.nprobe]
            timed = queries
        for name, value in settings:
            if kind == "hnsw":
                index.hnsw_ef_search = int(value or 0)
            elif kind == "ivf":
                index.ivf_nprobe = int(value or 0)
            times, found = timed_search(index, timed)
            r = recall(found, truth["none"][: len(timed)])
            rows.append((label, name, build, memory, pct(times, 50), pct(times, 95), r))
            print(
                f"  {name or 'exact'}: p50 {pct(times, 50):.2f} ms, p95 {pct(times, 95):.2f} ms, "
                f"recall@10 {r:.3f}",
                flush=True,
            )
            build = memory = ""
        # Filters at the kind's default setting (the middle of the sweep for the approximate).
        if kind == "hnsw":
            index.hnsw_ef_search = sorted(args.ef_search)[len(args.ef_search) // 2]
        elif kind == "ivf":
            index.ivf_nprobe = sorted(args.nprobe)[len(args.nprobe) // 2]
        for name, ok_ids in allowed.items():
            times, found = timed_search(index, timed, ok_ids)
            only = all(np.isin(f, ok_ids).all() for f in found)
            r = recall(found, truth[name][: len(timed)])
            share = ok_ids.size / args.n
            filter_rows.append((label, name, share, pct(times, 50), pct(times, 95), r, only))
            print(
                f"  filter {name}: p50 {pct(times, 50):.2f} ms, p95 {pct(times, 95):.2f} ms, "
                f"recall@10 {r:.3f}, only allowed {only}",
                flush=True,
            )
        del index

    print(f"\n{args.n:,} vectors x {args.dim}, top {K}, one query per call (ms)")
    print(
        f"{'index':<20} {'setting':<13} {'build s':>8} {'MiB kept / peak':>17} "
        f"{'p50':>7} {'p95':>7} {'recall@10':>9}"
    )
    for label, name, build, memory, p50, p95, r in rows:
        print(f"{label:<20} {name:<13} {build:>8} {memory:>17} {p50:7.2f} {p95:7.2f} {r:9.3f}")
    print(
        f"\nfilters (hnsw efSearch / ivf nprobe: the middle setting above; exact below "
        f"{args.exact_filter_max:,} allowed items)"
    )
    print(
        f"{'index':<20} {'filter':<16} {'share':>7} {'p50':>7} {'p95':>7} {'recall@10':>9} "
        f"{'only allowed':>12}"
    )
    for label, name, share, p50, p95, r, only in filter_rows:
        print(
            f"{label:<20} {name:<16} {share:7.2%} {p50:7.2f} {p95:7.2f} {r:9.3f} "
            f"{'yes' if only else 'NO':>12}"
        )
    print(
        f"\nwhole run {time.perf_counter() - run_start:.0f} s; vectors {x.nbytes / 2**20:.0f} "
        f"MiB; load average {os.getloadavg()[0]:.2f} at the end"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
