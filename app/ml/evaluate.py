"""The evaluation protocol: test sketches as queries, test photos as gallery.

Queries go through the translator (when the model has one and ``translate`` is on) and the
embedder exactly as the service sends an uploaded sketch; photos are embedded as the service
embeds ingested crops. Distances are ``2 - 2 cos`` on the unit embeddings (squared Euclidean),
optionally re-ranked with :func:`app.ml.rerank.k_reciprocal_rerank`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from app.errors import UserInputError
from app.ml.bundle import Bundle
from app.ml.data.pku import PKUSketchDataset, Sample
from app.ml.data.splits import Split
from app.ml.images import load_image
from app.ml.inference import BaseEmbedder, BaseTranslator
from app.ml.metrics import mean_std, ranking_result
from app.ml.rerank import k_reciprocal_rerank


@dataclass(frozen=True)
class RerankParams:
    k1: int = 20
    k2: int = 6
    lambda_value: float = 0.3


@dataclass
class Embedded:
    """Query and gallery embeddings of one test set, with their identities and cameras."""

    query: np.ndarray
    gallery: np.ndarray
    q_pids: np.ndarray
    g_pids: np.ndarray
    q_camids: np.ndarray
    g_camids: np.ndarray
    translated: bool


def _ids(samples: Sequence[Sample]) -> tuple[np.ndarray, np.ndarray]:
    return (
        np.array([s.pid for s in samples], dtype=np.int64),
        np.array([s.camid for s in samples], dtype=np.int64),
    )


def embed_test_set(
    embedder: BaseEmbedder,
    translator: BaseTranslator | None,
    dataset: PKUSketchDataset,
    test_pids: Sequence[int],
    *,
    translate: bool = True,
) -> Embedded:
    test = dataset.subset(test_pids)
    with_photo = set(test.pids)
    queries = [s for s in test.sketches if s.pid in with_photo]
    if not queries or not test.photos:
        raise UserInputError("the test identities have no sketch/photo pairs to evaluate")
    sketches = [load_image(s.path) for s in queries]
    use_translator = translate and translator is not None
    if use_translator:
        assert translator is not None
        q = embedder.embed(translator.translate_batch(sketches), modality="photo")
    else:
        q = embedder.embed(sketches, modality="sketch")
    g = embedder.embed([load_image(s.path) for s in test.photos], modality="photo")
    q_pids, q_cams = _ids(queries)
    g_pids, g_cams = _ids(test.photos)
    return Embedded(q, g, q_pids, g_pids, q_cams, g_cams, use_translator)


def distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Squared Euclidean distance of unit vectors: 2 - 2 cos."""
    return np.clip(2.0 - 2.0 * (a @ b.T), 0.0, 4.0).astype(np.float32)


def score(e: Embedded, *, rerank: RerankParams | None = None, max_rank: int = 50) -> dict[str, Any]:
    """Rank-1/5/10, mAP, CMC of one embedded test set."""
    dist = distances(e.query, e.gallery)
    if rerank is not None:
        dist = k_reciprocal_rerank(
            dist,
            distances(e.query, e.query),
            distances(e.gallery, e.gallery),
            k1=rerank.k1,
            k2=rerank.k2,
            lambda_value=rerank.lambda_value,
        )
    result = ranking_result(dist, e.q_pids, e.g_pids, e.q_camids, e.g_camids, max_rank).to_dict()
    result["translated"] = e.translated
    result["reranked"] = rerank is not None
    return result


def evaluate_bundle(
    bundle: Bundle,
    dataset: PKUSketchDataset,
    splits: Sequence[Split],
    *,
    translate: bool = True,
    rerank: RerankParams | None = None,
) -> dict[str, Any]:
    """Evaluate ``bundle`` on each split's test identities; mean ± std when several.

    A split whose test identities the bundle was trained on is flagged
    (``train_test_overlap``): its figures measure memory, not generalisation.
    """
    trained_on = set(bundle.manifest.training.get("train_pids") or [])
    per_split = []
    for split in splits:
        embedded = embed_test_set(
            bundle.embedder, bundle.translator, dataset, split.test, translate=translate
        )
        result = score(embedded, rerank=rerank)
        result["seed"] = split.seed
        result["test_pids"] = list(split.test)
        result["train_test_overlap"] = len(trained_on & set(split.test))
        per_split.append(result)
    report: dict[str, Any] = {
        "model": {"name": bundle.name, "version": bundle.version, "path": str(bundle.path)},
        "inference": bundle.inference,
        "data_root": str(dataset.root),
        "translated": per_split[0]["translated"],
        "translator_available": bundle.translator is not None,
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
    return report
