"""The query of a search (app.ml.feedback): several sketches fused, moved by feedback."""

from __future__ import annotations

import numpy as np
import pytest

from app.errors import UserInputError
from app.ml.feedback import FeedbackWeights, build_query, unit_mean


def _unit(rows: np.ndarray) -> np.ndarray:
    return rows / np.linalg.norm(rows, axis=-1, keepdims=True)


def test_one_sketch_is_its_own_query_and_several_rank_like_their_mean_cosine() -> None:
    rng = np.random.default_rng(0)
    sketches = _unit(rng.normal(size=(3, 8)))
    gallery = _unit(rng.normal(size=(20, 8)))
    np.testing.assert_allclose(build_query(sketches[:1]), sketches[0], atol=1e-6)
    np.testing.assert_allclose(build_query(3.0 * sketches[:1]), sketches[0], atol=1e-6)
    fused = build_query(sketches)
    assert fused.dtype == np.float32 and np.linalg.norm(fused) == pytest.approx(1.0, abs=1e-6)
    mean_cosine = (gallery @ sketches.T).mean(axis=1)
    np.testing.assert_array_equal(
        np.argsort(-(gallery @ fused), kind="stable"), np.argsort(-mean_cosine, kind="stable")
    )
    # Not the max-similarity fusion: on these vectors the two rankings differ.
    max_cosine = (gallery @ sketches.T).max(axis=1)
    assert not np.array_equal(np.argsort(-max_cosine), np.argsort(-mean_cosine))


def test_rocchio_is_the_weighted_sum_of_the_group_means() -> None:
    rng = np.random.default_rng(1)
    s, c, r = (_unit(rng.normal(size=(n, 6))) for n in (2, 3, 2))
    w = FeedbackWeights(sketch=1.0, confirmed=0.75, rejected=0.5)
    want = unit_mean(s) + 0.75 * unit_mean(c) - 0.5 * unit_mean(r)
    np.testing.assert_allclose(build_query(s, c, r, w), want / np.linalg.norm(want), atol=1e-6)
    moved = build_query(s, c, None, w)
    assert moved @ unit_mean(c) > unit_mean(s) @ unit_mean(c)  # towards the confirmed
    away = build_query(s, None, r, w)
    assert away @ unit_mean(r) < unit_mean(s) @ unit_mean(r)  # away from the rejected
    np.testing.assert_allclose(build_query(s, c[:0], r[:0], w), unit_mean(s), atol=1e-6)


def test_weights_and_degenerate_queries_are_refused() -> None:
    with pytest.raises(UserInputError, match="sketch weight"):
        FeedbackWeights(sketch=0.0)
    with pytest.raises(UserInputError, match="rejected must be >= 0"):
        FeedbackWeights(rejected=-1.0)
    with pytest.raises(UserInputError, match="at least one vector"):
        build_query(np.zeros((0, 4)))
    v = np.array([[1.0, 0.0]])
    with pytest.raises(UserInputError, match="cancel"):
        build_query(v, None, v, FeedbackWeights(rejected=1.0))
