"""k_reciprocal_rerank against the dense reference formulation and hand-checkable cases."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from app.errors import UserInputError
from app.ml.retrieval import rerank
from app.ml.retrieval.rerank import k_reciprocal_rerank


def _load_reference() -> Callable[..., np.ndarray]:
    """Import ``benchmarks/_reference_rerank.py`` by path (shared with the benchmark)."""
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "_reference_rerank.py"
    spec = importlib.util.spec_from_file_location("_reference_rerank", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.reference_rerank  # type: ignore[no-any-return]


_reference_rerank = _load_reference()


def _unit_features(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    feats = rng.normal(size=(n, dim))
    return feats / np.linalg.norm(feats, axis=1, keepdims=True)


def _blocks(feats: np.ndarray, num_q: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(q_g, q_q, g_g) squared-L2 distances of unit vectors, 2 - 2 cos, as the service uses."""
    dist = np.maximum(2.0 - 2.0 * feats @ feats.T, 0.0)
    return dist[:num_q, num_q:], dist[:num_q, :num_q], dist[num_q:, num_q:]


def _random_case(
    seed: int, num_q: int, num_g: int, dim: int = 16
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return _blocks(_unit_features(rng, num_q + num_g, dim), num_q)


def _clustered_case(
    seed: int, num_q: int, num_g: int, ids: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Identities as noisy cluster centres: many k-reciprocal sets get expanded."""
    rng = np.random.default_rng(seed)
    centres = _unit_features(rng, ids, 32)
    labels = rng.integers(0, ids, size=num_q + num_g)
    feats = centres[labels] + 0.35 * rng.normal(size=(num_q + num_g, 32)) / np.sqrt(32)
    feats /= np.linalg.norm(feats, axis=1, keepdims=True)
    return _blocks(feats, num_q)


@pytest.mark.parametrize(
    ("num_q", "num_g", "k1", "k2", "lam"),
    [
        (1, 30, 20, 6, 0.3),  # a single query
        (5, 40, 20, 6, 0.3),
        (12, 150, 20, 6, 0.3),
        (8, 60, 5, 3, 0.5),  # round(5/2) = 2 (numpy rounds half to even, like the reference)
        (6, 80, 7, 1, 0.3),  # k2 = 1: no query expansion
        (4, 50, 1, 2, 0.0),  # k1 = 1: round(1/2) = 0; lambda 0 = pure Jaccard
        (3, 4, 20, 6, 0.3),  # k1 + 1 > Q + G: clamped, as the reference's slicing does
        (2, 3, 4, 10, 0.3),  # k2 > Q + G: clamped too
        (1, 1, 20, 6, 0.3),  # the smallest possible problem
    ],
)
def test_matches_reference_on_random_features(
    num_q: int, num_g: int, k1: int, k2: int, lam: float
) -> None:
    args = _random_case(num_q * 1000 + num_g, num_q, num_g)
    expected = _reference_rerank(*args, k1=k1, k2=k2, lambda_value=lam)
    got = k_reciprocal_rerank(*args, k1=k1, k2=k2, lambda_value=lam)
    assert got.shape == (num_q, num_g)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("k2", [6, 1])  # the paper's, and the service's default
def test_matches_reference_on_clustered_features(seed: int, k2: int) -> None:
    args = _clustered_case(seed, num_q=15, num_g=200, ids=20)
    expected = _reference_rerank(*args, k1=20, k2=k2, lambda_value=0.3)
    got = k_reciprocal_rerank(*args, k1=20, k2=k2, lambda_value=0.3)
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)


def test_matches_reference_when_processed_in_tiny_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Force many row blocks so that every chunk boundary is exercised."""
    monkeypatch.setattr(rerank, "_BLOCK_ELEMS", 64)
    args = _clustered_case(7, num_q=9, num_g=70, ids=8)
    expected = _reference_rerank(*args, k1=6, k2=3)
    got = k_reciprocal_rerank(*args, k1=6, k2=3)
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)


def test_matches_reference_on_asymmetric_blocks_and_float32() -> None:
    """Column-max normalisation then transpose: rows use the columns of the joint matrix."""
    rng = np.random.default_rng(3)
    q_g = rng.uniform(0.1, 1.0, size=(6, 25)).astype(np.float32)
    q_q = rng.uniform(0.1, 1.0, size=(6, 6)).astype(np.float32)
    g_g = rng.uniform(0.1, 1.0, size=(25, 25)).astype(np.float32)
    np.fill_diagonal(q_q, 0.0)
    np.fill_diagonal(g_g, 0.0)
    expected = _reference_rerank(q_g, q_q, g_g, k1=8, k2=3)
    got = k_reciprocal_rerank(q_g, q_q, g_g, k1=8, k2=3)
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)


def test_lambda_one_returns_normalised_squared_distance() -> None:
    # One query, two gallery items at distances 1 and 2. The query's row of the joint matrix
    # is (0, 1, 2); squared (0, 1, 4); divided by its maximum 4 -> (0.25, 1.0) for the gallery.
    q_g = np.array([[1.0, 2.0]])
    q_q = np.array([[0.0]])
    g_g = np.array([[0.0, 1.5], [1.5, 0.0]])
    got = k_reciprocal_rerank(q_g, q_q, g_g, k1=1, k2=1, lambda_value=1.0)
    np.testing.assert_allclose(got, [[0.25, 1.0]], atol=1e-7)


