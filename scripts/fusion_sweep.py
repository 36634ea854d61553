"""How the fused query moves with the translation's weight, on kept cross-validation bundles.

For each split, the bundles kept by `sketchreid crossval --keep-bundles` in the ``--reuse``
work folders (combined into one ensemble, as `crossval --reuse A --reuse B` does) embed the
split's test sketches once as drawn and once translated; the query is then
``fuse_views(sketch, translation, weights=(1 - a, a))`` for each translation weight ``a``
(0: the sketch alone, 0.5: the service's ``fused`` view, 1: the translation alone), for the
ensemble and for each member alone (its slice of the embedding). Prints markdown rows (mean ±
std over the splits, and on how many splits each weight beats the sketch alone) and a
leave-one-split-out choice of ``a``: each split scored with the weight that is best on the
other splits, an estimate of choosing the weight that does not see the split it is scored on.

python scripts/fusion_sweep.py --data-root ../shared/data/pku-sketch-dev --splits 10 \
    --reuse runs/cv10-r110spp256 --reuse runs/cv10-r56-tr --json runs/fusion-sweep.json
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's app

from app.ml.bundle.store import combine_bundles, load_bundle
from app.ml.data.pku import load_pku_sketch
from app.ml.evaluation.evaluate import embed_test_set, heldout_split, score
from app.ml.evaluation.testset import Embedded
from app.ml.infer.embedder import fuse_views
from app.ml.retrieval.metrics import mean_std

FIGURES = ("rank1", "rank5", "rank10", "mAP")


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _slices(bundle: Any) -> dict[str, slice]:
    """The ensemble, and each member's part of the concatenated embedding."""
    out = {"ensemble": slice(None)}
    start = 0
    members = bundle.manifest.members
    for entry in members if len(members) > 1 else []:
        out[entry.name] = slice(start, start + entry.spec.fc_dim)
        start += entry.spec.fc_dim
    return out


def sweep_split(
    plain: Embedded, translated: Embedded, slices: dict[str, slice], alphas: list[float]
) -> dict[str, dict[float, dict[str, Any]]]:
    """Figures of each (part, translation weight) on one split's embeddings."""
    out: dict[str, dict[float, dict[str, Any]]] = {}
    for part, sl in slices.items():
        sketch, photo = _unit(plain.query[:, sl]), _unit(translated.query[:, sl])
        gallery = _unit(plain.gallery[:, sl])
        for a in alphas:
            q = fuse_views(sketch, photo, weights=(1.0 - a, a))
            result = score(replace(plain, query=q, gallery=gallery))
            figures: dict[str, Any] = {k: float(result[k]) for k in FIGURES}
            figures["cmc"] = [float(x) for x in result["cmc"][:20]]
            out.setdefault(part, {})[a] = figures
    return out


def leave_one_out(per_split: list[dict[float, dict[str, Any]]], key: str) -> dict[str, Any]:
    """Each split scored with the weight best (mean ``key``) on the other splits."""
    chosen, figures = [], []
    for i in range(len(per_split)):
        others = [s for j, s in enumerate(per_split) if j != i]
        best = max(others[0], key=lambda a: np.mean([s[a][key] for s in others]))
        chosen.append(best)
        figures.append(per_split[i][best])
    return {"chosen": chosen, **mean_std(figures)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", type=Path, required=True)
    parser.add_argument("--reuse", type=Path, action="append", required=True)
    parser.add_argument("--splits", type=int, default=10)
    parser.add_argument("--alphas", type=float, nargs="+", default=[0, 0.2, 0.3, 0.4, 0.5, 1])
    parser.add_argument("--json", type=Path, required=True)
    args = parser.parse_args(argv)
    dataset = load_pku_sketch(args.data_root)
    rows: dict[str, list[dict[float, dict[str, Any]]]] = {}
    done = []
    for i in range(args.splits):
        folders = [w / "splits" / f"split{i:02d}" for w in args.reuse]
        if not all((f / "manifest.json").is_file() for f in folders):
            continue
        parts = [load_bundle(f) for f in folders]
        bundle = parts[0] if len(parts) == 1 else combine_bundles(parts)
        if bundle.translator is None:
            raise SystemExit(f"split {i}: none of {folders} has a translator")
        split = heldout_split(parts[0], dataset)
        plain = embed_test_set(bundle.embedder, None, dataset, split.test, view="sketch")
        translated = embed_test_set(
            bundle.embedder, bundle.translator, dataset, split.test, view="translated"
        )
        for part, figures in sweep_split(plain, translated, _slices(bundle), args.alphas).items():
            rows.setdefault(part, []).append(figures)
        done.append(i)
        print(f"split {i} embedded", file=sys.stderr)
    report: dict[str, Any] = {"splits": done, "alphas": args.alphas, "parts": {}}
    print(f"{len(done)} splits: {done}")
    print(
        "| part | translation weight | Rank-1 % | Rank-5 % | Rank-10 % | mAP % "
        "| R1 / mAP > sketch |"
    )
    print("|---|---|---|---|---|---|---|")
    for part, per_split in rows.items():
        entry: dict[str, Any] = {"per_split": per_split, "weights": {}}
        for a in args.alphas:
            figures = mean_std([s[a] for s in per_split])
            wins = [sum(s[a][k] > s[0.0][k] for s in per_split) for k in ("rank1", "mAP")]
            entry["weights"][a] = {**figures, "wins_over_sketch": wins}
            cells = [
                f"{figures[k]['mean'] * 100:.1f} ± {figures[k]['std'] * 100:.1f}" for k in FIGURES
            ]
            print(f"| {part} | {a:g} | {' | '.join(cells)} | {wins[0]} / {wins[1]} |")
        for key in ("rank1", "mAP"):
            loo = leave_one_out(per_split, key)
            entry[f"leave_one_out_{key}"] = loo
            cells = [f"{loo[k]['mean'] * 100:.1f} ± {loo[k]['std'] * 100:.1f}" for k in FIGURES]
            print(f"| {part} | chosen by {key}, leave one split out | {' | '.join(cells)} | |")
        report["parts"][part] = entry
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
