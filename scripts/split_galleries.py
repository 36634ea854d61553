"""Kept split bundles with their held-out test sets and the evaluation's strangers: what the
large-gallery sweeps (`rerank_sweep.py`, `hubness_sweep.py`) score.

Each bundle runs its ONNX Runtime fp32 graphs, as `sketchreid evaluate --backend onnx`, so the
strangers come from that evaluation's distractor cache and nothing is embedded again.
"""

from __future__ import annotations

import argparse
import glob
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's app

from app.ml.bundle.store import Bundle, load_bundle
from app.ml.data.pku import PKUSketchDataset, load_pku_sketch
from app.ml.data.splits import Split
from app.ml.evaluation.distractors import DistractorOptions, distractors_for
from app.ml.evaluation.evaluate import Embedded, embed_test_set, heldout_split
from app.ml.evaluation.quantized import fp32_onnx_runs
from app.ml.retrieval.metrics import mean_std

FIGURES = ("rank1", "rank10", "rank100", "mAP")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options every sweep over kept split bundles takes."""
    parser.add_argument("--data-root", type=Path, required=True)
    parser.add_argument("--bundles", required=True, help="glob of split bundles")
    parser.add_argument("--distractors", type=Path, action="append", required=True)
    parser.add_argument("--distractor-cache", type=Path)
    parser.add_argument("--distractors-max", type=int, help="as evaluate's (default: max size)")
    parser.add_argument("--onnx-cache", type=Path, default=Path("runs/onnx-cache"))
    parser.add_argument("--view", default="sketch")
    parser.add_argument("--json", type=Path, required=True)


@dataclass
class SplitGallery:
    folder: str
    bundle: Bundle  # ONNX Runtime fp32
    split: Split
    dataset: PKUSketchDataset
    test: Embedded  # held-out sketches in the asked view, the test photos
    strangers: np.ndarray  # the evaluation's distractors, in its seeded order


def split_galleries(args: argparse.Namespace, sizes: list[int]) -> Iterator[SplitGallery]:
    """Each bundle of ``args.bundles`` (sorted) with its test set and strangers."""
    dataset = load_pku_sketch(args.data_root)
    opts = DistractorOptions(
        folders=tuple(args.distractors),
        max_items=args.distractors_max or max(sizes),
        cache_dir=args.distractor_cache,
    )
    for folder in sorted(p for p in glob.glob(args.bundles) if Path(p, "manifest.json").is_file()):
        torch_bundle = load_bundle(folder)
        split = heldout_split(torch_bundle, dataset)
        bundle = fp32_onnx_runs([(torch_bundle, split)], args.onnx_cache)[0][0]
        test = embed_test_set(
            bundle.embedder, bundle.translator, dataset, split.test, view=args.view
        )
        _, strangers = distractors_for(bundle, opts)
        yield SplitGallery(folder, bundle, split, dataset, test, strangers)
        print(f"{folder} done", file=sys.stderr, flush=True)


def compare(per_split: Sequence[dict[str, Any]], key: str, base: str) -> tuple[dict[str, Any], str]:
    """Mean ± std over the splits of the figures under ``key``, and a markdown cell pair:
    ``R1 / R10 / R100 / mAP`` (means, %) and on how many splits its mAP beats / trails
    ``base``'s."""
    stats = mean_std([s[key] for s in per_split])
    wins = sum(s[key]["mAP"] > s[base]["mAP"] for s in per_split)
    losses = sum(s[key]["mAP"] < s[base]["mAP"] for s in per_split)
    cells = " / ".join(f"{stats[f]['mean'] * 100:.1f}" for f in FIGURES)
    return stats, f"{cells} | {wins} / {losses}"
