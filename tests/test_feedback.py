"""The query of a search (app.ml.retrieval.feedback): several sketches fused, moved by
feedback; and the relevance-feedback protocol of the evaluation
(app.ml.evaluation.feedback_eval) on hand-made embeddings."""

from __future__ import annotations

import numpy as np
import pytest

import app.ml.evaluation.feedback_eval as feedback_eval
from app.errors import UserInputError
from app.ml.evaluation.feedback_eval import VARIANTS, evaluate_feedback
from app.ml.evaluation.testset import Embedded
from app.ml.retrieval.feedback import FeedbackWeights, build_query, unit_mean


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


def _three_people() -> Embedded:
    """Persons 0, 1, 2: a sketch each, photos from cameras 1 and 2. Person 0's sketch is
    closest to person 1's photos; its camera-1 photo resembles its camera-2 photo."""
    e = np.eye(4, dtype=np.float32)
    p0c1, p0c2 = _unit(e[0] + 0.3 * e[3]), _unit(e[0] - 0.3 * e[3])
    p1c1, p1c2 = _unit(e[1] + 0.2 * e[3]), _unit(e[1] - 0.2 * e[3])
    p2c1, p2c2 = _unit(e[2] + 0.2 * e[3]), _unit(e[2] - 0.2 * e[3])
    sketches = np.stack([_unit(0.5 * e[0] + e[1]), _unit(e[1] + 0.2 * e[2]), e[2]])
    return Embedded(
        query=sketches.astype(np.float32),
        gallery=np.stack([p0c1, p0c2, p1c1, p1c2, p2c1, p2c2]).astype(np.float32),
        q_pids=np.array([0, 1, 2]),
        g_pids=np.array([0, 0, 1, 1, 2, 2]),
        q_camids=np.full(3, -1),
        g_camids=np.array([1, 2, 1, 2, 1, 2]),
        translated=False,
    )


def test_feedback_protocol_ranks_the_other_camera_after_confirming_one() -> None:
    e = _three_people()
    result = evaluate_feedback(e)
    assert set(result) == set(VARIANTS)
    for figures in result.values():
        assert figures["n_queries"] == 6  # 3 sketches x 2 confirmed photos
    # Person 0's sketch ranks both photos of person 1 first: its other photo is 3rd.
    assert result["plain"]["rank1"] == pytest.approx(4 / 6)
    # Confirming one photo of person 0 brings the other to the top.
    assert result["confirmed"]["rank1"] == 1.0
    assert result["confirmed"]["mAP"] == 1.0
    # The two photos of person 1 above person 0's confirmed photo are rejected, and left out.
    assert result["plain+rejected"]["rank1"] == 1.0


def test_feedback_protocol_moves_the_query_with_build_query(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The evaluation's query is the service's: build_query with the weights given."""
    calls: list[FeedbackWeights] = []

    def spy(*args: object) -> np.ndarray:
        calls.append(args[3])  # type: ignore[arg-type]
        return build_query(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(feedback_eval, "build_query", spy)
    e = _three_people()
    weights = FeedbackWeights(1.0, 0.1, 0.0)
    weak = evaluate_feedback(e, weights)
    assert calls and all(w == weights for w in calls)
    # With a weak confirmed weight the sketch still leads: person 0's other photo is not first.
    assert weak["confirmed"]["rank1"] < evaluate_feedback(e)["confirmed"]["rank1"]


def test_feedback_protocol_needs_two_cameras() -> None:
    e = _three_people()
    e.g_camids = np.ones(6, dtype=np.int64)
    with pytest.raises(UserInputError, match="two cameras"):
        evaluate_feedback(e)


def test_the_confirmed_photo_itself_does_not_count() -> None:
    """Only the person's photos from the other camera count: person 0's camera-1 photo looks
    more like person 1 than like person 0's camera-2 photo, so it finds its own person second
    (the confirmed photo, first with itself, is junk)."""
    e = np.eye(4, dtype=np.float32)
    gallery = np.stack([e[0], _unit(e[0] + 2 * e[3]), _unit(e[0] + e[1]), e[1]])
    embedded = Embedded(
        query=_unit(e[0] + e[3])[None],
        gallery=gallery.astype(np.float32),
        q_pids=np.array([0]),
        g_pids=np.array([0, 0, 1, 1]),
        q_camids=np.array([-1]),
        g_camids=np.array([1, 2, 1, 2]),
        translated=False,
    )
    photo_only = evaluate_feedback(embedded)["photo only"]
    assert photo_only["n_queries"] == 2 and photo_only["n_gallery"] == 4
    assert photo_only["rank1"] == 0.5  # camera 2 finds camera 1 first; camera 1 does not
    assert photo_only["mAP"] == pytest.approx((1 / 2 + 1) / 2)
