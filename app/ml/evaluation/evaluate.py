"""The evaluation protocol: test sketches as queries, test photos as gallery
(:mod:`app.ml.evaluation.testset`), distances ``2 - 2 cos`` optionally re-ranked with
:func:`app.ml.retrieval.rerank.k_reciprocal_rerank`; optionally the relevance-feedback protocol
(:mod:`app.ml.evaluation.feedback_eval`) and rank-list pictures (:mod:`app.ml.evaluation.ranklist`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from app.errors import UserInputError
from app.ml.bundle.store import Bundle
from app.ml.data.pku import PKUSketchDataset
from app.ml.data.splits import Split
from app.ml.evaluation.distractors import (
    DistractorOptions,
    DistractorSet,
    distractors_for,
    score_by_gallery_size,
    summarize_sizes,
)
from app.ml.evaluation.feedback_eval import FEEDBACK_PROTOCOL, evaluate_feedback
from app.ml.evaluation.ranklist import write_ranklists
from app.ml.evaluation.testset import Embedded, embed_test_set
from app.ml.evaluation.translation_sheet import write_translation_sheet
from app.ml.infer.query_views import QueryView
from app.ml.retrieval.distances import distances
from app.ml.retrieval.feedback import FeedbackWeights
from app.ml.retrieval.metrics import mean_std, ranking_result
from app.ml.retrieval.rerank import DEFAULT_K1, DEFAULT_K2, DEFAULT_LAMBDA, k_reciprocal_rerank

__all__ = [
    "Embedded",
    "Extras",
    "RerankParams",
    "distance_matrix",
    "distances",
    "embed_test_set",
    "evaluate_bundle",
    "evaluate_runs",
    "heldout_split",
    "score",
]


@dataclass(frozen=True)
class RerankParams:
    k1: int = DEFAULT_K1
    k2: int = DEFAULT_K2
    lambda_value: float = DEFAULT_LAMBDA


def distance_matrix(e: Embedded, rerank: RerankParams | None = None) -> np.ndarray:
    """Query x gallery distances the evaluation ranks by: ``2 - 2 cos``, or re-ranked."""
    dist = distances(e.query, e.gallery)
    if rerank is None:
        return dist
    return k_reciprocal_rerank(
        dist,
        distances(e.query, e.query),
        distances(e.gallery, e.gallery),
        k1=rerank.k1,
        k2=rerank.k2,
        lambda_value=rerank.lambda_value,
    )


def score(
    e: Embedded,
    *,
    rerank: RerankParams | None = None,
    max_rank: int = 50,
    dist: np.ndarray | None = None,
) -> dict[str, Any]:
    """Rank-1/5/10, mAP, CMC of one embedded test set (``dist``: its
    :func:`distance_matrix`, when the caller has it already)."""
    if dist is None:
        dist = distance_matrix(e, rerank)
    result = ranking_result(dist, e.q_pids, e.g_pids, e.q_camids, e.g_camids, max_rank).to_dict()
    result["translated"] = e.translated
    result["fused"] = e.fused
    result["reranked"] = rerank is not None
    return result


def heldout_split(bundle: Bundle, dataset: PKUSketchDataset) -> Split:
    """The identities (with a sketch) that ``bundle`` was not trained on, as recorded in its
    manifest: the test identities of a cross-validation split's bundle."""
    trained = bundle.manifest.training.get("train_pids")
    if not isinstance(trained, list):
        raise UserInputError(
            f"bundle {bundle.path} does not record its training identities "
            "(manifest training.train_pids); choose the test identities with --split-file"
        )
    test = [pid for pid in dataset.sketch_pids if pid not in set(trained)]
    if not test:
        raise UserInputError(
            f"bundle {bundle.path} was trained on every identity of {dataset.root} that has a "
            "sketch: no held-out identity to test on"
        )
    return Split(train=sorted(int(p) for p in trained), test=test, seed=None)


@dataclass(frozen=True)
class Extras:
    """What `sketchreid evaluate` can add to the figures."""

    feedback: FeedbackWeights | None = None  # also measure relevance feedback
    ranklist_dir: Path | None = None  # write one rank-list picture per query here
    ranklist_top: int = 10
    translation_sheet: Path | None = None  # the first run's sketches, translations, photos
    sheet_people: int = 8


def _view_of(bundle: Bundle, view: QueryView | None) -> QueryView:
    """The view ``bundle``'s queries are evaluated in (see :func:`evaluate_runs`)."""
    if view is None:
        return bundle.view
    if view != "sketch" and bundle.translator is None:
        raise UserInputError(f"--view {view} needs a translator and {bundle.path} has none")
    return view


