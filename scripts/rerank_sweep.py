"""Query-time re-ranking settings in large galleries, on the ensembles of kept split bundles.

For each split bundle (held-out sketches as queries in ``--view``; gallery: the test photos
plus the first N strangers of the evaluation's seeded shuffle, embedded through the evaluation's
distractor cache, so nothing is embedded again after ``sketchreid evaluate --distractors``),
re-rank each query's top ``n`` candidates by k-reciprocal distances with each (k1, k2, lambda,
n) asked, exactly as the service does (:func:`app.ml.retrieval.rerank.rerank_top_candidates`),
and print markdown rows: Rank-1 / Rank-10 / Rank-100 / mAP (mean over splits) and on how many
splits each setting beats the first on mAP.

python scripts/rerank_sweep.py --data-root ../shared/data/pku-sketch-dev \
    --bundles 'runs/ens-wc/split0*' --distractors ../shared/data/cuhk03-market \
    --distractors ../shared/data/cuhk01-market --distractor-cache runs/dcache \
    --sizes 1000 5000 --json runs/rerank-sweep.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's app

from app.ml.evaluation.distractors import _figures, with_distractors
from app.ml.retrieval.distances import distances
from app.ml.retrieval.rerank import rerank_top_candidates
from scripts.fusion_sweep import leave_one_out
from scripts.split_galleries import FIGURES, add_arguments, compare, split_galleries


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 5000])
    parser.add_argument("--k1", type=int, nargs="+", default=[20])
    parser.add_argument("--k2", type=int, nargs="+", default=[6])
    parser.add_argument("--lambdas", type=float, nargs="+", default=[0.3])
    parser.add_argument("--candidates", type=int, nargs="+", default=[100])
    args = parser.parse_args(argv)
    configs = list(itertools.product(args.k1, args.k2, args.lambdas, args.candidates))
    names = [f"k1 {a}, k2 {b}, lambda {c:g}, top {n}" for a, b, c, n in configs]
    per_split: list[dict[str, Any]] = []
    for sg in split_galleries(args, args.sizes):
        e, vectors = sg.test, sg.strangers
        row: dict[str, Any] = {}
        for size in args.sizes:
            big = with_distractors(e, vectors[:size])
            dist = distances(big.query, big.gallery)
            row[f"{size}/plain"] = _figures(dist, big)
            for name, (k1, k2, lam, n) in zip(names, configs, strict=True):
                rr = rerank_top_candidates(
                    big.query, big.gallery, dist, n, k1=k1, k2=k2, lambda_value=lam
                )
                row[f"{size}/{name}"] = _figures(np.asarray(rr), big)
        per_split.append(row)
    report: dict[str, Any] = {"bundles": args.bundles, "view": args.view, "per_split": per_split}
    print(f"{len(per_split)} splits, view {args.view}; R1 / R10 / R100 / mAP; mAP vs the first")
    print("| strangers | setting | R1 / R10 / R100 / mAP | mAP better / worse |")
    print("|---|---|---|---|")
    for size in args.sizes:
        base = f"{size}/{names[0]}"
        for name in ["plain", *names]:
            key = f"{size}/{name}"
            stats, pair = compare(per_split, key, base)
            report.setdefault("mean", {})[key] = stats
            print(f"| {size} | {name} | {pair} |")
        if len(per_split) > 2:
            loo = leave_one_out([{n: s[f"{size}/{n}"] for n in names} for s in per_split], "mAP")
            report.setdefault("leave_one_out", {})[str(size)] = loo
            cells = " / ".join(f"{loo[f]['mean'] * 100:.1f}" for f in FIGURES)
            print(f"| {size} | chosen by mAP on the other splits | {cells} | |")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
