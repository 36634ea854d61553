"""How the ensemble moves with its members' weights, on the ensembles of kept split bundles.

An ensemble's cosine is the mean of its members' cosines (``concat-l2``). This sweep scores
each split's held-out sketches (as drawn, 96-photo gallery) with ``a · cos_1 + (1 - a) ·
cos_2`` for each weight ``a`` of the first member (0.5: the shipped equal weights), from one
embedding of the ensemble (each member's slice is its unit embedding). Prints markdown rows
(mean ± std over the splits, on how many splits each weight beats equal weights) and a
leave-one-split-out choice of ``a``, each split scored with the weight best on the others.

python scripts/member_weight_sweep.py --data-root ../shared/data/pku-sketch-dev \
    --bundles 'runs/ens-x/split0*' --json runs/member-weights.json
"""

from __future__ import annotations

import argparse
import glob
import json
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's app

from app.ml.bundle.store import load_bundle
from app.ml.data.pku import load_pku_sketch
from app.ml.evaluation.evaluate import embed_test_set, heldout_split, score
from app.ml.infer.embedder import l2_normalize
from app.ml.retrieval.metrics import mean_std
from scripts.fusion_sweep import FIGURES, leave_one_out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", type=Path, required=True)
    parser.add_argument("--bundles", required=True, help="glob of two-member split bundles")
    parser.add_argument("--weights", type=float, nargs="+", default=[0.5, 0.6, 0.7, 0.8, 1.0])
    parser.add_argument("--json", type=Path, required=True)
    args = parser.parse_args(argv)
    dataset = load_pku_sketch(args.data_root)
    per_split: list[dict[float, dict[str, Any]]] = []
    for folder in sorted(p for p in glob.glob(args.bundles) if Path(p, "manifest.json").is_file()):
        bundle = load_bundle(folder)
        if len(bundle.manifest.members) != 2:
            raise SystemExit(f"{folder}: expected two members")
        split = heldout_split(bundle, dataset)
        e = embed_test_set(bundle.embedder, None, dataset, split.test, view="sketch")
        dim = bundle.manifest.members[0].spec.fc_dim
        parts = [slice(0, dim), slice(dim, None)]
        q = [l2_normalize(e.query[:, s]) for s in parts]
        g = [l2_normalize(e.gallery[:, s]) for s in parts]
        row: dict[float, dict[str, Any]] = {}
        for a in args.weights:
            w = np.sqrt([a, 1.0 - a])
            result = score(
                replace(
                    e,
                    query=np.concatenate([w[0] * q[0], w[1] * q[1]], 1),
                    gallery=np.concatenate([w[0] * g[0], w[1] * g[1]], 1),
                )
            )
            row[a] = {k: float(result[k]) for k in FIGURES}
            row[a]["cmc"] = [float(x) for x in result["cmc"][:20]]
        per_split.append(row)
        print(f"{folder} embedded", file=sys.stderr)
    base = 0.5 if 0.5 in args.weights else args.weights[0]
    print(f"{len(per_split)} splits; first member's weight a, the second's 1 - a")
    print("| a | Rank-1 % | Rank-5 % | Rank-10 % | mAP % | R1 / mAP > equal weights |")
    print("|---|---|---|---|---|---|")
    report: dict[str, Any] = {"bundles": args.bundles, "per_split": per_split, "weights": {}}
    for a in args.weights:
        figures = mean_std([s[a] for s in per_split])
        wins = [sum(s[a][k] > s[base][k] for s in per_split) for k in ("rank1", "mAP")]
        report["weights"][a] = {**figures, "wins_over_equal": wins}
        cells = [f"{figures[k]['mean'] * 100:.1f} ± {figures[k]['std'] * 100:.1f}" for k in FIGURES]
        print(f"| {a:g} | {' | '.join(cells)} | {wins[0]} / {wins[1]} |")
    loo = leave_one_out(per_split, "mAP")
    report["leave_one_out_mAP"] = loo
    cells = [f"{loo[k]['mean'] * 100:.1f} ± {loo[k]['std'] * 100:.1f}" for k in FIGURES]
    print(f"| chosen by mAP, leave one split out ({loo['chosen']}) | {' | '.join(cells)} | |")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
