"""Several sketches per search, relevance feedback (confirmed / rejected ids, marks, refine).

Each ranking is checked against a brute-force one computed here from the model's own
embeddings and :func:`app.ml.retrieval.feedback.build_query`, so a service that ignored a
sketch or the feedback, or fused them another way, fails.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection
from datetime import timedelta
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from sqlalchemy import update

from app.db.models import Search
from app.db.types import utcnow
from app.ml.bundle.store import Bundle
from app.ml.images import load_image
from app.ml.retrieval.feedback import FeedbackWeights, build_query
from app.services.search import MAX_SKETCHES, purge_searches

from .conftest import Keys, snapshot, upload
from .helpers import encode, jpeg, person_image, png

Items = dict[int, np.ndarray]  # gallery id -> embedding


def drawing(seed: int) -> bytes:
    """A "sketch" file: the tiny test model embeds these grey pictures far enough apart for
    the fusion and the feedback to change the rankings (its line drawings all embed alike)."""
    return png(100 + seed)


def _fill(client: TestClient, keys: Keys, bundle: Bundle, n: int = 12) -> Items:
    ids = []
    for seed in range(n):
        r: Any = upload(client, keys.operator, jpeg(seed), camera_id=f"c{seed % 3}")
        assert r.status_code == 201, r.text
        ids.append(r.json()["id"])
    vectors = bundle.embedder.embed([load_image(jpeg(s)) for s in range(n)])
    return dict(zip(ids, vectors, strict=True))


def _sketch_vectors(bundle: Bundle, seeds: list[int]) -> np.ndarray:
    return bundle.embedder.embed([load_image(drawing(s)) for s in seeds], modality="sketch")


def _order(query: np.ndarray, items: Items, leave_out: Collection[int] = ()) -> list[int]:
    ids = [i for i in items if i not in leave_out]
    scores = np.array([items[i] @ query for i in ids])
    return [ids[k] for k in np.argsort(-scores, kind="stable")]


def _search(
    client: TestClient,
    headers: dict[str, str],
    seeds: list[int],
    expect: int = 200,
    **form: Any,
) -> dict[str, Any]:
    files: list[tuple[str, Any]] = [
        ("sketch", (f"s{s}.png", drawing(s), "image/png")) for s in seeds
    ]
    data = [(k, str(v)) for k, vs in form.items() for v in (vs if isinstance(vs, list) else [vs])]
    files += [(k, (None, v)) for k, v in data]
    r = client.post("/api/v1/search", files=files, headers=headers)
    assert r.status_code == expect, r.text
    return dict(r.json())


def test_several_sketches_are_fused_by_their_mean_and_all_kept(
    client: TestClient, keys: Keys, bundle: Bundle
) -> None:
    items = _fill(client, keys, bundle)
    body = _search(client, keys.investigator, [0, 1, 3], top_k=12, translate="false")
    fused = build_query(_sketch_vectors(bundle, [0, 1, 3]))
    assert [r["gallery_id"] for r in body["results"]] == _order(fused, items)
    np.testing.assert_allclose(
        [r["score"] for r in body["results"]],
        [items[r["gallery_id"]] @ fused for r in body["results"]],
        atol=1e-4,
    )
    alone = [_order(_sketch_vectors(bundle, [s])[0], items) for s in (0, 1, 3)]
    assert all(order != _order(fused, items) for order in alone), "fusion must matter here"

    search_id = body["search_id"]
    assert body["sketch_url"] == f"/api/v1/searches/{search_id}/sketch"
    assert body["sketch_urls"] == [
        f"/api/v1/searches/{search_id}/sketch",
        f"/api/v1/searches/{search_id}/sketch?index=1",
        f"/api/v1/searches/{search_id}/sketch?index=2",
    ]
    record = client.get(f"/api/v1/searches/{search_id}", headers=keys.investigator).json()
    assert [s["sha256"] for s in record["sketches"]] == [
        hashlib.sha256(drawing(s)).hexdigest() for s in (0, 1, 3)
    ]
    assert record["sketch_sha256"] == record["sketches"][0]["sha256"]  # as before: the first
    for index, seed in enumerate((0, 1, 3)):
        got = client.get(record["sketches"][index]["url"], headers=keys.investigator)
        assert got.status_code == 200 and got.content == drawing(seed)
    missing = client.get(
        f"/api/v1/searches/{search_id}/sketch", params={"index": 3}, headers=keys.investigator
    )
    assert missing.status_code == 404 and "has 3 sketches" in missing.json()["detail"]
    assert record["parameters"]["sketches_from_refine"] is False


def test_each_sketch_is_translated_and_its_translation_kept(
    client: TestClient, keys: Keys, bundle: Bundle
) -> None:
    items = _fill(client, keys, bundle, 6)
    body = _search(client, keys.investigator, [4, 5], top_k=6, translate="true")
    assert bundle.translator is not None
    photos = bundle.translator.translate_batch([load_image(drawing(s)) for s in (4, 5)])
    fused = build_query(bundle.embedder.embed(photos, modality="photo"))
    assert [r["gallery_id"] for r in body["results"]] == _order(fused, items)
    assert body["translated_image_url"] == body["translated_image_urls"][0]
    assert len(body["translated_image_urls"]) == 2
    second = client.get(body["translated_image_urls"][1], headers=keys.investigator)
    assert second.status_code == 200 and second.headers["content-type"] == "image/png"
    assert load_image(second.content).size == (32, 64)


def test_too_many_or_a_bad_sketch_is_refused_and_leaves_nothing(
    client: TestClient, keys: Keys, bundle: Bundle
) -> None:
    _fill(client, keys, bundle, 3)
    before = snapshot(client)
    too_many = _search(client, keys.investigator, list(range(MAX_SKETCHES + 1)), expect=422)
    assert f"at most {MAX_SKETCHES} sketches" in too_many["detail"]
    assert too_many["errors"][0]["field"] == "sketch"
    files = [
        ("sketch", ("good.png", drawing(1), "image/png")),
        ("sketch", ("bad.png", b"not an image at all" * 10, "image/png")),
    ]
    r = client.post("/api/v1/search", files=files, headers=keys.investigator)
    assert r.status_code == 400, r.text
    assert r.json()["detail"].startswith("sketch 2 (bad.png): ")
    none = client.post("/api/v1/search", data={"top_k": "5"}, headers=keys.investigator)
    assert none.status_code == 422 and "at least one sketch" in none.json()["detail"]
    assert snapshot(client) == before


def test_feedback_moves_the_query_and_judged_items_are_left_out(
    client: TestClient, keys: Keys, bundle: Bundle
) -> None:
    items = _fill(client, keys, bundle)
    plain = _search(client, keys.investigator, [1], top_k=12, translate="false")
    ranked = [r["gallery_id"] for r in plain["results"]]
    yes, no = ranked[5], ranked[0]
    body = _search(
        client,
        keys.investigator,
        [1],
        top_k=12,
        translate="false",
        confirmed_id=yes,
        rejected_id=no,
    )
    query = build_query(
        _sketch_vectors(bundle, [1]), items[yes][None], items[no][None], FeedbackWeights()
    )
    want = _order(query, items, leave_out={yes, no})
    assert [r["gallery_id"] for r in body["results"]] == want
    assert want[:3] != [i for i in ranked if i not in (yes, no)][:3], "feedback must matter"
    assert body["feedback"] == {"confirmed_ids": [yes], "rejected_ids": [no]}
    record = client.get(f"/api/v1/searches/{body['search_id']}", headers=keys.investigator)
    params = record.json()["parameters"]
    assert params["confirmed_ids"] == [yes] and params["rejected_ids"] == [no]
    assert params["feedback_weights"] == FeedbackWeights().as_json()


def _rocchio(sketch: np.ndarray, rejected: np.ndarray, weight: float) -> np.ndarray:
    """Rocchio's query for one sketch and one rejected crop, written out here (not
    build_query): normalise(s / |s| - weight * r / |r|)."""
    q = sketch / np.linalg.norm(sketch) - weight * rejected / np.linalg.norm(rejected)
    return np.asarray(q / np.linalg.norm(q))


def test_a_rejected_crop_and_its_near_twin_are_pushed_down(
    client: TestClient, keys: Keys, bundle: Bundle
) -> None:
    """An investigator rejects the top crop: it leaves the list and a second crop of the same
    person (the same picture, slightly noisier) drops below crops of other people. The ranking
    and scores are checked against Rocchio's formula written out here, so a service that
    passes no rejected crops to the query builder (it would still leave the crop out of the
    list) fails on the order and on the scores."""
    items = _fill(client, keys, bundle)
    sketch = _sketch_vectors(bundle, [1])[0]
    top = _order(sketch, items)[0]
    seed = list(items).index(top)
    noisy = np.asarray(person_image(seed), np.int16)
    noisy += np.random.default_rng(7).integers(-3, 4, noisy.shape, dtype=np.int16)
    twin_bytes = encode(Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)), "PNG")
    r: Any = upload(client, keys.operator, twin_bytes, camera_id="c9")
    assert r.status_code == 201, r.text
    twin = int(r.json()["id"])
    items[twin] = bundle.embedder.embed([load_image(twin_bytes)])[0]
    assert float(items[twin] @ items[top]) > 0.95, "the twin must resemble the rejected crop"

    plain = [
        h["gallery_id"]
        for h in _search(client, keys.investigator, [1], top_k=13, translate="false")["results"]
    ]
    assert plain == _order(sketch, items)
    rest = [i for i in plain if i != top]  # the list were the rejection only left out
    body = _search(client, keys.investigator, [1], top_k=13, translate="false", rejected_id=top)
    query = _rocchio(sketch, items[top], FeedbackWeights().rejected)
    want = _order(query, items, leave_out={top})
    got = [h["gallery_id"] for h in body["results"]]
    assert got == want
    np.testing.assert_allclose(
        [h["score"] for h in body["results"]], [items[i] @ query for i in want], atol=1e-4
    )
    assert got.index(twin) > rest.index(twin), "the rejection must push the twin down"


def test_unknown_deleted_or_contradictory_feedback_is_refused(
    client: TestClient, keys: Keys, bundle: Bundle
) -> None:
    items = list(_fill(client, keys, bundle, 4))
    gone = items[0]
    assert client.delete(f"/api/v1/gallery/{gone}", headers=keys.operator).status_code == 204
    before = snapshot(client)
    for form, status, needle in (
        ({"confirmed_id": 999}, 404, "gallery item 999 does not exist"),
        ({"rejected_id": gone}, 404, f"gallery item {gone} was deleted at"),
        ({"confirmed_id": items[1], "rejected_id": items[1]}, 400, "both as confirmed"),
        ({"confirmed_id": "seven"}, 422, "confirmed_id"),
        ({"refine": "00000000-0000-0000-0000-000000000000"}, 404, "does not exist"),
        ({"rejected_id": list(range(1000, 1201))}, 422, "at most 200"),
    ):
        body = _search(client, keys.investigator, [1], expect=status, **form)
        assert needle in body["detail"], (form, body)
    assert snapshot(client) == before


def test_marks_are_kept_with_who_and_when(client: TestClient, keys: Keys, bundle: Bundle) -> None:
    items = list(_fill(client, keys, bundle, 5))
    body = _search(client, keys.investigator, [1], top_k=4)
    search_id = body["search_id"]
    shown = [r["gallery_id"] for r in body["results"]]
    not_shown = next(i for i in items if i not in shown)
    url = f"/api/v1/searches/{search_id}/marks"

    def mark(gallery_id: int, value: str, headers: dict[str, str] = keys.investigator) -> Any:
        return client.post(url, json={"gallery_id": gallery_id, "mark": value}, headers=headers)

    before = snapshot(client)
    for response, status, needle in (
        (mark(not_shown, "confirmed"), 400, "not among the results"),
        (mark(shown[0], "maybe"), 422, "mark"),
        (mark(shown[0], "confirmed", keys.investigator2), 404, "does not exist"),
        (mark(shown[0], "confirmed", keys.operator), 403, "role"),
    ):
        assert response.status_code == status, response.text
        assert needle in response.json()["detail"]
    assert snapshot(client) == before

    first = mark(shown[0], "confirmed")
    assert first.status_code == 201, first.text
    key_id = next(
        k["id"]
        for k in client.get("/api/v1/apikeys", headers=keys.admin).json()
        if k["name"] == "investigator"
    )
    assert first.json()["api_key_id"] == key_id and first.json()["mark"] == "confirmed"
    assert mark(shown[1], "rejected").status_code == 201
    assert mark(shown[0], "none").status_code == 201  # withdrawn: still on record
    assert mark(shown[2], "confirmed", keys.admin).status_code == 201

    record = client.get(f"/api/v1/searches/{search_id}", headers=keys.investigator).json()
    assert [(m["gallery_id"], m["mark"]) for m in record["marks"]] == [
        (shown[0], "confirmed"),
        (shown[1], "rejected"),
        (shown[0], "none"),
        (shown[2], "confirmed"),
    ]
    assert record["marks"][0]["created_at"] <= record["marks"][-1]["created_at"]
    assert {r["gallery_id"]: r["mark"] for r in record["results"]} == {
        shown[0]: None,
        shown[1]: "rejected",
        shown[2]: "confirmed",
        shown[3]: None,
    }
    assert client.delete(f"/api/v1/gallery/{shown[3]}", headers=keys.operator).status_code == 204
    deleted = mark(shown[3], "rejected")
    assert deleted.status_code == 404 and "was deleted" in deleted.json()["detail"]


def test_refine_reuses_the_sketches_and_accumulates_the_feedback(
    client: TestClient, keys: Keys, bundle: Bundle
) -> None:
    items = _fill(client, keys, bundle)
    first = _search(client, keys.investigator, [2, 3], top_k=6, translate="false")
    shown = [r["gallery_id"] for r in first["results"]]
    url = f"/api/v1/searches/{first['search_id']}/marks"
    for gallery_id, value in ((shown[3], "confirmed"), (shown[0], "rejected")):
        r = client.post(url, json={"gallery_id": gallery_id, "mark": value}, headers=keys.admin)
        assert r.status_code == 201, r.text

    # No sketch sent: the refined search's sketches and marks are used.
    second = _search(
        client, keys.investigator, [], top_k=12, translate="false", refine=first["search_id"]
    )
    sketches = _sketch_vectors(bundle, [2, 3])
    query = build_query(sketches, items[shown[3]][None], items[shown[0]][None])
    assert second["feedback"] == {"confirmed_ids": [shown[3]], "rejected_ids": [shown[0]]}
    assert second["refine"] == first["search_id"]
    assert [r["gallery_id"] for r in second["results"]] == _order(
        query, items, leave_out={shown[3], shown[0]}
    )
    record = client.get(f"/api/v1/searches/{second['search_id']}", headers=keys.investigator)
    assert [s["sha256"] for s in record.json()["sketches"]] == [
        hashlib.sha256(drawing(s)).hexdigest() for s in (2, 3)
    ]
    assert record.json()["parameters"]["sketches_from_refine"] is True

    # One more round: the first round's feedback carries over, plus what is sent now.
    extra = second["results"][0]["gallery_id"]
    third = _search(
        client,
        keys.investigator,
        [],
        top_k=3,
        translate="false",
        refine=second["search_id"],
        confirmed_id=extra,
    )
    assert third["feedback"] == {
        "confirmed_ids": sorted([shown[3], extra]),
        "rejected_ids": [shown[0]],
    }
    # Another investigator cannot refine (or see) this search.
    other = _search(client, keys.investigator2, [], expect=404, refine=second["search_id"])
    assert "does not exist" in other["detail"]


def test_marks_go_with_their_search_when_purged(
    client: TestClient, keys: Keys, bundle: Bundle
) -> None:
    _fill(client, keys, bundle, 3)
    body = _search(client, keys.investigator, [1], top_k=2)
    r = client.post(
        f"/api/v1/searches/{body['search_id']}/marks",
        json={"gallery_id": body["results"][0]["gallery_id"], "mark": "confirmed"},
        headers=keys.investigator,
    )
    assert r.status_code == 201 and snapshot(client)["marks"] == 1
    ctx = client.app.state.ctx  # type: ignore[attr-defined]
    with ctx.sessions() as session:
        session.execute(update(Search).values(created_at=utcnow() - timedelta(days=9)))
        session.commit()
        assert purge_searches(ctx.settings, session, 5).count == 1
    after = snapshot(client)
    assert after["searches"] == 0 and after["marks"] == 0


@pytest.mark.parametrize("index", ["-1", "5", "x"])
def test_bad_sketch_index_is_422(
    client: TestClient, keys: Keys, bundle: Bundle, index: str
) -> None:
    _fill(client, keys, bundle, 1)
    body = _search(client, keys.investigator, [1])
    r = client.get(
        f"/api/v1/searches/{body['search_id']}/sketch",
        params={"index": index},
        headers=keys.investigator,
    )
    assert r.status_code == 422 and "index" in r.json()["detail"]
