"""Hubness correction in large galleries, on the ensembles of kept split bundles.

Among thousands of strangers some crops are *hubs*: close to every sketch, whoever it shows.
A gallery crop's hubness ``r_g`` is its mean cosine to its ``k`` nearest *reference sketches*
(the bundle's training identities' sketches, never a test one); the corrected score of a
query ``q`` and a crop ``g`` is ``cos(q, g) - beta * r_g`` (CSLS, Conneau et al. 2018, less
the query's own term, which does not change a query's ranking). ``r_g`` is one number per
crop, computed when the crop is embedded.

For each split bundle (held-out sketches as queries, in the bundle's ``--view``; gallery: the
test photos plus the first N strangers of the evaluation's seeded shuffle, embedded through the
evaluation's distractor cache) this prints markdown rows per (k, beta) and gallery size: plain,
and re-ranked as the service re-ranks (top ``--rerank-candidates`` by the corrected score), with
how many splits each beats beta 0 on mAP.

python scripts/hubness_sweep.py --data-root ../shared/data/pku-sketch-dev \
    --bundles 'runs/ens-wc/split0*' --distractors ../shared/data/cuhk03-market \
    --distractors ../shared/data/cuhk01-market --distractor-cache runs/dcache \
    --sizes 0 1000 5000 --json runs/hubness.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's app

from app.ml.evaluation.distractors import _figures, with_distractors
from app.ml.evaluation.evaluate import embed_test_set
from app.ml.retrieval.rerank import rerank_top_candidates
from scripts.split_galleries import add_arguments, compare, split_galleries


def hubness(reference: np.ndarray, gallery: np.ndarray, k: int) -> np.ndarray:
    """Each gallery row's mean cosine to its ``k`` nearest reference rows."""
    sims = gallery @ reference.T
    k = min(k, sims.shape[1])
    return np.sort(sims, axis=1)[:, -k:].mean(axis=1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser)
    parser.add_argument("--sizes", type=int, nargs="+", default=[0, 1000, 5000])
    parser.add_argument("--ks", type=int, nargs="+", default=[5, 10, 20])
    parser.add_argument("--betas", type=float, nargs="+", default=[0.0, 0.25, 0.5, 0.75, 1.0])
    parser.add_argument("--rerank-candidates", type=int, default=100)
    args = parser.parse_args(argv)
    configs = [(k, b) for k in args.ks for b in args.betas if b > 0 or k == args.ks[0]]
    per_split: list[dict[str, Any]] = []
    for sg in split_galleries(args, args.sizes):
        e, vectors = sg.test, sg.strangers
        ref = embed_test_set(
            sg.bundle.embedder, sg.bundle.translator, sg.dataset, sg.split.train, view=args.view
        ).query
        row: dict[str, Any] = {}
        for n in args.sizes:
            big = with_distractors(e, vectors[:n])
            sims = big.query @ big.gallery.T
            for k, beta in configs:
                r = hubness(ref, big.gallery, k) if beta > 0 else np.zeros(len(big.gallery))
                dist = 2.0 - 2.0 * (sims - beta * r[None, :])
                rr = rerank_top_candidates(
                    big.query, big.gallery, dist.astype(np.float32), args.rerank_candidates
                )
                name = f"k{k}-b{beta:g}" if beta > 0 else "off"
                row[f"{n}/{name}/plain"] = _figures(dist, big)
                row[f"{n}/{name}/rerank"] = _figures(rr, big)
        per_split.append(row)
    report: dict[str, Any] = {"bundles": args.bundles, "view": args.view, "per_split": per_split}
    print(f"{len(per_split)} splits, view {args.view}; R1 / R10 / R100 / mAP, mAP wins over off")
    print("| strangers | setting | plain | mAP wins | re-ranked | mAP wins |")
    print("|---|---|---|---|---|---|")
    for n in args.sizes:
        for k, beta in configs:
            name = f"k{k}-b{beta:g}" if beta > 0 else "off"
            cells = []
            for variant in ("plain", "rerank"):
                key = f"{n}/{name}/{variant}"
                stats, pair = compare(per_split, key, f"{n}/off/{variant}")
                report.setdefault("mean", {})[key] = stats
                cells.append(pair)
            print(f"| {n} | {name} | {' | '.join(cells)} |")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
