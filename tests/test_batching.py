"""Dynamic batching (app.ml.infer.batching): concurrent requests share forward passes, get the same
embeddings as one at a time (sketches and photos in one pass, each preprocessed as its kind),
never share a pass with another model, wait at most
the configured time for company, and a full queue refuses with a clear error, losing nothing.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from service.helpers import Counting, concurrently

from app.ml.infer.batching import InferenceQueue, QueueClosedError, QueueFullError
from app.ml.infer.torch_embedder import Embedder
from app.ml.models.resnet_cifar import MemberSpec, build_member

torch.set_num_threads(1)

SIZE = (64, 32)


def picture(seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, size=(8, 4, 3), dtype=np.uint8)
    return Image.fromarray(coarse, "RGB").resize((32, 64), Image.Resampling.BILINEAR)


def make_embedder(seed: int) -> Embedder:
    torch.manual_seed(seed)
    spec = MemberSpec(arch="resnet8", num_classes=5, fc_dim=16, input_size=SIZE, bn_neck=True)
    return Embedder([build_member(spec).eval()], SIZE)


@pytest.fixture(scope="module")
def embedder() -> Embedder:
    return make_embedder(0)


def test_concurrent_requests_share_forward_passes_and_match_one_at_a_time(
    embedder: Embedder,
) -> None:
    counting = Counting(embedder)
    queue = InferenceQueue(max_batch=16, max_wait_ms=500, max_queued=64)
    n = 8
    images = [picture(i) for i in range(n)]
    try:
        out = concurrently(
            [
                lambda i=i: queue.embed(counting, [images[i]], modality="photo")  # type: ignore[misc]
                for i in range(n)
            ]
        )
    finally:
        queue.close()
    assert all(isinstance(o, np.ndarray) for o in out), out
    # Fewer forward passes than requests: batching happened (all 8 arrive within 500 ms).
    assert len(counting.calls) < n, counting.calls
    assert sum(c for _, c in counting.calls) == n
    assert max(c for _, c in counting.calls) > 1
    for i in range(n):
        alone = embedder.embed([images[i]], modality="photo")
        assert out[i].shape == (1, embedder.dim)
        np.testing.assert_allclose(out[i], alone, rtol=0, atol=1e-5)
    assert queue.describe()["passes"] == len(counting.calls)


def test_sketches_and_photos_share_a_pass_each_preprocessed_as_its_kind(
    embedder: Embedder,
) -> None:
    counting = Counting(embedder)
    queue = InferenceQueue(max_batch=16, max_wait_ms=300, max_queued=64)
    n = 8
    images = [picture(100 + i) for i in range(n)]
    modality = ["sketch" if i % 2 else "photo" for i in range(n)]
    try:
        out = concurrently(
            [
                lambda i=i: queue.embed(counting, [images[i]], modality=modality[i])  # type: ignore[misc]
                for i in range(n)
            ]
        )
    finally:
        queue.close()
    # Fewer passes than requests, and sketches rode in the same pass as photos.
    assert len(counting.calls) < n
    assert "mixed" in {m for m, _ in counting.calls}, counting.calls
    assert sorted(counting.kinds) == sorted(modality)
    for i in range(n):
        alone = embedder.embed([images[i]], modality=modality[i])  # type: ignore[arg-type]
        np.testing.assert_allclose(out[i], alone, rtol=0, atol=1e-5)
    # The check means something: grey sketches embed differently from the colour photo.
    photo = embedder.embed([images[1]], modality="photo")
    assert not np.allclose(out[1], photo, atol=1e-3)


def test_two_models_never_share_a_pass(embedder: Embedder) -> None:
    """A bundle swapped in while requests wait gets batches of its own."""
    old, new = Counting(embedder), Counting(make_embedder(1))
    queue = InferenceQueue(max_batch=16, max_wait_ms=300, max_queued=64)
    images = [picture(200 + i) for i in range(6)]
    models = [old, new] * 3
    try:
        out = concurrently(
            [
                lambda i=i: queue.embed(models[i], [images[i]])  # type: ignore[misc]
                for i in range(6)
            ]
        )
    finally:
        queue.close()
    assert sum(c for _, c in old.calls) == 3 and sum(c for _, c in new.calls) == 3
    for i in range(6):
        np.testing.assert_allclose(out[i], models[i].inner.embed([images[i]]), atol=1e-5)


def test_a_lone_request_waits_at_most_max_wait() -> None:
    queue = InferenceQueue(max_batch=64, max_wait_ms=50, max_queued=64)
    try:
        start = time.perf_counter()
        assert queue.submit("k", lambda xs: [x * 2 for x in xs], [1, 2]) == [2, 4]
        elapsed = time.perf_counter() - start
    finally:
        queue.close()
    assert 0.045 <= elapsed < 1.0, elapsed  # waited for company, then went alone


def test_a_late_request_does_not_hold_an_earlier_one() -> None:
    """A slow client's request (arriving late) never delays the one before it beyond the wait,
    and a request of another kind waits at most for the head's deadline."""
    queue = InferenceQueue(max_batch=64, max_wait_ms=100, max_queued=64)
    done: dict[str, float] = {}
    start = time.perf_counter()

    def early() -> None:
        queue.submit("a", lambda xs: xs, [1])
        done["early"] = time.perf_counter() - start

    def other_kind() -> None:
        time.sleep(0.02)
        queue.submit("b", lambda xs: xs, [1])
        done["other"] = time.perf_counter() - start

    def late() -> None:
        time.sleep(1.5)
        queue.submit("a", lambda xs: xs, [2])
        done["late"] = time.perf_counter() - start

    threads = [threading.Thread(target=f) for f in (early, other_kind, late)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
    finally:
        queue.close()
    # 100 ms wait; the slack covers a loaded machine, far below the late one's 1.5 s.
    assert done["early"] < 0.8, done
    assert done["other"] < 0.9, done
    assert done["late"] >= 1.5


def test_a_full_queue_refuses_with_a_message_and_loses_nothing() -> None:
    gate = threading.Event()
    running = threading.Event()
    calls: list[list[int]] = []

    def run(xs: list[int]) -> list[int]:
        calls.append(list(xs))
        running.set()
        assert gate.wait(30)
        return [x * 10 for x in xs]

    queue = InferenceQueue(max_batch=4, max_wait_ms=1, max_queued=3)
    results: dict[int, Any] = {}

    def client(x: int) -> None:
        try:
            results[x] = queue.submit("k", run, [x])
        except Exception as exc:
            results[x] = exc

    first = threading.Thread(target=client, args=(0,))
    first.start()
    assert running.wait(10)  # the worker is busy with item 0
    waiting = [threading.Thread(target=client, args=(x,)) for x in (1, 2, 3)]
    for t in waiting:
        t.start()
    deadline = time.monotonic() + 10
    while queue.describe()["queued"] < 3 and time.monotonic() < deadline:
        time.sleep(0.005)
    assert queue.describe()["queued"] == 3
    with pytest.raises(QueueFullError) as refused:
        queue.submit("k", run, [4])
    assert "busy" in str(refused.value) and "3 images are waiting" in str(refused.value)
    assert refused.value.retry_after >= 1
    # A caller allowed to wait gets in once room is made.
    late = threading.Thread(
        target=lambda: results.__setitem__(5, queue.submit("k", run, [5], wait_s=10))
    )
    late.start()
    gate.set()
    for t in [first, *waiting, late]:
        t.join(30)
    queue.close()
    assert results == {0: [0], 1: [10], 2: [20], 3: [30], 5: [50]}
    assert 4 not in [x for c in calls for x in c]  # the refused item never ran
    assert queue.describe()["refused"] == 1


def test_a_big_request_is_split_in_order() -> None:
    sizes: list[int] = []

    def run(xs: list[int]) -> list[int]:
        sizes.append(len(xs))
        return [x + 1 for x in xs]

    queue = InferenceQueue(max_batch=16, max_wait_ms=5, max_queued=8)
    try:
        # Larger than the whole bound, but nothing else waits: let in.
        assert queue.submit("k", run, list(range(40))) == list(range(1, 41))
    finally:
        queue.close()
    assert sizes == [16, 16, 8]


def test_a_failing_request_fails_alone() -> None:
    def run(xs: list[str]) -> list[str]:
        if "bad" in xs:
            raise ValueError("cannot run bad")
        return [x.upper() for x in xs]

    queue = InferenceQueue(max_batch=8, max_wait_ms=300, max_queued=64)
    try:
        out = concurrently(
            [lambda x=x: queue.submit("k", run, [x]) for x in ("a", "bad", "c")]  # type: ignore[misc]
        )
    finally:
        queue.close()
    assert out[0] == ["A"] and out[2] == ["C"]
    assert isinstance(out[1], ValueError)


class Fatal(BaseException):
    pass


def test_a_fatal_error_reaches_the_caller_and_the_worker_carries_on() -> None:
    def run(xs: list[int]) -> list[int]:
        if xs == [0]:
            raise Fatal("not an Exception")
        return xs

    queue = InferenceQueue(max_batch=8, max_wait_ms=1, max_queued=64)
    try:
        with pytest.raises(Fatal):
            queue.submit("k", run, [0])
        assert queue.submit("k", run, [1]) == [1]
    finally:
        queue.close()


@pytest.mark.parametrize(("max_batch", "max_wait_ms"), [(1, 5.0), (16, 0.0)])
def test_batch_1_or_wait_0_is_the_direct_path(
    embedder: Embedder, max_batch: int, max_wait_ms: float
) -> None:
    queue = InferenceQueue(max_batch=max_batch, max_wait_ms=max_wait_ms, max_queued=1)
    assert not queue.enabled
    assert queue._thread is None  # no worker
    callers: list[int] = []

    def run(xs: list[int]) -> list[int]:
        callers.append(threading.get_ident())
        return xs

    # Runs in the caller's thread, unbounded, one call per request.
    assert queue.submit("k", run, [1, 2, 3]) == [1, 2, 3]
    assert callers == [threading.get_ident()]
    counting = Counting(embedder)
    image = picture(7)
    out = queue.embed(counting, [image], modality="sketch")
    assert counting.calls == [("sketch", 1)]
    np.testing.assert_array_equal(out, embedder.embed([image], modality="sketch"))
    queue.close()


def test_close_finishes_waiting_work_then_refuses() -> None:
    queue = InferenceQueue(max_batch=64, max_wait_ms=2000, max_queued=64)
    result: list[Any] = []
    t = threading.Thread(target=lambda: result.append(queue.submit("k", lambda xs: xs, [9])))
    t.start()
    while queue.describe()["queued"] == 0:
        time.sleep(0.005)
    start = time.perf_counter()
    queue.close()  # does not wait out the 2 s: the waiting job runs at once
    t.join(10)
    assert result == [[9]]
    assert time.perf_counter() - start < 1.5
    assert queue._thread is not None and not queue._thread.is_alive()
    with pytest.raises(QueueClosedError):
        queue.submit("k", lambda xs: xs, [1])


def test_empty_requests_do_not_queue(embedder: Embedder) -> None:
    queue = InferenceQueue(max_batch=8, max_wait_ms=1000, max_queued=4)
    try:
        assert queue.embed(embedder, []).shape == (0, embedder.dim)
        assert queue.translate(None, []) == []  # type: ignore[arg-type]
        assert queue.describe()["requests"] == 0
    finally:
        queue.close()
