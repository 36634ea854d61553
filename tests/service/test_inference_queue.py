"""Dynamic batching in the service: concurrent uploads and searches share forward passes and
get the results of one at a time; a full queue answers 503 with a message and Retry-After and
leaves nothing behind; the queue stops with the app."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from app.api.main import create_app
from app.core.config import Settings
from app.db.models import Embedding
from app.db.session import session_scope
from app.ml.bundle.store import Bundle
from app.ml.images import load_image
from app.services import gallery
from app.services.context import vector_from_bytes

from .conftest import Keys, snapshot, upload
from .helpers import Counting, concurrently, jpeg, sketch_png


def wrapped(
    bundle: Bundle, gate: threading.Event | None = None
) -> tuple[Bundle, Counting, Counting]:
    embedder, translator = Counting(bundle.embedder, gate), Counting(bundle.translator)
    copy = Bundle(
        bundle.path,
        bundle.manifest,
        bundle.members,
        embedder,  # type: ignore[arg-type]
        translator,  # type: ignore[arg-type]
        bundle.generator,
    )
    return copy, embedder, translator


@pytest.fixture
def app_with(
    make_settings: Callable[..., Settings], bundle: Bundle, keys: Keys
) -> Iterator[Callable[..., tuple[TestClient, Counting, Counting]]]:
    opened: list[TestClient] = []

    def make(
        gate: threading.Event | None = None, **overrides: object
    ) -> tuple[TestClient, Counting, Counting]:
        copy, embedder, translator = wrapped(bundle, gate)
        client = TestClient(create_app(make_settings(**overrides), bundle=copy))
        client.__enter__()
        opened.append(client)
        return client, embedder, translator

    yield make
    for client in opened:
        client.__exit__(None, None, None)


@pytest.mark.parametrize("batched", [True, False], ids=["batched", "direct"])
def test_concurrent_uploads_and_searches_share_forward_passes(
    app_with: Callable[..., tuple[TestClient, Counting, Counting]],
    bundle: Bundle,
    keys: Keys,
    batched: bool,
) -> None:
    n = 6
    client, embedder, translator = app_with(
        INFERENCE_MAX_BATCH=16 if batched else 1, INFERENCE_MAX_WAIT_MS=1000
    )
    embedder.calls.clear()
    uploads = concurrently(
        [lambda s=s: upload(client, keys.operator, jpeg(s)) for s in range(n)]  # type: ignore[misc]
    )
    assert [r.status_code for r in uploads] == [201] * n  # type: ignore[attr-defined]
    upload_calls = list(embedder.calls)
    assert sum(c for _, c in upload_calls) == n
    embedder.calls.clear()

    def search(seed: int) -> Any:
        return client.post(
            "/api/v1/search",
            files={"sketch": ("s.png", sketch_png(seed), "image/png")},
            data={"top_k": n},
            headers=keys.investigator,
        )

    searches = concurrently([lambda s=s: search(s) for s in range(n)])  # type: ignore[misc]
    assert [r.status_code for r in searches] == [200] * n, [r.text for r in searches]
    search_calls = list(embedder.calls)
    assert all(m == "photo" for m, _ in search_calls)  # translated sketches embed as photos
    if batched:
        # Fewer forward passes than requests.
        assert len(upload_calls) < n, upload_calls
        assert len(search_calls) < n, search_calls
        assert len(translator.calls) < n, translator.calls
    else:  # the direct path: one call per request, as before batching
        assert len(upload_calls) == n and len(search_calls) == n and len(translator.calls) == n

    # The same vectors and rankings as one image at a time.
    ctx = client.app.state.ctx  # type: ignore[attr-defined]
    ids = [int(r.json()["id"]) for r in uploads]  # type: ignore[attr-defined]
    with session_scope(ctx.sessions) as session:
        stored = {
            int(e.item_id): vector_from_bytes(e.vector, ctx.dim)
            for e in session.query(Embedding).all()
        }
    for seed, item_id in enumerate(ids):
        alone = bundle.embedder.embed([load_image(jpeg(seed))], modality="photo")[0]
        np.testing.assert_allclose(stored[item_id], alone, rtol=0, atol=1e-5)
    assert bundle.translator is not None
    gallery_ids = np.asarray(ids)
    gallery_vectors = np.stack([stored[i] for i in ids])
    for seed, r in enumerate(searches):
        photo = bundle.translator.translate(load_image(sketch_png(seed)))
        query = bundle.embedder.embed([photo], modality="photo")[0]
        scores = gallery_vectors @ query
        order = np.argsort(-scores, kind="stable")
        got = [(h["gallery_id"], h["score"]) for h in r.json()["results"]]
        assert [g for g, _ in got] == gallery_ids[order].tolist()
        np.testing.assert_allclose([s for _, s in got], scores[order], atol=1e-4)


def test_sketch_searches_embed_as_sketches(
    app_with: Callable[..., tuple[TestClient, Counting, Counting]], keys: Keys
) -> None:
    client, embedder, _ = app_with(INFERENCE_MAX_BATCH=16, INFERENCE_MAX_WAIT_MS=200)
    assert upload(client, keys.operator, jpeg(1)).status_code == 201  # type: ignore[attr-defined]
    embedder.calls.clear()
    embedder.kinds.clear()

    def search(seed: int, translate: bool) -> Any:
        return client.post(
            "/api/v1/search",
            files={"sketch": ("s.png", sketch_png(seed), "image/png")},
            data={"translate": str(translate).lower()},
            headers=keys.investigator,
        )

    out = concurrently([lambda s=s: search(s, s % 2 == 0) for s in range(4)])  # type: ignore[misc]
    assert [r.status_code for r in out] == [200] * 4
    # Two untranslated sketches embedded as sketches, two translations as photos.
    assert sorted(embedder.kinds) == ["photo", "photo", "sketch", "sketch"], embedder.kinds


def test_a_full_queue_answers_503_and_leaves_nothing_behind(
    app_with: Callable[..., tuple[TestClient, Counting, Counting]],
    keys: Keys,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(gallery, "BATCH_QUEUE_WAIT_S", 0.05)
    gate = threading.Event()
    client, embedder, _ = app_with(
        gate, INFERENCE_MAX_BATCH=2, INFERENCE_MAX_WAIT_MS=1, INFERENCE_QUEUE_SIZE=1
    )
    ctx = client.app.state.ctx  # type: ignore[attr-defined]
    statuses: dict[str, int] = {}

    def send(name: str, seed: int) -> None:
        statuses[name] = upload(client, keys.operator, jpeg(seed)).status_code  # type: ignore[attr-defined]

    first = threading.Thread(target=send, args=("first", 1))
    first.start()
    assert embedder.entered.wait(30)  # the model is busy with the first upload
    second = threading.Thread(target=send, args=("second", 2))
    second.start()
    deadline = time.monotonic() + 30
    while ctx.inference.describe()["queued"] < 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert ctx.inference.describe()["queued"] == 1  # the second waits: the queue is full
    before = snapshot(client)
    try:
        r = upload(client, keys.operator, jpeg(3))
        assert r.status_code == 503, r.text  # type: ignore[attr-defined]
        assert "busy" in r.json()["detail"]  # type: ignore[attr-defined]
        assert int(r.headers["Retry-After"]) >= 1  # type: ignore[attr-defined]

        r = client.post(
            "/api/v1/search",
            files={"sketch": ("s.png", sketch_png(1), "image/png")},
            headers=keys.investigator,
        )
        assert r.status_code == 503 and "busy" in r.json()["detail"], r.text
        assert int(r.headers["Retry-After"]) >= 1

        r = client.post(
            "/api/v1/gallery/batch",
            files=[("images", (f"{s}.jpg", jpeg(s), "image/jpeg")) for s in (4, 5)],
            headers=keys.operator,
        )
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["failed"] == 2 and body["created"] == 0
        assert [x["http_status"] for x in body["results"]] == [503, 503]
        assert all("not stored" in x["error"] and "busy" in x["error"] for x in body["results"])
        assert int(r.headers["Retry-After"]) >= 1
        assert snapshot(client) == before  # no row, blob, index entry or search file
    finally:
        gate.set()
        first.join(60)
        second.join(60)
    assert statuses == {"first": 201, "second": 201}  # accepted work is never lost
    assert snapshot(client)["items"] == 2
    # Sent again once the queue has room, the refused ones go in.
    assert upload(client, keys.operator, jpeg(3)).status_code == 201  # type: ignore[attr-defined]
    assert ctx.inference.describe()["refused"] >= 3


def test_the_queue_is_reported_and_stops_with_the_app(
    make_settings: Callable[..., Settings], bundle: Bundle, keys: Keys
) -> None:
    settings = make_settings(INFERENCE_MAX_BATCH=8, INFERENCE_MAX_WAIT_MS=3)
    with TestClient(create_app(settings, bundle=bundle)) as client:
        info = client.get("/api/v1/model", headers=keys.investigator).json()["batching"]
        assert info["enabled"] is True and info["max_batch"] == 8 and info["max_wait_ms"] == 3
        queue = client.app.state.ctx.inference  # type: ignore[attr-defined]
        assert queue._thread is not None and queue._thread.is_alive()
    assert queue.closed
    assert not queue._thread.is_alive()
