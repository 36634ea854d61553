"""Straightforward dense k-reciprocal re-ranking, the baseline for tests and benchmarks.

This follows, step by step, the dense formulation of Zhong et al., "Re-ranking Person
Re-identification with k-reciprocal Encoding" (CVPR 2017) as published in the authors'
python version (zhunzhong07/person-re-ranking) and in torchreid's ``utils/rerank.py``:

1. the (Q+G)x(Q+G) distance matrix is assembled from the three blocks, squared, cast to
   float32, divided by its column maxima and transposed;
2. a full ``np.argsort`` of every row gives the initial ranking;
3. k-reciprocal sets with ``k1`` are expanded with the candidates' ``round(k1/2)``-reciprocal
   sets that overlap by more than 2/3, and weighted by ``exp(-d)`` into a dense ``V``;
4. local query expansion averages ``V`` over each row's ``k2`` nearest neighbours;
5. the Jaccard distance of each query to every item is computed through an inverted index;
6. ``final = jaccard * (1 - lambda) + original * lambda``, queries x gallery columns.

It keeps O((Q+G)^2) memory (several dense matrices) and is only meant as the ground truth
that :func:`app.ml.retrieval.rerank.k_reciprocal_rerank` must reproduce, and as a timing baseline.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray


def _reciprocal(rank: NDArray[np.int64], i: int, k: int) -> NDArray[np.int64]:
    """Items among the ``k + 1`` nearest of ``i`` that also have ``i`` among their ``k + 1``."""
    forward = rank[i, : k + 1]
    backward = rank[forward, : k + 1]
    return forward[np.any(backward == i, axis=1)]


def reference_rerank(
    q_g_dist: NDArray[np.floating],
    q_q_dist: NDArray[np.floating],
    g_g_dist: NDArray[np.floating],
    k1: int = 20,
    k2: int = 6,
    lambda_value: float = 0.3,
) -> NDArray[np.float32]:
    """Re-ranked query x gallery distances, computed densely (see the module docstring)."""
    num_query = q_g_dist.shape[0]
    full = np.concatenate(
        [
            np.concatenate([q_q_dist, q_g_dist], axis=1),
            np.concatenate([q_g_dist.T, g_g_dist], axis=1),
        ],
        axis=0,
    )
    squared = np.power(full, 2).astype(np.float32)
    original = np.transpose(squared / np.max(squared, axis=0))
    num_all = original.shape[0]
    rank = np.argsort(original, axis=1)
    half = int(np.around(k1 / 2.0))

    v = np.zeros_like(original, dtype=np.float32)
    for i in range(num_all):
        recip = _reciprocal(rank, i, k1)
        expansion = recip
        for candidate in recip:
            cand_recip = _reciprocal(rank, int(candidate), half)
            if len(np.intersect1d(cand_recip, recip)) > 2.0 / 3.0 * len(cand_recip):
                expansion = np.append(expansion, cand_recip)
        expansion = np.unique(expansion)
        weight = np.exp(-original[i, expansion])
        v[i, expansion] = weight / np.sum(weight)

    original = original[:num_query]
    if k2 != 1:
        v_qe = np.zeros_like(v)
        for i in range(num_all):
            v_qe[i] = np.mean(v[rank[i, :k2]], axis=0)
        v = v_qe
    del rank

    inverted = [np.nonzero(v[:, col])[0] for col in range(num_all)]
    jaccard = np.zeros_like(original, dtype=np.float32)
    for i in range(num_query):
        shared = np.zeros(num_all, dtype=np.float32)
        for col in np.nonzero(v[i])[0]:
            rows = inverted[col]
            shared[rows] += np.minimum(v[i, col], v[rows, col])
        jaccard[i] = 1.0 - shared / (2.0 - shared)

    final = jaccard * (1.0 - lambda_value) + original * lambda_value
    return final[:, num_query:].astype(np.float32, copy=False)
