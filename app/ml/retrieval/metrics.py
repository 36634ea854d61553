"""Ranking metrics for re-identification: CMC and mAP under the Market-1501 rules.

:func:`evaluate_ranking` computes what torchreid's ``eval_market1501``
(KaiyangZhou/deep-person-reid, ``torchreid/metrics/rank.py``) computes:

* each query's gallery is sorted by ascending distance;
* gallery items with the query's identity **and** the query's camera are removed (junk);
* a query with no remaining correct match is skipped (it counts in neither CMC nor mAP);
* CMC at rank ``r`` = share of valid queries whose first correct match is within the top
  ``r`` of the remaining list;
* AP = mean, over the correct matches, of the precision at each of them
  (``sum_t (t / rank_t) / n_correct``); mAP = mean AP over valid queries.

Sketch queries carry ``camid = -1`` (see docs/architecture.md), so the same-camera rule never
removes a photo for them. All rates are fractions in [0, 1].
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from app.errors import UserInputError

__all__ = [
    "SUMMARY_METRICS",
    "RankingResult",
    "evaluate_ranking",
    "mean_std",
    "rank_k",
    "ranking_result",
    "summarize",
]

# The scalar metrics aggregated over splits by mean_std (keys of summarize()).
SUMMARY_METRICS: tuple[str, ...] = ("rank1", "rank5", "rank10", "mAP")
OPTIONAL_METRICS: tuple[str, ...] = ("rank100",)  # large-gallery reports (distractors)

# Rows of the Q x G matrix handled at once (bounds the int64 / bool temporaries).
_BLOCK_ELEMS = 1 << 22


def _as_vector(name: str, value: ArrayLike, length: int, what: str) -> NDArray[Any]:
    array = np.asarray(value)
    if array.ndim != 1:
        raise UserInputError(f"{name} must be 1-D, got shape {array.shape}")
    if array.shape[0] != length:
        raise UserInputError(f"{name} has {array.shape[0]} entries but distmat has {length} {what}")
    return array


def _evaluate(
    distmat: ArrayLike,
    q_pids: ArrayLike,
    g_pids: ArrayLike,
    q_camids: ArrayLike,
    g_camids: ArrayLike,
    max_rank: int,
) -> tuple[NDArray[np.float64], float, int, int]:
    """CMC, mAP, number of valid queries and gallery size (see :func:`evaluate_ranking`)."""
    dist = np.asarray(distmat)
    if dist.ndim != 2:
        raise UserInputError(f"distmat must be 2-D (queries x gallery), got shape {dist.shape}")
    num_q, num_g = dist.shape
    if num_q == 0 or num_g == 0:
        raise UserInputError(
            f"distmat must have at least one query and one gallery item, got {dist.shape}"
        )
    if isinstance(max_rank, bool) or not isinstance(max_rank, int | np.integer) or max_rank < 1:
        raise UserInputError(f"max_rank must be a positive integer, got {max_rank!r}")
    if np.isnan(dist).any():
        raise UserInputError("distmat contains NaN values")
    qp = _as_vector("q_pids", q_pids, num_q, "queries (rows)")
    qc = _as_vector("q_camids", q_camids, num_q, "queries (rows)")
    gp = _as_vector("g_pids", g_pids, num_g, "gallery items (columns)")
    gc = _as_vector("g_camids", g_camids, num_g, "gallery items (columns)")
    max_rank = min(int(max_rank), num_g)

    cmc_hits = np.zeros(max_rank, dtype=np.int64)
    ap_sum = 0.0
    num_valid = 0
    step = max(1, _BLOCK_ELEMS // num_g)
    for start in range(0, num_q, step):
        stop = min(start + step, num_q)
        # Stable sort: equal distances keep gallery order (torchreid's order is unspecified).
        order = np.argsort(dist[start:stop], axis=1, kind="stable")
        same_pid = gp[order] == qp[start:stop, None]
        junk = same_pid & (gc[order] == qc[start:stop, None])
        hits = same_pid & ~junk
        # 0-based position of each item in the list once junk is removed.
        position = np.cumsum(~junk, axis=1) - 1
        num_rel = np.count_nonzero(hits, axis=1)
        valid = num_rel > 0
        if not valid.any():
            continue
        hits, position, num_rel = hits[valid], position[valid], num_rel[valid]

        first = position[np.arange(hits.shape[0]), np.argmax(hits, axis=1)]
        cmc_hits += np.bincount(first[first < max_rank], minlength=max_rank)[:max_rank]

        # Junk items before the first kept one have position -1; they are never hits.
        precision = np.cumsum(hits, axis=1) / np.maximum(position + 1.0, 1.0)
        ap_sum += float((np.where(hits, precision, 0.0).sum(axis=1) / num_rel).sum())
        num_valid += int(valid.sum())

    if num_valid == 0:
        raise UserInputError(
            f"none of the {num_q} queries has a correct match in the gallery of {num_g} items "
            "(after removing same-identity, same-camera items); check that query and gallery "
            "identities overlap"
        )
    cmc = np.cumsum(cmc_hits) / num_valid
    return cmc.astype(np.float64), ap_sum / num_valid, num_valid, num_g


def evaluate_ranking(
    distmat: np.ndarray,
    q_pids: ArrayLike,
    g_pids: ArrayLike,
    q_camids: ArrayLike,
    g_camids: ArrayLike,
    max_rank: int = 50,
) -> tuple[np.ndarray, float]:
    """CMC curve and mAP of a query x gallery distance matrix, Market-1501 rules.

    Same results as torchreid's ``eval_market1501`` (see the module docstring), computed
    block by block with one stable ``argsort`` per row, so memory stays O(Q x G) at most.

    Args:
        distmat: (Q, G) distances, smaller = better. ``inf`` is allowed (ranked last);
            NaN is not.
        q_pids, q_camids: identity and camera of each query, length Q.
        g_pids, g_camids: identity and camera of each gallery item, length G.
        max_rank: length of the returned CMC curve; if the gallery has fewer items the
            curve has G entries (torchreid does the same).

    Returns:
        ``(cmc, mAP)``: ``cmc`` float64 array of length ``min(max_rank, G)``, ``cmc[r - 1]``
        = rank-r matching rate as a fraction; ``mAP`` a float in [0, 1]. Queries with no
        correct match left after the same-camera removal are skipped. (When the removal
        leaves a query with fewer than ``max_rank`` items — where torchreid's ragged curves
        would fail — its curve is taken as saturated at 1 after the first hit.)

    Raises:
        UserInputError: (a ``ValueError``) when shapes disagree, ``distmat`` holds NaN,
            ``max_rank < 1``, or no query has a correct match in the gallery.
    """
    cmc, mean_ap, _, _ = _evaluate(distmat, q_pids, g_pids, q_camids, g_camids, max_rank)
    return cmc, mean_ap


def rank_k(cmc: Sequence[float] | np.ndarray, k: int) -> float:
    """Rank-``k`` matching rate from a CMC curve (``cmc[k - 1]``), as a fraction.

    When the curve is shorter than ``k`` because the gallery has fewer than ``k`` items,
    every item is already ranked and the rate cannot grow, so the last value is returned.
    (Do not ask for a ``k`` above the ``max_rank`` the curve was computed with.)
    """
    values = np.asarray(cmc, dtype=np.float64)
    if values.ndim != 1 or values.size == 0:
        raise UserInputError("cmc must be a non-empty 1-D curve")
    if k < 1:
        raise UserInputError(f"k must be >= 1, got {k}")
    return float(values[min(k, values.size) - 1])


@dataclass(frozen=True)
class RankingResult:
    """One evaluation: rates are fractions in [0, 1]; ``cmc[r - 1]`` is the rank-r rate.

    ``n_queries`` counts the valid queries (those with a correct match in the gallery).
    """

    rank1: float
    rank5: float
    rank10: float
    mAP: float  # the spelling used in the literature and in the CLI's JSON
    cmc: list[float]
    n_queries: int
    n_gallery: int

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict with keys rank1, rank5, rank10, mAP, cmc, n_queries, n_gallery."""
        return asdict(self)


