"""How the relevance-feedback figures move with the Rocchio weights, on per-split bundles.

The same functions as `sketchreid evaluate --test-ids heldout --feedback --feedback-weights W`
(each bundle on the identities it was not trained on; app.ml.evaluation.feedback_eval with the
service's query builder), but each bundle embeds its test set once for all the weights.
Prints markdown rows (mean ± std over the bundles) and writes the figures as JSON.

python scripts/feedback_sweep.py --data-root ../shared/data/pku-sketch-dev \
    --model runs/cv-xtriplet10/splits/split0* --json runs/feedback-sweep.json \
    --weights 1,0.5,0.25 1,1,0 1,1,0.25 1,1,0.5 1,2,0.25
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's app

from app.ml.bundle.store import load_bundle
from app.ml.data.pku import load_pku_sketch
from app.ml.evaluation.evaluate import embed_test_set, heldout_split
from app.ml.evaluation.feedback_eval import evaluate_feedback
from app.ml.retrieval.feedback import FeedbackWeights
from app.ml.retrieval.metrics import mean_std

SHOWN = ("confirmed", "confirmed+rejected")


def _weights(value: str) -> FeedbackWeights:
    sketch, confirmed, rejected = (float(v) for v in value.split(","))
    return FeedbackWeights(sketch, confirmed, rejected)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", type=Path, required=True)
    parser.add_argument("--model", type=Path, nargs="+", required=True)
    parser.add_argument("--weights", type=_weights, nargs="+", required=True)
    parser.add_argument("--json", type=Path, required=True)
    args = parser.parse_args()
    dataset = load_pku_sketch(args.data_root)
    rows: dict[str, list[dict[str, Any]]] = {}
    for path in args.model:
        bundle = load_bundle(path)
        split = heldout_split(bundle, dataset)
        embedded = embed_test_set(bundle.embedder, bundle.translator, dataset, split.test)
        for w in args.weights:
            figures = evaluate_feedback(embedded, w)
            for variant in SHOWN:
                key = f"{w.sketch:g},{w.confirmed:g},{w.rejected:g} {variant}"
                rows.setdefault(key, []).append(figures[variant])
    report = {key: mean_std(r) for key, r in rows.items()}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"models": [str(m) for m in args.model], **report}, indent=1))
    for key, figures in report.items():
        weights, variant = key.split(" ", 1)
        cells = [f"{100 * figures[m]['mean']:.1f} ± {100 * figures[m]['std']:.1f}" for m in
                 ("rank1", "rank5", "rank10", "mAP")]  # fmt: skip
        print(f"| {weights} | {variant} | " + " | ".join(cells) + f" | {figures['n_splits']} |")


if __name__ == "__main__":
    main()
