"""app.ml.retrieval.keysets: both implementations (dense table, sorting) against plain numpy."""

from __future__ import annotations

import numpy as np
import pytest

from app.ml.retrieval import keysets
from app.ml.retrieval.keysets import PairSet, sum_by_key, unique_keys


@pytest.fixture(params=["dense", "sorted"])
def way(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run the test with the dense tables and again with sorting only."""
    if request.param == "sorted":
        monkeypatch.setattr(keysets, "DENSE_MAX", 0)
    return str(request.param)


def test_unique_keys_is_np_unique(way: str) -> None:
    rng = np.random.default_rng(0)
    keys = rng.integers(0, 500, size=2000)
    assert np.array_equal(unique_keys(keys, 500), np.unique(keys))
    assert unique_keys(np.zeros(0, np.int64), 10).size == 0


def test_sum_by_key_adds_in_entry_order(way: str) -> None:
    rng = np.random.default_rng(1)
    keys = rng.integers(0, 300, size=5000)
    weights = rng.random(5000).astype(np.float32)
    distinct, sums = sum_by_key(keys, weights, 300)
    expected = np.zeros(300)
    for k, w in zip(keys.tolist(), weights.tolist(), strict=True):  # one by one, in order
        expected[k] += w
    assert np.array_equal(distinct, np.unique(keys))
    assert np.array_equal(sums, expected[distinct])  # bit-identical, not just close


def test_pair_set_membership(way: str) -> None:
    rng = np.random.default_rng(2)
    a, b = rng.integers(0, 40, 300), rng.integers(0, 70, 300)
    pairs = PairSet(a, b, 40, 70)
    qa, qb = rng.integers(0, 40, (30, 50)), rng.integers(0, 70, (30, 50))
    stored = set(zip(a.tolist(), b.tolist(), strict=True))
    expected = np.vectorize(lambda x, y: (x, y) in stored)(qa, qb)
    assert np.array_equal(pairs.contains(qa, qb), expected)
    assert pairs.contains(a, b).all()
    # broadcast, as re-ranking uses it: one ``a`` per row of ``b``
    rows = np.arange(30)[:, None]
    by_row = np.vectorize(lambda x, y: (x, y) in stored)(np.broadcast_to(rows, qb.shape), qb)
    assert np.array_equal(pairs.contains(rows, qb), by_row)
    empty = PairSet(np.zeros(0, np.intp), np.zeros(0, np.intp), 5, 5)
    assert not empty.contains(np.arange(5), np.arange(5)).any()
