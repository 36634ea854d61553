"""Time and peak memory of k_reciprocal_rerank against the dense reference formulation.

Usage (from the repository root)::

    .venv/bin/python benchmarks/bench_rerank.py                   # Q=50, G in 500 2000 5000
    .venv/bin/python benchmarks/bench_rerank.py --gallery 500 1000 --repeat 3
    .venv/bin/python benchmarks/bench_rerank.py --query-time      # the service's rerank stage
    git show REV:app/ml/retrieval/rerank.py > /tmp/prev.py
    .venv/bin/python benchmarks/bench_rerank.py --query-time --previous-rerank /tmp/prev.py

``--query-time`` times the service's ``rerank`` stage (1 query, 100 candidates, 1,024-d)
against the previous path, database load + re-ranking, in the same run: see
``benchmarks/_query_time.py``. Without it:

Inputs are synthetic L2-normalised embeddings of identities (a few noisy views around a
random centre), turned into the distances the service and the evaluation use: squared L2 of
unit vectors, ``2 - 2*cos``. For every size both implementations run on the same inputs in
the same process: wall time is the best of ``--repeat`` runs; peak memory is measured in a
separate run under ``tracemalloc`` (numpy reports its buffers to it) and counts only what
the call allocates beyond its inputs. ``max|diff|`` is the largest absolute difference
between the two results.
"""

from __future__ import annotations

import argparse
import sys
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import numpy as np

_HERE = Path(__file__).resolve().parent
for _path in (_HERE.parent, _HERE):  # this checkout's app/, not an installed copy's
    if str(_path) not in sys.path:  # also works as `python -m benchmarks.bench_rerank`
        sys.path.insert(0, str(_path))

from _query_time import run_query_time  # noqa: E402
from _reference_rerank import reference_rerank  # noqa: E402

from app.ml.retrieval.rerank import k_reciprocal_rerank  # noqa: E402

Rerank = Callable[..., np.ndarray]
Inputs = tuple[np.ndarray, np.ndarray, np.ndarray]


def make_inputs(num_q: int, num_g: int, dim: int, views: int, seed: int) -> Inputs:
    """(q_g, q_q, g_g) distances ``2 - 2 cos`` of clustered unit embeddings (float32)."""
    rng = np.random.default_rng(seed)
    n = num_q + num_g
    centres = rng.normal(size=(max(1, n // views), dim))
    labels = rng.integers(0, centres.shape[0], size=n)
    feats = centres[labels] / np.sqrt(dim) + 0.6 * rng.normal(size=(n, dim)) / np.sqrt(dim)
    feats = (feats / np.linalg.norm(feats, axis=1, keepdims=True)).astype(np.float32)
    q, g = feats[:num_q], feats[num_q:]

    def dist(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return np.maximum(2.0 - 2.0 * (a @ b.T), 0.0).astype(np.float32)

    return dist(q, g), dist(q, q), dist(g, g)


def best_time(fn: Rerank, inputs: Inputs, repeat: int) -> tuple[float, np.ndarray]:
    """Best wall time over ``repeat`` calls, and the last result."""
    best = float("inf")
    result = np.empty(0)
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn(*inputs)
        best = min(best, time.perf_counter() - start)
    return best, result


def peak_bytes(fn: Rerank, inputs: Inputs) -> int:
    """Peak memory allocated during one call (tracemalloc; inputs excluded)."""
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        fn(*inputs)
        return tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--queries", type=int, default=50, help="Q (default 50)")
    parser.add_argument(
        "--gallery", type=int, nargs="+", default=[500, 2000, 5000], help="G values"
    )
    parser.add_argument(
        "--dim", type=int, default=None, help="embedding size (default 128; --query-time 1024)"
    )
    parser.add_argument("--views", type=int, default=4, help="images per identity (default 4)")
    parser.add_argument("--repeat", type=int, default=1, help="timed runs, best kept")
    parser.add_argument("--no-memory", action="store_true", help="skip the tracemalloc runs")
    parser.add_argument("--seed", type=int, default=0)
    query = parser.add_argument_group("--query-time: the service's re-ranking stage")
    query.add_argument("--query-time", action="store_true", help="time it (see above)")
    query.add_argument("--candidates", type=int, default=100, help="re-ranked (default 100)")
    query.add_argument("--items", type=int, default=2000, help="stored items (default 2000)")
    query.add_argument("--runs", type=int, default=200, help="calls of each path (default 200)")
    query.add_argument("--previous-rerank", metavar="FILE", help="older app/ml/retrieval/rerank.py")
    args = parser.parse_args(argv)
    if args.query_time:
        return run_query_time(
            args.items,
            args.candidates,
            args.dim or 1024,
            args.runs,
            args.seed,
            args.previous_rerank,
        )
    args.dim = args.dim or 128

    header = (
        f"{'Q':>4} {'G':>6} | {'ref s':>8} {'ours s':>8} {'speed-up':>8} | "
        f"{'ref MiB':>8} {'ours MiB':>8} | {'max|diff|':>9}"
    )
    print("k_reciprocal_rerank vs dense reference (k1=20, k2=6, lambda=0.3, float32 inputs)")
    print(header)
    print("-" * len(header))
    for num_g in args.gallery:
        inputs = make_inputs(args.queries, num_g, args.dim, args.views, args.seed)
        ref_s, ref_out = best_time(reference_rerank, inputs, args.repeat)
        our_s, our_out = best_time(k_reciprocal_rerank, inputs, args.repeat)
        diff = float(np.abs(ref_out - our_out).max())
        del ref_out, our_out
        if args.no_memory:
            mem = f"{'-':>8} {'-':>8}"
        else:
            ref_mib = peak_bytes(reference_rerank, inputs) / 2**20
            our_mib = peak_bytes(k_reciprocal_rerank, inputs) / 2**20
            mem = f"{ref_mib:8.1f} {our_mib:8.1f}"
        print(
            f"{args.queries:>4} {num_g:>6} | {ref_s:8.3f} {our_s:8.3f} {ref_s / our_s:7.1f}x | "
            f"{mem} | {diff:9.2e}",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