def test_lambda_one_on_random_case_is_the_normalised_original() -> None:
    q_g, q_q, g_g = _random_case(11, 4, 30)
    got = k_reciprocal_rerank(q_g, q_q, g_g, lambda_value=1.0)
    row_max = np.maximum((q_q**2).max(axis=0), (q_g**2).max(axis=1))
    np.testing.assert_allclose(got, q_g**2 / row_max[:, None], atol=1e-6)


def test_two_cluster_toy_fixes_a_wrong_rank1() -> None:
    # 2-D points, Euclidean distances. The query (identity A) sits between A's tight cluster
    # around x = 1 and a B distractor at x = -0.9, whose own cluster is at x = -2. The
    # distractor is the nearest gallery item (0.9 < 1.0), but the A items and the query are
    # mutually among each other's nearest, and they share neighbourhoods: the Jaccard term
    # pulls A ahead of the distractor.
    query = np.array([[0.0, 0.0]])
    gallery = np.array(
        [
            [1.0, 0.0],
            [1.1, 0.05],
            [1.05, -0.05],
            [1.1, -0.05],  # identity A: indices 0-3
            [-0.9, 0.0],  # B distractor: index 4
            [-2.0, 0.0],
            [-2.05, 0.05],
            [-2.05, -0.05],
            [-2.1, 0.0],  # the rest of B
        ]
    )

    def euclid(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return np.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).sum(axis=2))

    args = (euclid(query, gallery), euclid(query, query), euclid(gallery, gallery))
    assert int(np.argmin(args[0][0])) == 4  # wrong rank-1 before re-ranking
    got = k_reciprocal_rerank(*args, k1=4, k2=1, lambda_value=0.3)
    assert int(np.argmin(got[0])) in {0, 1, 2, 3}
    assert set(np.argsort(got[0])[:4].tolist()) == {0, 1, 2, 3}
    np.testing.assert_allclose(got, _reference_rerank(*args, k1=4, k2=1), atol=1e-5)


def test_values_lie_in_unit_interval() -> None:
    got = k_reciprocal_rerank(*_clustered_case(5, 10, 90, 12))
    assert np.all(got >= -1e-6)
    assert np.all(got <= 1.0 + 1e-6)


def _bad_calls() -> list[tuple[dict[str, Any], str]]:
    q_g, q_q, g_g = _random_case(2, 3, 5)
    ok = {"q_g_dist": q_g, "q_q_dist": q_q, "g_g_dist": g_g}
    return [
        ({**ok, "q_q_dist": np.zeros((2, 2))}, "q_q_dist must have shape"),
        ({**ok, "g_g_dist": np.zeros((5, 4))}, "g_g_dist must have shape"),
        ({**ok, "q_g_dist": q_g[0]}, "2-D"),
        ({**ok, "q_g_dist": np.zeros((0, 5))}, "at least one"),
        ({**ok, "g_g_dist": np.where(np.eye(5) > 0, np.nan, g_g)}, "NaN"),
        ({**ok, "q_g_dist": -q_g - 0.1}, "not similarities"),
        ({**ok, "k1": 0}, "k1"),
        ({**ok, "k2": 0}, "k2"),
        ({**ok, "k1": 2.5}, "k1"),
        ({**ok, "lambda_value": 1.5}, "lambda_value"),
    ]


@pytest.mark.parametrize(("kwargs", "message"), _bad_calls())
def test_bad_inputs_raise_clear_errors(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(UserInputError, match=message):
        k_reciprocal_rerank(**kwargs)


def test_user_input_error_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        k_reciprocal_rerank(np.zeros((2, 3)), np.zeros((3, 3)), np.zeros((3, 3)))


def test_dense_and_sorted_key_sets_give_identical_results(monkeypatch: pytest.MonkeyPatch) -> None:
    """The query-time shortcut (dense tables for few items) changes no bit of the result."""
    from app.ml.retrieval import keysets

    for num_q, num_g, k1, k2 in ((1, 100, 20, 6), (6, 80, 6, 3), (1, 30, 4, 1)):
        args = _clustered_case(num_g, num_q, num_g, ids=num_g // 4)
        dense = k_reciprocal_rerank(*args, k1=k1, k2=k2)
        with monkeypatch.context() as m:
            m.setattr(keysets, "DENSE_MAX", 0)
            by_sorting = k_reciprocal_rerank(*args, k1=k1, k2=k2)
        assert np.array_equal(dense, by_sorting)


def test_top_candidate_reranking_reorders_the_top_n_and_keeps_the_rest_after_them() -> None:
    from app.ml.retrieval.distances import distances

    rng = np.random.default_rng(3)
    g = rng.normal(size=(40, 16))
    g /= np.linalg.norm(g, axis=1, keepdims=True)
    q = g[:3] + 0.3 * rng.normal(size=(3, 16))
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    dist = distances(q, g)
    out = rerank.rerank_top_candidates(q, g, dist, 10, k1=4, k2=2, lambda_value=0.3)
    for i in range(3):
        top = np.argsort(dist[i], kind="stable")[:10]
        expected = rerank.rerank_candidates(q[i], g[top], k1=4, k2=2, lambda_value=0.3)
        assert np.allclose(out[i, top], expected)
        order = np.argsort(out[i], kind="stable")
        assert set(order[:10]) == set(top), "the re-ranked top 10 still come first"
        rest = order[10:]
        assert np.all(np.diff(dist[i, rest]) >= 0), "the others keep their order"
    assert not np.array_equal(
        np.argsort(out[:, :], axis=1)[:, :10], np.argsort(dist, axis=1)[:, :10]
    ), "re-ranking changes some order among the candidates"
