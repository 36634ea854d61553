"""The FAISS store on its own: exactness, filters, removal, persistence."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from app.index.idset import IdSet
from app.index.store import FILTER_EF_MAX, IVF_MIN_TRAIN, VectorIndex


def _unit(n: int, dim: int = 16, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _brute(q: np.ndarray, ids: np.ndarray, x: np.ndarray, k: int) -> list[int]:
    scores = x @ q
    return [int(ids[i]) for i in np.argsort(-scores, kind="stable")[:k]]


def test_flat_is_exact_with_and_without_filters() -> None:
    x, ids = _unit(500), np.arange(10, 510, dtype=np.int64)
    index = VectorIndex(16, "flat")
    index.build(ids, x)
    q = _unit(1, seed=1)[0]
    assert [h.id for h in index.search(q, 20)] == _brute(q, ids, x, 20)
    allowed = ids[::7]
    mask = np.isin(ids, allowed)
    hits = index.search(q, 30, allowed)
    assert [h.id for h in hits] == _brute(q, ids[mask], x[mask], 30)
    assert index.search(q, 5, [99999]) == []
    assert len(index.search(q, 1000)) == 500


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivf"])
def test_remove_add_and_tombstones(kind: str) -> None:
    x, ids = _unit(50), np.arange(1, 51, dtype=np.int64)
    index = VectorIndex(16, kind)
    index.build(ids, x)
    assert index.remove([3, 4, 999]) == 2
    assert 3 not in index and len(index) == 48
    hits = index.search(x[2], 50)
    assert 3 not in [h.id for h in hits] and len(hits) == 48
    index.add([3], x[2:3])  # re-adding a removed id works (HNSW compacts first)
    assert index.search(x[2], 1)[0].id == 3
    with pytest.raises(ValueError, match="already"):
        index.add([3], x[2:3])


def test_ivf_trains_on_large_galleries(tmp_path: Path) -> None:
    x = _unit(IVF_MIN_TRAIN + 200, seed=3)
    ids = np.arange(len(x), dtype=np.int64)
    small = VectorIndex(16, "ivf")
    small.build(ids[:100], x[:100])
    assert small.kind == "flat"
    big = VectorIndex(16, "ivf", ivf_nprobe=64)
    big.build(ids, x)
    assert big.kind == "ivf"
    q = x[5]
    assert big.search(q, 1)[0].id == 5
    big.save(tmp_path, "m")
    again = VectorIndex(16, "ivf")
    assert again.load(tmp_path, "m", ids) is None and again.kind == "ivf"


def test_save_load_and_refusals(tmp_path: Path) -> None:
    x, ids = _unit(20), np.arange(100, 120, dtype=np.int64)
    index = VectorIndex(16)
    index.build(ids, x)
    index.save(tmp_path, "model-a")
    fresh = VectorIndex(16)
    assert fresh.load(tmp_path, "model-a", ids) is None
    assert fresh.ids().tolist() == ids.tolist()
    assert [h.id for h in fresh.search(x[0], 3)] == [h.id for h in index.search(x[0], 3)]
    assert "model_version" in (VectorIndex(16).load(tmp_path, "model-b", ids) or "")
    assert "index_type" in (VectorIndex(16, "hnsw").load(tmp_path, "model-a", ids) or "")
    assert "dim" in (VectorIndex(8).load(tmp_path, "model-a", ids) or "")
    assert "items" in (VectorIndex(16).load(tmp_path, "model-a", ids[1:]) or "")
    assert "no saved index" in (VectorIndex(16).load(tmp_path / "none", "model-a", ids) or "")


def test_bad_vectors_are_refused() -> None:
    index = VectorIndex(4)
    with pytest.raises(ValueError, match="shape"):
        index.add([1], np.zeros((1, 5), np.float32))
    with pytest.raises(ValueError, match="NaN"):
        index.add([1], np.full((1, 4), np.nan, np.float32))
    with pytest.raises(ValueError, match="duplicate"):
        index.build([1, 1], np.ones((2, 4), np.float32))


@pytest.mark.parametrize(("kind", "n"), [("flat", 60), ("hnsw", 60), ("ivf", IVF_MIN_TRAIN + 100)])
def test_saved_after_deletions_and_reloaded(tmp_path: Path, kind: str, n: int) -> None:
    x, ids = _unit(n, seed=4), np.arange(1, n + 1, dtype=np.int64)
    index = VectorIndex(16, kind, hnsw_ef_search=512, ivf_nprobe=1000)
    index.build(ids, x)
    assert index.kind == kind
    gone = [2, 5, 7, n]
    assert index.remove(gone) == 4
    queries = [x[1], x[4], x[10]]  # x[1], x[4] are the vectors of the deleted ids 2 and 5
    before = [[(h.id, round(h.score, 5)) for h in index.search(q, 10)] for q in queries]
    index.save(tmp_path, "m")
    live = np.setdiff1d(ids, gone)
    again = VectorIndex(16, kind, hnsw_ef_search=512, ivf_nprobe=1000)
    assert again.load(tmp_path, "m", live) is None
    assert again.kind == kind and again.ids().tolist() == live.tolist()
    after = [[(h.id, round(h.score, 5)) for h in again.search(q, 10)] for q in queries]
    assert after == before
    assert not {h[0] for hits in after for h in hits} & set(gone)
    # The saved copy does not match a database that still holds a deleted id.
    assert "items" in (VectorIndex(16, kind).load(tmp_path, "m", ids) or "")


# Approximate indexes with the smallest search budget over 64-d random vectors, so that
# searches that went the approximate way would show it (checked in the first test below);
# IVF needs IVF_MIN_TRAIN items to be built as IVF.
APPROX = [("hnsw", 600), ("ivf", IVF_MIN_TRAIN + 200)]
DIM = 64


def _starved(kind: str, n: int, **kwargs: int) -> tuple[VectorIndex, np.ndarray, np.ndarray]:
    x, ids = _unit(n, DIM, seed=5), np.arange(1, n + 1, dtype=np.int64) * 3
    index = VectorIndex(DIM, kind, hnsw_m=4, hnsw_ef_search=1, ivf_nprobe=1, **kwargs)
    index.build(ids, x)
    assert index.kind == kind
    return index, ids, x


@pytest.mark.parametrize(("kind", "n"), APPROX)
def test_small_filters_are_searched_exactly_on_approximate_indexes(kind: str, n: int) -> None:
    index, ids, x = _starved(kind, n)  # default exact_filter_max: these filters are small
    queries = _unit(5, DIM, seed=9)
    # Unfiltered, the starved index is approximate ...
    assert any([h.id for h in index.search(q, 10)] != _brute(q, ids, x, 10) for q in queries)
    # ... filtered (even by a filter that lets everything through), it is exact.
    rng = np.random.default_rng(1)
    for size in (3, 40, n // 3, n):
        allowed = rng.choice(ids, size=size, replace=False)
        mask = np.isin(ids, allowed)
        for q in queries:
            hits = index.search(q, 10, np.concatenate([allowed, [-5, 10**12]]))
            assert [h.id for h in hits] == _brute(q, ids[mask], x[mask], 10)


@pytest.mark.parametrize(("kind", "n"), APPROX)
def test_large_filters_return_only_allowed_items(kind: str, n: int) -> None:
    index, ids, _ = _starved(kind, n, exact_filter_max=0)  # every filter goes approximate
    allowed = ids[ids % 2 == 0]
    for q in _unit(20, DIM, seed=11):
        hits = index.search(q, 10, allowed)
        assert len(hits) == 10
        assert set(h.id for h in hits) <= set(allowed.tolist())
        assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)


@pytest.mark.parametrize(("kind", "n"), APPROX)
def test_an_approximate_filtered_search_that_comes_up_short_is_redone_exactly(
    kind: str, n: int
) -> None:
    index, ids, x = _starved(kind, n, exact_filter_max=0)
    allowed = ids[[7, n // 2, n - 3]]  # three scattered items: starved searches miss them
    mask = np.isin(ids, allowed)
    for q in _unit(10, DIM, seed=13):
        assert [h.id for h in index.search(q, 10, allowed)] == _brute(q, ids[mask], x[mask], 3)


def test_filters_skip_deleted_items_on_hnsw() -> None:
    index, ids, x = _starved("hnsw", 300)
    index.remove(ids[:100])  # tombstones
    allowed = ids[50:150]
    mask = np.isin(ids, ids[100:150])
    for q in _unit(5, DIM, seed=3):
        assert [h.id for h in index.search(q, 10, allowed)] == _brute(q, ids[mask], x[mask], 10)


def test_auto_is_exact_below_the_threshold_and_hnsw_from_it(tmp_path: Path) -> None:
    x = _unit(120, seed=6)
    ids = np.arange(1, 121, dtype=np.int64)
    small = VectorIndex(16, "auto", auto_approx_min=100)
    assert small.kind == "flat"
    small.build(ids[:99], x[:99])
    assert small.kind == "flat"
    small.add(ids[99:], x[99:])  # grown past the threshold while serving: still flat ...
    assert small.kind == "flat"
    small.save(tmp_path, "m")
    again = VectorIndex(16, "auto", auto_approx_min=100)
    reason = again.load(tmp_path, "m", ids)  # ... and its saved copy is refused at start-up
    assert reason is not None and "'hnsw'" in reason
    again.build(ids, x)
    assert again.kind == "hnsw"
    again.save(tmp_path, "m")
    assert VectorIndex(16, "auto", auto_approx_min=100).load(tmp_path, "m", ids) is None
    with pytest.raises(ValueError, match="auto, flat, hnsw, ivf"):
        VectorIndex(16, "annoy")


def test_idset_membership_insertion_and_removal() -> None:
    s = IdSet([5, 3, 9, 3])
    assert s.array().tolist() == [3, 5, 9] and len(s) == 3
    assert 5 in s and 4 not in s and "5" not in s and True not in s
    assert s.present([9, 1, 3, 3, 100]).tolist() == [3, 9]
    s.add(np.array([4, 10, 1], dtype=np.int64))
    assert s.array().tolist() == [1, 3, 4, 5, 9, 10]
    s.remove(np.array([4, 7, 1], dtype=np.int64))
    assert s.array().tolist() == [3, 5, 9, 10]
    assert IdSet().present([1, 2]).tolist() == []


@pytest.mark.parametrize("kind", ["flat", "hnsw"])
def test_vectors_are_the_stored_rows_of_live_ids(tmp_path: Path, kind: str) -> None:
    x, ids = _unit(60, seed=5), np.arange(1, 61, dtype=np.int64)
    index = VectorIndex(16, kind)
    index.build(ids, x)
    index.remove([3, 10])  # HNSW: tombstones, still in the graph
    found, vectors = index.vectors([10, 7, 3, 55, 7, 999])
    assert found.tolist() == [7, 55]  # ascending, de-duplicated, live only
    assert np.array_equal(vectors, x[[6, 54]])  # bit for bit
    index.add([3], x[9:10])  # the id again, with another vector (HNSW compacts first)
    found, vectors = index.vectors([3])
    assert np.array_equal(vectors, x[9:10])
    index.save(tmp_path, "m")
    again = VectorIndex(16, kind)
    assert again.load(tmp_path, "m", index.ids()) is None
    assert np.array_equal(again.vectors(ids)[1], index.vectors(ids)[1])
    assert index.vectors([])[0].size == 0 and index.vectors([])[1].shape == (0, 16)


def test_ivf_index_hands_out_no_vectors() -> None:
    x, ids = _unit(IVF_MIN_TRAIN + 40, seed=6), np.arange(1, IVF_MIN_TRAIN + 41, dtype=np.int64)
    index = VectorIndex(16, "ivf")
    index.build(ids, x)
    assert index.kind == "ivf"
    found, vectors = index.vectors(ids[:5])
    assert found.size == 0 and vectors.shape == (0, 16)  # callers read them from the database


# IVF after removals. IndexIDMap2's remove_ids assumes that its base index shifts the
# internal ids down as IndexFlat does; IVF lists keep theirs, so an IVF index wrapped in an
# id map returned wrong ids after any removal. Each vector must find itself again.
IVF_SMALL = 100  # IVF_MIN_TRAIN lowered so that a few hundred items really build IVF


@pytest.fixture
def small_ivf(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("app.index.store.IVF_MIN_TRAIN", IVF_SMALL)


def _ivf_with_removals(n: int = 400, removed: int = 50) -> tuple[VectorIndex, np.ndarray, dict]:
    x, ids = _unit(n, seed=21), np.arange(1, n + 1, dtype=np.int64) * 7
    index = VectorIndex(16, "ivf", ivf_nprobe=1000)  # every list: results are exact
    index.build(ids, x)
    assert index.kind == "ivf"
    gone = np.random.default_rng(2).choice(ids, size=removed, replace=False)
    assert index.remove(gone) == removed
    vec = {int(i): x[j] for j, i in enumerate(ids)}
    return index, np.sort(gone), vec


def _assert_finds_itself(index: VectorIndex, vec: dict, gone: set[int]) -> None:
    live = index.ids().tolist()
    assert not set(live) & gone
    wrong = [i for i in live if [h.id for h in index.search(vec[i], 1)] != [i]]
    assert wrong == [], f"{len(wrong)} of {len(live)} vectors do not find themselves"
    for i in sorted(gone)[:10]:  # a removed id never comes back, even for its own vector
        hits = index.search(vec[i], len(live) + 10)
        assert i not in {h.id for h in hits} and len(hits) == len(live)


@pytest.mark.usefixtures("small_ivf")
def test_ivf_vectors_find_themselves_after_removals() -> None:
    index, gone, vec = _ivf_with_removals()
    assert len(index) == 350 and int(gone[0]) not in index
    _assert_finds_itself(index, vec, set(gone.tolist()))


@pytest.mark.usefixtures("small_ivf")
@pytest.mark.parametrize("exact_filter_max", [0, 20_000])  # approximate / exact filtered paths
def test_ivf_filtered_searches_after_removals(exact_filter_max: int) -> None:
    index, gone, vec = _ivf_with_removals()
    index.exact_filter_max = exact_filter_max
    all_ids = np.array(sorted(vec), dtype=np.int64)
    allowed = np.concatenate([all_ids[::3], gone])  # removed ids in the filter too
    live_allowed = np.setdiff1d(allowed, gone)
    x_allowed = np.stack([vec[int(i)] for i in live_allowed])
    for i in live_allowed[:40].tolist():
        hits = index.search(vec[i], 10, allowed)
        assert [h.id for h in hits] == _brute(vec[i], live_allowed, x_allowed, 10)
    for i in gone[:10].tolist():  # the vector of a removed, allowed id
        hits = index.search(vec[i], 10, allowed)
        assert {h.id for h in hits} <= set(live_allowed.tolist()) and len(hits) == 10


@pytest.mark.usefixtures("small_ivf")
def test_ivf_remove_then_add_new_and_old_ids() -> None:
    index, gone, vec = _ivf_with_removals()
    fresh = _unit(30, seed=22)
    new_ids = np.arange(10_001, 10_031, dtype=np.int64)
    index.add(new_ids, fresh)
    vec.update({int(i): fresh[j] for j, i in enumerate(new_ids)})
    back = gone[:5]  # removed ids given again, with their old vectors
    index.add(back, np.stack([vec[int(i)] for i in back]))
    assert len(index) == 350 + 30 + 5
    index.remove(new_ids[::2])  # and remove again, among old and new entries
    still_gone = set(gone[5:].tolist()) | set(new_ids[::2].tolist())
    _assert_finds_itself(index, vec, still_gone)


@pytest.mark.usefixtures("small_ivf")
def test_ivf_save_load_after_removals(tmp_path: Path) -> None:
    index, gone, vec = _ivf_with_removals()
    index.save(tmp_path, "m")
    again = VectorIndex(16, "ivf", ivf_nprobe=1000)
    assert again.load(tmp_path, "m", index.ids()) is None
    assert again.kind == "ivf" and again.ids().tolist() == index.ids().tolist()
    _assert_finds_itself(again, vec, set(gone.tolist()))
    again.remove(again.ids()[:20])  # the loaded copy removes correctly too
    _assert_finds_itself(again, vec, set(gone.tolist()) | set(index.ids()[:20].tolist()))


@pytest.mark.usefixtures("small_ivf")
def test_ivf_saved_in_the_old_id_map_form_is_rebuilt(tmp_path: Path) -> None:
    """Files written before the fix wrap IVF in IndexIDMap2: never trusted, even if ids agree."""
    import hashlib
    import json

    import faiss

    from app.index.store import FORMAT_VERSION, INDEX_FILE, META_FILE, ids_checksum, ivf_nlist

    x, ids = _unit(400, seed=21), np.arange(1, 401, dtype=np.int64)
    quantizer = faiss.IndexFlatIP(16)
    base = faiss.IndexIVFFlat(quantizer, 16, ivf_nlist(400), faiss.METRIC_INNER_PRODUCT)
    base.train(x)
    old = faiss.IndexIDMap2(base)
    old.add_with_ids(x, ids)
    old.remove_ids(ids[:50])
    live = ids[50:]
    data = faiss.serialize_index(old).tobytes()
    meta = {
        "format": FORMAT_VERSION,
        "model_version": "m",
        "index_type": "ivf",
        "kind": "ivf",
        "dim": 16,
        "count": len(live),
        "ids_sha256": ids_checksum(live),
        "file_sha256": hashlib.sha256(data).hexdigest(),
    }
    (tmp_path / INDEX_FILE).write_bytes(data)
    (tmp_path / META_FILE).write_text(json.dumps(meta))
    index = VectorIndex(16, "ivf")
    reason = index.load(tmp_path, "m", live)
    assert reason is not None and "IndexIDMap2" in reason
    assert len(index) == 0  # nothing taken from the refused file


# Filtered HNSW searches over large filters: the selector and the efSearch they run with.
def _clustered(n: int, dim: int, groups: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(n unit vectors around ``groups`` centres, 100 queries near the same centres)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(groups, dim))
    x = centres[rng.integers(0, groups, n)] + 0.6 * rng.normal(size=(n, dim))
    q = centres[rng.integers(0, groups, 100)] + 0.6 * rng.normal(size=(100, dim))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    return x.astype(np.float32), q.astype(np.float32)


def test_filtered_hnsw_keeps_its_recall_on_a_selective_filter() -> None:
    """One "camera" of six over a clustered gallery, through the approximate path: at the
    fixed efSearch 16, HNSW found ~0.74 of the exact filtered top 10 (1.0 unfiltered); with
    efSearch scaled by the filter's selectivity (16 x sqrt(6) = 40) ~0.91."""
    x, queries = _clustered(3000, 48, 200)
    ids = np.arange(1, 3001, dtype=np.int64)
    index = VectorIndex(48, "hnsw", hnsw_m=16, hnsw_ef_search=16, exact_filter_max=0)
    index.build(ids, x)
    cameras = np.random.default_rng(1).integers(0, 6, ids.size)
    found = []
    for camera in (0, 1):
        mask = cameras == camera
        for q in queries:
            truth = set(_brute(q, ids[mask], x[mask], 10))
            hits = {h.id for h in index.search(q, 10, ids[mask])}
            assert hits <= set(ids[mask].tolist())
            found.append(len(truth & hits) / 10)
    assert np.mean(found) >= 0.85


