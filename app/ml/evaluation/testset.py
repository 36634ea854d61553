"""One embedded test set: test sketches as queries, test photos as gallery.

Queries are embedded in a view (:mod:`app.ml.infer.query_views`: the sketch, its translation or
both fused) exactly as the service embeds an uploaded sketch; photos are embedded as the service
embeds ingested crops; :func:`fused_queries` fuses a sketch's own embedding with its
translation's (the ``fused`` cross-validation variant). Distances are ``2 - 2 cos`` on the
unit embeddings (squared Euclidean).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from PIL import Image

from app.errors import UserInputError
from app.ml.data.pku import PKUSketchDataset, Sample
from app.ml.images import load_image
from app.ml.infer.embedder import BaseEmbedder, BaseTranslator, fuse_views
from app.ml.infer.query_views import QueryView, embed_queries


@dataclass
class Embedded:
    """Query and gallery embeddings of one test set, with their identities and cameras (and,
    from :func:`embed_test_set`, the image files and the sketches' translations, for pictures).
    """

    query: np.ndarray
    gallery: np.ndarray
    q_pids: np.ndarray
    g_pids: np.ndarray
    q_camids: np.ndarray
    g_camids: np.ndarray
    translated: bool
    q_paths: list[Path] = field(default_factory=list)
    g_paths: list[Path] = field(default_factory=list)
    translations: list[Image.Image] = field(default_factory=list)
    fused: bool = False  # queries = the sketch's and its translation's embeddings fused


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
    view: QueryView | None = None,
    translation_weight: float = 0.5,
) -> Embedded:
    """The test identities' sketches embedded as queries in ``view`` (by default translated
    when ``translate`` and there is a translator, else as drawn) through
    :func:`app.ml.infer.query_views.embed_queries`, as the service embeds an uploaded sketch, and
    their photos as the gallery (``translation_weight``: the fused view's, see
    :func:`app.ml.infer.query_views.embed_queries`)."""
    if view is None:
        view = "translated" if translate and translator is not None else "sketch"
    test = dataset.subset(test_pids)
    with_photo = set(test.pids)
    queries = [s for s in test.sketches if s.pid in with_photo]
    if not queries or not test.photos:
        raise UserInputError("the test identities have no sketch/photo pairs to evaluate")
    sketches = [load_image(s.path) for s in queries]
    q, translations = embed_queries(
        sketches,
        view,
        lambda batch, modality: embedder.embed(batch, modality=modality),
        translator.translate_batch if translator is not None else None,
        translation_weight,
    )
    g = embedder.embed([load_image(s.path) for s in test.photos], modality="photo")
    q_pids, q_cams = _ids(queries)
    g_pids, g_cams = _ids(test.photos)
    return Embedded(
        q,
        g,
        q_pids,
        g_pids,
        q_cams,
        g_cams,
        bool(translations),
        q_paths=[s.path for s in queries],
        g_paths=[s.path for s in test.photos],
        translations=translations,
        fused=view == "fused",
    )


def fused_queries(plain: Embedded, translated: Embedded) -> Embedded:
    """``translated`` with each query embedding fused (:func:`fuse_views`) with the sketch's own
    embedding from ``plain``: the same test set embedded both ways."""
    if not translated.translated or plain.translated:
        raise ValueError("fused_queries needs an untranslated and a translated embedding")
    if not np.array_equal(plain.q_pids, translated.q_pids):
        raise ValueError("fused_queries needs the same queries in both embeddings")
    return replace(translated, query=fuse_views(plain.query, translated.query), fused=True)
