"""CMC / mAP under the Market-1501 rules: hand-computed cases and a per-query cross-check."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from app.errors import UserInputError
from app.ml.retrieval import metrics
from app.ml.retrieval.metrics import (
    RankingResult,
    evaluate_ranking,
    mean_std,
    rank_k,
    ranking_result,
    summarize,
)


def _loop_market1501(
    distmat: np.ndarray,
    q_pids: np.ndarray,
    g_pids: np.ndarray,
    q_camids: np.ndarray,
    g_camids: np.ndarray,
    max_rank: int,
) -> tuple[np.ndarray, float]:
    """The Market-1501 protocol written out query by query (torchreid's formulation)."""
    max_rank = min(max_rank, distmat.shape[1])
    curves, aps = [], []
    for i in range(distmat.shape[0]):
        order = np.argsort(distmat[i], kind="stable")
        keep = ~((g_pids[order] == q_pids[i]) & (g_camids[order] == q_camids[i]))
        raw = (g_pids[order][keep] == q_pids[i]).astype(np.int64)
        if not raw.any():
            continue
        cmc = np.minimum(raw.cumsum(), 1)[:max_rank]
        cmc = np.pad(cmc, (0, max_rank - cmc.size), constant_values=1)
        curves.append(cmc)
        precision = raw.cumsum() / np.arange(1, raw.size + 1)
        aps.append(float((precision * raw).sum() / raw.sum()))
    return np.mean(curves, axis=0), float(np.mean(aps))


def test_perfect_ranking() -> None:
    dist = np.array([[0.1, 0.9, 0.8, 0.7], [0.9, 0.1, 0.8, 0.7]])
    cmc, mean_ap = evaluate_ranking(dist, [1, 2], [1, 2, 3, 4], [0, 0], [1, 1, 1, 1])
    np.testing.assert_allclose(cmc, [1.0, 1.0, 1.0, 1.0])
    assert mean_ap == pytest.approx(1.0)


def test_known_average_precision_hits_at_1_and_3() -> None:
    # Ranked gallery: pid 1 (hit), pid 2 (miss), pid 1 (hit) -> AP = (1/1 + 2/3) / 2.
    dist = np.array([[0.1, 0.2, 0.3]])
    cmc, mean_ap = evaluate_ranking(dist, [1], [1, 2, 1], [0], [1, 1, 1])
    assert mean_ap == pytest.approx((1.0 + 2.0 / 3.0) / 2.0)
    np.testing.assert_allclose(cmc, [1.0, 1.0, 1.0])


def test_known_average_precision_first_hit_at_rank_2() -> None:
    # miss, hit, miss, hit -> AP = (1/2 + 2/4) / 2 = 0.5; CMC = [0, 1, 1, 1].
    dist = np.array([[0.4, 0.1, 0.3, 0.2]])
    # order by distance: item1 (pid 5), item3 (pid 1), item2 (pid 6), item0 (pid 1)
    cmc, mean_ap = evaluate_ranking(dist, [1], [1, 5, 6, 1], [0], [2, 2, 2, 2])
    assert mean_ap == pytest.approx(0.5)
    np.testing.assert_allclose(cmc, [0.0, 1.0, 1.0, 1.0])


def test_same_identity_same_camera_items_are_removed() -> None:
    # Nearest: same pid, same camera (junk, removed); then a same-camera *other* identity
    # (kept: only same pid AND same camera is removed); then the true match.
    dist = np.array([[0.1, 0.2, 0.3]])
    g_pids, g_cams = [1, 2, 1], [0, 0, 1]
    cmc, mean_ap = evaluate_ranking(dist, [1], g_pids, [0], g_cams)
    # Two items are left after the removal; the curve still spans the gallery size (3) and
    # stays saturated after the first hit.
    np.testing.assert_allclose(cmc, [0.0, 1.0, 1.0])
    assert mean_ap == pytest.approx(0.5)
    # A sketch query (camid -1) removes nothing: the nearest item is a rank-1 hit.
    cmc, mean_ap = evaluate_ranking(dist, [1], g_pids, [-1], g_cams)
    np.testing.assert_allclose(cmc, [1.0, 1.0, 1.0])
    assert mean_ap == pytest.approx((1.0 + 2.0 / 3.0) / 2.0)


def test_queries_without_a_match_are_skipped() -> None:
    dist = np.array(
        [
            [0.1, 0.2, 0.3],  # pid 1: hit at rank 1
            [0.3, 0.2, 0.1],  # pid 9: absent from the gallery
            [0.2, 0.1, 0.3],  # pid 3: its only match shares its camera -> no match left
        ]
    )
    result = ranking_result(dist, [1, 9, 3], [1, 2, 3], [0, 0, 1], [1, 1, 1])
    assert result.n_queries == 1
    assert result.n_gallery == 3
    assert result.rank1 == pytest.approx(1.0)
    assert result.mAP == pytest.approx(1.0)
    cmc, mean_ap = evaluate_ranking(dist, [1, 9, 3], [1, 2, 3], [0, 0, 1], [1, 1, 1])
    np.testing.assert_allclose(cmc, result.cmc)
    assert mean_ap == result.mAP


def test_no_query_with_a_match_raises() -> None:
    with pytest.raises(UserInputError, match="none of the 2 queries"):
        evaluate_ranking(np.zeros((2, 3)), [7, 8], [1, 2, 3], [0, 0], [1, 1, 1])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_per_query_protocol_on_random_data(seed: int) -> None:
    rng = np.random.default_rng(seed)
    num_q, num_g = 40, 120
    dist = rng.random((num_q, num_g))
    q_pids, g_pids = rng.integers(0, 15, num_q), rng.integers(0, 15, num_g)
    q_cams, g_cams = rng.integers(0, 3, num_q), rng.integers(0, 3, num_g)
    cmc, mean_ap = evaluate_ranking(dist, q_pids, g_pids, q_cams, g_cams, max_rank=20)
    want_cmc, want_ap = _loop_market1501(dist, q_pids, g_pids, q_cams, g_cams, 20)
    np.testing.assert_allclose(cmc, want_cmc, atol=1e-12)
    assert mean_ap == pytest.approx(want_ap, abs=1e-12)
    assert cmc.shape == (20,)
    assert np.all(np.diff(cmc) >= 0)  # monotone
    assert 0.0 <= cmc[0] <= cmc[-1] <= 1.0


def test_block_processing_gives_the_same_result(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(5)
    args = (rng.random((17, 30)), rng.integers(0, 6, 17), rng.integers(0, 6, 30))
    cams = (rng.integers(0, 2, 17), rng.integers(0, 2, 30))
    whole = evaluate_ranking(*args, *cams)
    monkeypatch.setattr(metrics, "_BLOCK_ELEMS", 40)  # one query row per block
    blocked = evaluate_ranking(*args, *cams)
    np.testing.assert_allclose(blocked[0], whole[0])
    assert blocked[1] == pytest.approx(whole[1])


def test_curve_length_follows_max_rank_or_gallery_size() -> None:
    dist = np.random.default_rng(0).random((3, 8))
    pids, g_pids = [0, 1, 2], [0, 1, 2, 0, 1, 2, 3, 3]
    assert evaluate_ranking(dist, pids, g_pids, [0] * 3, [1] * 8, max_rank=5)[0].shape == (5,)
    assert evaluate_ranking(dist, pids, g_pids, [0] * 3, [1] * 8)[0].shape == (8,)


def test_infinite_distances_rank_last() -> None:
    dist = np.array([[np.inf, 0.5, 0.2]])
    cmc, mean_ap = evaluate_ranking(dist, [1], [1, 2, 3], [0], [1, 1, 1])
    np.testing.assert_allclose(cmc, [0.0, 0.0, 1.0])
    assert mean_ap == pytest.approx(1.0 / 3.0)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((np.zeros(3), [1], [1, 2, 3], [0], [1, 1, 1]), "2-D"),
        ((np.zeros((0, 3)), [], [1, 2, 3], [], [1, 1, 1]), "at least one"),
        ((np.zeros((2, 3)), [1], [1, 2, 3], [0, 0], [1, 1, 1]), "q_pids has 1 entries"),
        ((np.zeros((2, 3)), [1, 2], [1, 2], [0, 0], [1, 1, 1]), "g_pids has 2 entries"),
        ((np.zeros((2, 3)), [1, 2], [1, 2, 3], [0], [1, 1, 1]), "q_camids"),
        ((np.zeros((2, 3)), [1, 2], [1, 2, 3], [0, 0], [1, 1]), "g_camids"),
        ((np.zeros((2, 3)), [[1, 2]], [1, 2, 3], [0, 0], [1, 1, 1]), "1-D"),
        ((np.full((1, 2), np.nan), [1], [1, 2], [0], [1, 1]), "NaN"),
    ],
)
def test_bad_inputs_raise(args: tuple[object, ...], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        evaluate_ranking(*args)  # type: ignore[arg-type]


def test_bad_max_rank_raises() -> None:
    with pytest.raises(UserInputError, match="max_rank"):
        evaluate_ranking(np.zeros((1, 2)), [1], [1, 2], [0], [1, 1], max_rank=0)


def test_rank_k() -> None:
    cmc = [0.5, 0.75, 1.0]
    assert rank_k(cmc, 1) == 0.5
    assert rank_k(np.array(cmc), 2) == 0.75
    assert rank_k(cmc, 10) == 1.0  # gallery of 3: every item is already ranked
    with pytest.raises(UserInputError):
        rank_k(cmc, 0)
    with pytest.raises(UserInputError):
        rank_k([], 1)


def test_summarize_is_json_ready() -> None:
    cmc = np.linspace(0.3, 1.0, 12, dtype=np.float32)
    summary = summarize(cmc, np.float64(0.42), 7, 30)
    assert set(summary) == {"rank1", "rank5", "rank10", "mAP", "cmc", "n_queries", "n_gallery"}
    assert summary["rank1"] == pytest.approx(0.3)
    assert summary["rank5"] == pytest.approx(float(cmc[4]))
    assert summary["rank10"] == pytest.approx(float(cmc[9]))
    assert type(summary["mAP"]) is float and type(summary["rank1"]) is float
    assert type(summary["n_queries"]) is int
    assert all(type(x) is float for x in summary["cmc"])
    assert json.loads(json.dumps(summary)) == summary


def test_ranking_result_matches_summarize() -> None:
    dist = np.array([[0.1, 0.2, 0.3]])
    result = ranking_result(dist, [1], [1, 2, 1], [0], [1, 1, 1])
    assert isinstance(result, RankingResult)
    assert result.to_dict() == summarize(result.cmc, result.mAP, 1, 3)


def test_mean_std_uses_sample_std() -> None:
    a = {"rank1": 0.5, "rank5": 0.8, "rank10": 0.9, "mAP": 0.4, "cmc": [0.5, 0.6, 0.7]}
    b = {"rank1": 0.7, "rank5": 0.8, "rank10": 1.0, "mAP": 0.6, "cmc": [0.7, 0.8]}
    agg = mean_std([a, b])
    assert agg["rank1"]["mean"] == pytest.approx(0.6)
    assert agg["rank1"]["std"] == pytest.approx(math.sqrt(0.02))  # ddof = 1
    assert agg["rank5"] == {"mean": pytest.approx(0.8), "std": pytest.approx(0.0)}
    assert agg["mAP"]["mean"] == pytest.approx(0.5)
    assert agg["cmc"]["mean"] == pytest.approx([0.6, 0.7])  # common length of the curves
    assert agg["cmc"]["std"] == pytest.approx([math.sqrt(0.02), math.sqrt(0.02)])
    assert agg["n_splits"] == 2
    assert json.loads(json.dumps(agg)) == agg


def test_mean_std_single_split_and_errors() -> None:
    single = mean_std([summarize([0.25, 0.5], 0.3, 4, 2)])
    assert single["rank1"] == {"mean": 0.25, "std": 0.0}
    assert single["rank10"]["mean"] == 0.5
    assert single["cmc"] == {"mean": [0.25, 0.5], "std": [0.0, 0.0]}
    with pytest.raises(UserInputError):
        mean_std([])
    with pytest.raises(UserInputError, match="mAP"):
        mean_std([{"rank1": 1.0, "rank5": 1.0, "rank10": 1.0, "cmc": [1.0]}])