def test_filtered_ef_scales_with_the_share_allowed_and_is_capped() -> None:
    index, ids, _ = _starved("hnsw", 600)
    index.hnsw_ef_search = 16
    assert index._filtered_ef(600) == 16
    assert index._filtered_ef(100) == 40  # 1/6 allowed: 16 x sqrt(6)
    assert index._filtered_ef(1) == 392  # 16 x sqrt(600)
    index.hnsw_filter_ef_max = 30
    assert index._filtered_ef(100) == 30
    index.hnsw_filter_ef_max = 4  # a cap below efSearch never lowers it
    assert index._filtered_ef(100) == 16
    index.hnsw_filter_ef_max = FILTER_EF_MAX
    index.hnsw_ef_search = 64
    assert index._filtered_ef(1) == FILTER_EF_MAX
    index.hnsw_ef_search = 16
    index.remove(ids[:60])  # tombstones stay graph nodes: the share is of ntotal (600)
    assert index._filtered_ef(540) == math.ceil(16 * math.sqrt(600 / 540))


@pytest.mark.parametrize(
    "allowed",
    [
        [0, 1, 7, 8, 9, 15, 16, 63, 64, 100, 4095],  # byte edges; a bitmap over 0..4095
        list(range(3, 2000, 3)),
        [5, 10**9],  # sparse: an IDSelectorBatch
    ],
)
def test_selector_accepts_exactly_the_allowed_ids(allowed: list[int]) -> None:
    import faiss

    from app.index.store import _selector

    arr = np.array(allowed, dtype=np.int64)
    selector = _selector(arr)
    dense = arr[-1] < 10**6
    assert isinstance(selector, faiss.IDSelectorBitmap if dense else faiss.IDSelectorBatch)
    probe = np.concatenate([np.arange(-9, min(int(arr[-1]), 5000) + 100), arr, arr + 1, [-1]])
    accepted = {int(i) for i in probe if selector.is_member(int(i))}
    assert accepted == set(allowed) & set(probe.tolist())