def _result(
    cmc: Sequence[float] | np.ndarray, mean_ap: float, n_queries: int, n_gallery: int
) -> RankingResult:
    curve = [float(x) for x in np.asarray(cmc, dtype=np.float64).ravel()]
    return RankingResult(
        rank1=rank_k(curve, 1),
        rank5=rank_k(curve, 5),
        rank10=rank_k(curve, 10),
        mAP=float(mean_ap),
        cmc=curve,
        n_queries=int(n_queries),
        n_gallery=int(n_gallery),
    )


def summarize(
    cmc: Sequence[float] | np.ndarray,
    mAP: float,
    n_queries: int,
    n_gallery: int,
) -> dict[str, Any]:
    """JSON-ready summary: ``rank1``, ``rank5``, ``rank10``, ``mAP`` (fractions, Python
    floats), ``cmc`` (list of floats), ``n_queries`` (valid queries), ``n_gallery``."""
    return _result(cmc, mAP, n_queries, n_gallery).to_dict()


def ranking_result(
    distmat: np.ndarray,
    q_pids: ArrayLike,
    g_pids: ArrayLike,
    q_camids: ArrayLike,
    g_camids: ArrayLike,
    max_rank: int = 50,
) -> RankingResult:
    """:func:`evaluate_ranking` plus the valid-query count, as a :class:`RankingResult`."""
    cmc, mean_ap, n_valid, n_gallery = _evaluate(
        distmat, q_pids, g_pids, q_camids, g_camids, max_rank
    )
    return _result(cmc, mean_ap, n_valid, n_gallery)


def mean_std(results: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Aggregate :func:`summarize` dicts over splits.

    Returns ``{"rank1": {"mean", "std"}, "rank5": ..., "rank10": ..., "mAP": ...,
    "cmc": {"mean": [curve], "std": [curve]}, "n_splits": n}``, plus ``rank100`` when every
    result has it (the large-gallery figures). ``std`` is the *sample*
    standard deviation (``ddof=1``) when there are two or more splits, and 0.0 for a single
    split. The CMC mean and std are taken rank by rank over the common length (the shortest
    curve) of the splits. All values are Python floats (fractions).
    """
    if not results:
        raise UserInputError("mean_std needs at least one result")
    out: dict[str, Any] = {}
    n = len(results)
    optional = [k for k in OPTIONAL_METRICS if all(k in r for r in results)]
    for key in (*SUMMARY_METRICS, *optional):
        try:
            values = np.array([float(r[key]) for r in results], dtype=np.float64)
        except KeyError as exc:
            raise UserInputError(f"every result must have the key {key!r}") from exc
        std = float(values.std(ddof=1)) if n > 1 else 0.0
        out[key] = {"mean": float(values.mean()), "std": std}
    curves = [np.asarray(r.get("cmc", []), dtype=np.float64) for r in results]
    length = min(c.size for c in curves)
    if length == 0:
        raise UserInputError("every result must have a non-empty 'cmc' curve")
    stacked = np.stack([c[:length] for c in curves])
    curve_std = stacked.std(axis=0, ddof=1) if n > 1 else np.zeros(length)
    out["cmc"] = {
        "mean": [float(x) for x in stacked.mean(axis=0)],
        "std": [float(x) for x in curve_std],
    }
    out["n_splits"] = n
    return out
