"""The one query of a search: several sketches fused, moved by relevance feedback.

:func:`build_query` is used by the service (``POST /api/v1/search``), by the feedback
evaluation (``sketchreid evaluate --feedback``) and by the tests alike.

Several sketches (of one suspect, e.g. by several witnesses) are fused by the **mean of their
L2-normalised embeddings, re-normalised**. On unit vectors the cosine with that mean is, up to
a positive factor that is the same for every gallery item, the mean of the cosines with each
sketch, so the ranking is exactly mean-score fusion; yet it stays one vector, so the exact
FAISS top-k, the filters and the k-reciprocal re-ranking work unchanged. The alternative,
max-similarity fusion (rank by each crop's best cosine to any sketch), needs one index search
per sketch and lets a crop that resembles one drawing only (a sketch's oddity) outrank the
person all sketches agree on. Measured on real data with a sketch and a confirmed photo as the
two queries (``docs/results.md``), the two rank alike (no difference beyond the split-to-split
noise), so the one that keeps a single vector is used.

Relevance feedback is Rocchio's (Rocchio 1971; Salton and Buckley 1990) on unit vectors::

    q = normalise(a * mean(sketches) + b * mean(confirmed) - c * mean(rejected))

with each group's mean normalised first, so that ``a``, ``b`` and ``c`` weigh the groups
whatever their sizes. The cosine of ``q`` with a crop is then a weighted sum of its cosines with
the three group means: a confirmed crop acts as a second query of weight ``b`` (the cross-camera
photo of the person resembles the confirmed photo more than the drawing), and crops like the
rejected ones are pushed down. The service also leaves every confirmed and rejected crop out of
the results (they have been judged); the evaluation does the same.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from app.errors import UserInputError

__all__ = ["FeedbackWeights", "build_query", "unit_mean"]

# A fused query shorter than this before normalisation has no direction left.
_MIN_NORM = 1e-6


@dataclass(frozen=True)
class FeedbackWeights:
    """Rocchio weights of the sketches, the confirmed crops and the rejected crops.

    Fixed before any measurement (the sketch and the confirmed photos count alike; rejections
    push gently, as in Salton and Buckley's recommendation that negative feedback weigh less);
    ``docs/results.md`` shows how the figures move with other weights.
    """

    sketch: float = 1.0
    confirmed: float = 1.0
    rejected: float = 0.25

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if not (np.isfinite(value) and value >= 0.0):
                raise UserInputError(f"feedback weight {name} must be >= 0, got {value}")
        if self.sketch == 0.0:
            raise UserInputError("the sketch weight must be > 0 (a search without feedback)")

    def as_json(self) -> dict[str, float]:
        return asdict(self)


def unit_mean(vectors: np.ndarray) -> np.ndarray:
    """The normalised mean of L2-normalised row vectors (the fusion of several queries)."""
    rows = np.asarray(vectors, dtype=np.float64)
    if rows.ndim != 2 or rows.shape[0] == 0:
        raise UserInputError(f"expected at least one vector (N x dim), got shape {rows.shape}")
    rows = rows / np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), _MIN_NORM)
    mean = rows.mean(axis=0)
    norm = float(np.linalg.norm(mean))
    if norm < _MIN_NORM:
        raise UserInputError("the query vectors cancel each other out (opposite directions)")
    return mean / norm


def build_query(
    sketches: np.ndarray,
    confirmed: np.ndarray | None = None,
    rejected: np.ndarray | None = None,
    weights: FeedbackWeights | None = None,
) -> np.ndarray:
    """The unit query vector (float32, ``dim``) of one search.

    Args:
        sketches: (S, dim) embeddings of the sketches (or their translations), S >= 1.
        confirmed: (C, dim) embeddings of crops confirmed as the suspect; None or C = 0: none.
        rejected: (R, dim) embeddings of crops rejected as someone else; None or R = 0: none.
        weights: Rocchio weights (default :class:`FeedbackWeights`).

    Raises:
        UserInputError: no sketch, or feedback that cancels the query out.
    """
    w = weights or FeedbackWeights()
    query = w.sketch * unit_mean(sketches)
    if confirmed is not None and len(confirmed):
        query = query + w.confirmed * unit_mean(confirmed)
    if rejected is not None and len(rejected) and w.rejected > 0.0:
        query = query - w.rejected * unit_mean(rejected)
    norm = float(np.linalg.norm(query))
    if norm < _MIN_NORM:
        raise UserInputError(
            "the rejected crops cancel the sketch and the confirmed crops out: reject fewer"
        )
    return (query / norm).astype(np.float32)