def test_large_filters_on_hnsw_return_only_live_allowed_ids() -> None:
    """Approximate path with the bitmap: ids above the largest allowed id, tombstones of
    allowed ids and ids unknown to the index are never returned."""
    index, ids, x = _starved("hnsw", 600, exact_filter_max=0)  # ids 3, 6, ..., 1800
    index.hnsw_ef_search = 64
    allowed = ids[: ids.size // 2]  # every id above 900 is rejected
    gone = allowed[::10]
    assert index.remove(gone) == gone.size and index._deleted  # tombstones, not compacted
    live_allowed = set(np.setdiff1d(allowed, gone).tolist())
    given = np.concatenate([allowed, [1, 2, 10**7, -4]])  # unknown ids in the filter too
    for row in [*range(0, 600, 37), *np.flatnonzero(np.isin(ids, gone))[:10].tolist()]:
        hits = index.search(x[row], 10, given)  # vectors of allowed, deleted and other items
        assert len(hits) == 10 and {h.id for h in hits} <= live_allowed


def test_idset_large_lookups_match_small_ones_after_changes() -> None:
    """``present`` answers large look-ups from a membership mask: same result as the sorted
    path, also for negative, repeated and out-of-range ids, and after ``add``/``remove``."""
    rng = np.random.default_rng(4)
    s = IdSet(rng.choice(5000, size=3000, replace=False))
    for round_ in range(3):
        members = s.array().copy()
        wanted = rng.integers(-50, 6500, size=4000)
        want = np.intersect1d(wanted, members)
        assert s.present(wanted).tolist() == want.tolist()  # mask path
        assert s.present(wanted[:5]).tolist() == np.intersect1d(wanted[:5], members).tolist()
        assert s.present(wanted.tolist()).dtype == np.int64
        new = np.arange(5000, 5300) + 400 * round_  # new ids, above the old ones
        s.add(new)  # each change drops the mask built by the look-ups above
        assert s.present(new).tolist() == new.tolist()
        s.remove(members[::7])
        assert not s.present(members[::7]).size
    sparse = IdSet([3, 10**12])  # no mask: sorted path
    assert sparse.present([10**12, 3, 3, 4]).tolist() == [3, 10**12]


def test_hnsw_searches_skip_every_tombstone_as_removals_accumulate() -> None:
    """The tombstone selector is built once per change of the tombstones and reused by later
    searches: each removal (and a compaction, and a re-add) must be seen by the next search."""
    x, ids = _unit(400, seed=3), np.arange(1, 401, dtype=np.int64)
    index = VectorIndex(16, "hnsw", hnsw_ef_search=64)
    index.build(ids, x)
    removed: set[int] = set()
    for batch in (range(1, 40), range(40, 120), range(300, 330)):
        index.remove(list(batch))
        removed.update(batch)
        for probe in (0, 45, 310, 399):
            hits = [h.id for h in index.search(x[probe], 50)]
            assert not removed & set(hits), sorted(removed & set(hits))[:5]
            assert len(hits) == 50
        live = ids[~np.isin(ids, list(removed))]
        truth = _brute(x[399], live, x[live - 1], 10)
        assert [h.id for h in index.search(x[399], 10)] == truth
    index.add([5], x[4:5])  # a removed id comes back (compaction first)
    assert index.search(x[4], 1)[0].id == 5
    index.remove([5])
    assert 5 not in [h.id for h in index.search(x[4], 50)]
