"""How a search embeds its sketch: the ``view`` (sketch, translated, fused), its default from
the bundle's manifest, and its agreement with the older ``translate`` switch."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from app.api.main import create_app
from app.core.config import Settings
from app.ml.bundle.store import Bundle, load_bundle, update_manifest
from app.ml.images import load_image

from .conftest import Keys, upload
from .helpers import Counting, jpeg, sketch_png


def _fill(client: TestClient, keys: Keys, n: int = 12) -> list[int]:
    ids = []
    for seed in range(n):
        r = upload(client, keys.operator, jpeg(seed), camera_id="c1")
        assert r.status_code == 201
        ids.append(r.json()["id"])
    return ids


def _post(client: TestClient, keys: Keys, **form: Any) -> Any:
    return client.post(
        "/api/v1/search",
        files={"sketch": ("s.png", sketch_png(1), "image/png")},
        data={"top_k": 12, **form},
        headers=keys.investigator,
    )


def _query(bundle: Bundle, view: str) -> np.ndarray:
    """The query vector, computed here without app.ml.infer.query_views (the fused one with the
    bundle's translation weight)."""
    sketch = load_image(sketch_png(1))
    drawn = bundle.embedder.embed([sketch], modality="sketch")[0]
    if view == "sketch":
        return drawn
    assert bundle.translator is not None
    photo = bundle.embedder.embed([bundle.translator.translate(sketch)], modality="photo")[0]
    if view == "translated":
        return photo
    w = bundle.manifest.translation_weight
    total = (1 - w) * drawn + w * photo
    return total / np.linalg.norm(total)


def _ranking(bundle: Bundle, ids: list[int], view: str) -> tuple[list[int], np.ndarray]:
    g = bundle.embedder.embed([load_image(jpeg(seed)) for seed in range(len(ids))])
    scores = g @ _query(bundle, view)
    order = np.argsort(-scores, kind="stable")
    return [ids[k] for k in order], scores[order]


@pytest.mark.parametrize("view", ["sketch", "translated", "fused"])
def test_each_view_ranks_by_its_own_query(
    client: TestClient, keys: Keys, bundle: Bundle, view: str
) -> None:
    ids = _fill(client, keys)
    r = _post(client, keys, view=view)
    assert r.status_code == 200, r.text
    body = r.json()
    expected, scores = _ranking(bundle, ids, view)
    assert [h["gallery_id"] for h in body["results"]] == expected
    np.testing.assert_allclose([h["score"] for h in body["results"]], scores, atol=1e-4)
    assert body["view"] == view
    assert body["translated"] is (view != "sketch")
    assert (body["timings_ms"]["translate"] > 0) is (view != "sketch")
    assert (body["translated_image_url"] is None) is (view == "sketch")
    record = client.get(f"/api/v1/searches/{body['search_id']}", headers=keys.investigator)
    assert record.json()["parameters"]["view"] == view  # what ran
    assert record.json()["parameters"]["view_requested"] == view  # what was asked


def test_the_three_views_are_different_queries(bundle: Bundle) -> None:
    # Guards the test above: were two views the same vector it could not tell them apart.
    q = {v: _query(bundle, v) for v in ("sketch", "translated", "fused")}
    assert min(float(np.abs(q[a] - q[b]).max()) for a in q for b in q if a < b) > 1e-3


@pytest.fixture(scope="module")
def fused_bundle(bundle_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Bundle:
    folder = tmp_path_factory.mktemp("bundles") / "fused"
    shutil.copytree(bundle_dir, folder)
    update_manifest(folder, query_view="fused", translation_weight=0.3)
    return load_bundle(folder)


def test_the_bundles_view_is_the_default_and_translate_keeps_it(
    make_settings: Callable[..., Settings], fused_bundle: Bundle, keys: Keys
) -> None:
    with TestClient(create_app(make_settings(), bundle=fused_bundle)) as client:
        ids = _fill(client, keys, 8)
        model = client.get("/api/v1/model", headers=keys.investigator).json()
        assert model["query_view"] == "fused" and model["translation_weight"] == 0.3
        for form, view in (
            ({}, "fused"),
            ({"translate": "true"}, "fused"),
            (
                {"translate": "false"},
                "sketch",
            ),
            ({"view": "translated"}, "translated"),
        ):
            body = _post(client, keys, **form).json()
            assert body["view"] == view, form
            assert [h["gallery_id"] for h in body["results"]] == _ranking(fused_bundle, ids, view)[
                0
            ]


@pytest.mark.parametrize(("weight", "like"), [(0.001, "sketch"), (0.999, "translated")])
def test_the_translation_weight_moves_the_fused_ranking_between_the_two_views(
    make_settings: Callable[..., Settings],
    bundle_dir: Path,
    tmp_path: Path,
    keys: Keys,
    weight: float,
    like: str,
) -> None:
    """The bundle's translation weight is what a fused search follows: near 0 it ranks as
    the sketch alone, near 1 as its translation alone (the service's own other views are the
    oracle), where equal weights rank otherwise than either, so a server that fused with
    equal weights, or with the weight reversed, fails. A watchlist made from the search
    scores with the search's own query (the weight too)."""
    folder = tmp_path / "weighted"
    shutil.copytree(bundle_dir, folder)
    update_manifest(folder, query_view="fused", translation_weight=weight)
    weighted = load_bundle(folder)
    with TestClient(create_app(make_settings(), bundle=weighted)) as client:
        ids = _fill(client, keys)
        fused = _post(client, keys, rerank="false").json()
        alone = _post(client, keys, view=like, rerank="false").json()
        # A watchlist made from the fused search keeps its query, weight included.
        r = client.post(
            "/api/v1/watchlists",
            json={"search_id": fused["search_id"], "min_score": 0.0},
            headers=keys.investigator,
        )
        assert r.status_code == 201, r.text
        best_now = r.json()["best_now"]
    assert [b["gallery_id"] for b in best_now] == [h["gallery_id"] for h in fused["results"][:5]]
    np.testing.assert_allclose(
        [b["score"] for b in best_now], [h["score"] for h in fused["results"][:5]], atol=1e-4
    )
    assert fused["view"] == "fused" and alone["view"] == like
    assert [h["gallery_id"] for h in fused["results"]] == [
        h["gallery_id"] for h in alone["results"]
    ]
    np.testing.assert_allclose(
        [h["score"] for h in fused["results"]], [h["score"] for h in alone["results"]], atol=5e-3
    )
    # Guard: with equal weights the fused ranking is neither view's.
    g = weighted.embedder.embed([load_image(jpeg(seed)) for seed in range(len(ids))])
    drawn, photo = _query(weighted, "sketch"), _query(weighted, "translated")
    even = (drawn + photo) / np.linalg.norm(drawn + photo)
    orders = [list(np.argsort(-(g @ q), kind="stable")) for q in (even, drawn, photo)]
    assert orders[0] != orders[1] and orders[0] != orders[2]


def test_old_bundles_default_to_translated_when_they_can(
    client: TestClient, keys: Keys, bundle: Bundle
) -> None:
    assert bundle.manifest.query_view is None
    _fill(client, keys, 3)
    assert _post(client, keys).json()["view"] == "translated"


@pytest.mark.parametrize(
    ("form", "says"),
    [
        ({"view": "fused", "translate": "false"}, "contradicts view=fused"),
        ({"view": "sketch", "translate": "true"}, "contradicts view=sketch"),
        ({"view": "photo"}, "view"),
    ],
)
def test_contradicting_or_unknown_views_are_refused_and_nothing_is_recorded(
    client: TestClient, keys: Keys, form: dict[str, str], says: str
) -> None:
    _fill(client, keys, 2)
    r = _post(client, keys, **form)
    assert r.status_code == 422
    assert says in r.text
    history = client.get("/api/v1/searches", headers=keys.investigator)
    assert history.status_code == 200 and history.json()["items"] == []


def test_a_view_needing_a_translator_falls_back_with_a_note(
    make_settings: Callable[..., Settings], bundle_dir_no_translator: Path, keys: Keys
) -> None:
    plain = load_bundle(bundle_dir_no_translator)
    with TestClient(create_app(make_settings(), bundle=plain)) as client:
        _fill(client, keys, 3)
        body = _post(client, keys, view="fused").json()
        assert body["view"] == "sketch" and body["translated"] is False
        assert any("view fused was requested" in n for n in body["notes"])
        assert client.get("/api/v1/model", headers=keys.investigator).json()["query_view"] == (
            "sketch"
        )


def test_a_fused_search_is_one_translation_and_one_embedding_pass(
    make_settings: Callable[..., Settings], fused_bundle: Bundle, keys: Keys
) -> None:
    """The sketch and its translation go through the members together (issue 21), batching
    on or off, with the query of the per-view path."""
    embedder, translator = Counting(fused_bundle.embedder), Counting(fused_bundle.translator)
    counted = Bundle(
        fused_bundle.path,
        fused_bundle.manifest,
        fused_bundle.members,
        embedder,  # type: ignore[arg-type]
        translator,  # type: ignore[arg-type]
        fused_bundle.generator,
    )
    ids: list[int] = []
    for max_batch in (16, 1):  # batching on, then off (the same data folder and database)
        settings = make_settings(INFERENCE_MAX_BATCH=max_batch, INFERENCE_MAX_WAIT_MS=2)
        with TestClient(create_app(settings, bundle=counted)) as client:
            ids = ids or _fill(client, keys, 6)
            embedder.calls.clear()
            translator.calls.clear()
            body = _post(client, keys).json()
        assert body["view"] == "fused"
        assert translator.calls == [("translate", 1)]
        assert embedder.calls == [("mixed", 2)], embedder.calls
        expected, scores = _ranking(fused_bundle, ids, "fused")
        assert [h["gallery_id"] for h in body["results"]] == expected
        np.testing.assert_allclose([h["score"] for h in body["results"]], scores, atol=1e-4)


def test_a_centred_bundle_centres_the_sketch_as_a_sketch_and_the_crops_as_photos(
    make_settings: Callable[..., Settings],
    bundle_dir: Path,
    keys: Keys,
    tmp_path: Path,
) -> None:
    """Modality centering in the service: the query loses the sketch mean and every crop
    the photo mean (computed here from the members' unit embeddings, without combine_units);
    /model says the bundle is centred."""
    from app.ml.bundle.manifest import Centering

    folder = tmp_path / "centred"
    shutil.copytree(bundle_dir, folder)
    rng = np.random.default_rng(3)
    photo, sketch = rng.normal(0, 0.15, (2, 64)).round(6)
    centering = Centering(
        photo=list(photo), sketch=list(sketch), source="test", identities=1, photos=1, sketches=1
    )
    update_manifest(folder, query_view="sketch", centering=centering)
    centred = load_bundle(folder)
    with TestClient(create_app(make_settings(), bundle=centred)) as client:
        ids = _fill(client, keys, 8)
        assert client.get("/api/v1/model", headers=keys.investigator).json()["centering"] is True
        body = _post(client, keys).json()
    unit = centred.embedder.embed_units
    q = unit([load_image(sketch_png(1))], modality="sketch")[0] - sketch
    g = unit([load_image(jpeg(seed)) for seed in range(8)], modality="photo") - photo
    scores = (g / np.linalg.norm(g, axis=1, keepdims=True)) @ (q / np.linalg.norm(q))
    order = np.argsort(-scores, kind="stable")
    assert [h["gallery_id"] for h in body["results"]] == [ids[k] for k in order]
    np.testing.assert_allclose([h["score"] for h in body["results"]], scores[order], atol=1e-4)