def evaluate_runs(
    runs: Sequence[tuple[Bundle, Split]],
    dataset: PKUSketchDataset,
    *,
    view: QueryView | None = None,
    rerank: RerankParams | None = None,
    extras: Extras = Extras(),
    distractors: DistractorOptions | None = None,
) -> dict[str, Any]:
    """Evaluate each bundle on its split's test identities; mean ± std when several.

    With ``distractors``, also at each gallery size with that many distractors added
    (:func:`app.ml.evaluation.distractors.score_by_gallery_size`; re-ranked as the service
    re-ranks, over each query's top candidates, when ``rerank``).

    Queries are embedded in ``view``; by default in each bundle's own view (the service's
    default).

    A split whose test identities its bundle was trained on is flagged
    (``train_test_overlap``): its figures measure memory, not generalisation.
    """
    if not runs:
        raise UserInputError("nothing to evaluate: no bundle and split given")
    views = [_view_of(bundle, view) for bundle, _ in runs]
    if extras.translation_sheet is not None and views[0] == "sketch":
        raise UserInputError(
            "a translation sheet needs translated sketches: "
            + (
                f"{runs[0][0].path} has no translator"
                if runs[0][0].translator is None
                else "drop --no-translate / --view sketch"
            )
        )
    per_split = []
    loaded: dict[Path, tuple[DistractorSet, np.ndarray]] = {}
    feedback_rows: list[dict[str, dict[str, Any]]] = []
    for i, (bundle, split) in enumerate(runs):
        trained_on = set(bundle.manifest.training.get("train_pids") or [])
        embedded = embed_test_set(
            bundle.embedder,
            bundle.translator,
            dataset,
            split.test,
            view=views[i],
            translation_weight=bundle.manifest.translation_weight,
        )
        dist = distance_matrix(embedded, rerank)
        result = score(embedded, rerank=rerank, dist=dist)
        result["model"] = str(bundle.path)
        result["seed"] = split.seed
        result["test_pids"] = list(split.test)
        result["train_test_overlap"] = len(trained_on & set(split.test))
        if distractors is not None:
            if bundle.path not in loaded:  # one bundle over several splits: listed once
                loaded[bundle.path] = distractors_for(bundle, distractors)
            result["gallery_sizes"] = score_by_gallery_size(
                bundle, embedded, distractors, rerank=_triple(rerank), loaded=loaded[bundle.path]
            )
        if extras.feedback is not None:
            result["feedback"] = evaluate_feedback(embedded, extras.feedback)
            feedback_rows.append(result["feedback"])
        if extras.ranklist_dir is not None:
            write_ranklists(
                embedded,
                dist,
                extras.ranklist_dir / f"split{i:02d}",
                top=extras.ranklist_top,
                reranked=rerank is not None,
            )
        if extras.translation_sheet is not None and i == 0:
            write_translation_sheet(embedded, extras.translation_sheet, extras.sheet_people)
        per_split.append(result)
    first = runs[0][0]
    report: dict[str, Any] = {
        "model": {"name": first.name, "version": first.version, "path": str(first.path)},
        "models": [str(b.path) for b, _ in runs],
        "inference": first.inference,
        "data_root": str(dataset.root),
        "translated": per_split[0]["translated"],
        "view": views[0],
        "translator_available": first.translator is not None,
        "reranked": rerank is not None,
        "rerank_params": vars(rerank) if rerank else None,
        "n_splits": len(per_split),
        "splits": per_split,
    }
    if len(per_split) == 1:
        report.update({k: per_split[0][k] for k in ("rank1", "rank5", "rank10", "mAP", "cmc")})
        report.update({k: per_split[0][k] for k in ("n_queries", "n_gallery")})
    else:
        report.update(mean_std(per_split))
    if distractors is not None:
        report["distractors"] = {
            **per_split[0]["gallery_sizes"]["set"],
            "rerank_candidates": distractors.rerank_candidates if rerank else None,
            "by_size": summarize_sizes([r["gallery_sizes"] for r in per_split]),
        }
    if extras.feedback is not None:
        report["feedback"] = {
            "weights": extras.feedback.as_json(),
            "protocol": FEEDBACK_PROTOCOL,
            "variants": {
                name: mean_std([rows[name] for rows in feedback_rows]) for name in feedback_rows[0]
            },
        }
    return report


def _triple(rerank: RerankParams | None) -> tuple[int, int, float] | None:
    return None if rerank is None else (rerank.k1, rerank.k2, rerank.lambda_value)


def evaluate_bundle(
    bundle: Bundle,
    dataset: PKUSketchDataset,
    splits: Sequence[Split],
    *,
    view: QueryView | None = None,
    rerank: RerankParams | None = None,
    extras: Extras = Extras(),
    distractors: DistractorOptions | None = None,
) -> dict[str, Any]:
    """Evaluate one bundle on each of ``splits`` (see :func:`evaluate_runs`)."""
    return evaluate_runs(
        [(bundle, split) for split in splits],
        dataset,
        view=view,
        rerank=rerank,
        extras=extras,
        distractors=distractors,
    )
