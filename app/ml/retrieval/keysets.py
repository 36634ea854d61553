"""Exact set operations on small non-negative integer keys, for k-reciprocal re-ranking.

Each operation works on keys in ``range(size)`` and has two implementations with the same
results: a dense table when ``size`` is at most ``DENSE_MAX`` (the query-time case: one query
and ~100 candidates, where numpy's per-call overhead of sorting dominates), and sorting /
binary search otherwise (bounded memory for large galleries).
"""

from __future__ import annotations

from typing import cast

import numpy as np
from numpy.typing import NDArray

from app.index.idset import unique_ids

__all__ = ["DENSE_MAX", "PairSet", "sum_by_key", "unique_keys"]

# Key spaces up to this size use a table: 256 KiB of booleans, 2 MiB of float64 sums.
DENSE_MAX = 1 << 18

IntArray = NDArray[np.intp]


def unique_keys(keys: NDArray[np.integer], size: int) -> IntArray:
    """``np.unique(keys)``: the distinct keys, ascending (keys in ``range(size)``). Large key
    spaces sort (:func:`app.index.idset.unique_ids`): numpy 2.4's ``np.unique`` is far slower."""
    if size <= DENSE_MAX:
        return np.flatnonzero(np.bincount(keys, minlength=size))
    return unique_ids(np.asarray(keys, dtype=np.int64).ravel()).astype(np.intp, copy=False)


def sum_by_key(
    keys: NDArray[np.integer], weights: NDArray[np.floating], size: int
) -> tuple[IntArray, NDArray[np.float64]]:
    """The distinct keys (ascending) and the float64 sum of the weights of each.

    Every sum adds its weights in the order they come in ``weights`` (``np.bincount``), so
    both implementations give bit-identical sums.
    """
    if size <= DENSE_MAX:
        present = np.flatnonzero(np.bincount(keys, minlength=size))
        sums = np.bincount(keys, weights=weights, minlength=size)[present]
        return present, cast(NDArray[np.float64], sums)  # numpy's stubs: weighted is float64
    # np.unique with return_inverse sorts (fast); without it numpy 2.4 is ~15x slower.
    distinct, inverse = np.unique(keys, return_inverse=True)
    sums = np.bincount(inverse.reshape(-1), weights=weights, minlength=distinct.size)
    return distinct.astype(np.intp, copy=False), cast(NDArray[np.float64], sums)


class PairSet:
    """A set of pairs ``(a, b)`` with ``0 <= a < rows`` and ``0 <= b < n``."""

    def __init__(self, a: NDArray[np.integer], b: NDArray[np.integer], rows: int, n: int):
        self.n = n
        self._table: NDArray[np.bool_] | None = None
        self._keys: NDArray[np.int64] | None = None
        if rows * n <= DENSE_MAX:
            self._table = np.zeros((rows, n), dtype=np.bool_)
            self._table[a, b] = True
        else:
            self._keys = np.sort((a.astype(np.int64) * n + b).ravel())

    def contains(self, a: NDArray[np.integer], b: NDArray[np.integer]) -> NDArray[np.bool_]:
        """Element-wise: is ``(a, b)`` in the set (``a`` and ``b`` broadcast together)."""
        if self._table is not None:
            found: NDArray[np.bool_] = self._table[a, b]
            return found
        assert self._keys is not None
        queries = a.astype(np.int64) * self.n + b
        if self._keys.size == 0:
            return np.zeros(queries.shape, dtype=np.bool_)
        pos = np.searchsorted(self._keys, queries)
        np.minimum(pos, self._keys.size - 1, out=pos)
        hit: NDArray[np.bool_] = self._keys[pos] == queries
        return hit
