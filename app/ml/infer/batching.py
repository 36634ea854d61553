"""Dynamic batching: concurrent embedding (and translation) requests share one forward pass.

The service handles requests in a thread pool; each request that needs the model calls
:meth:`InferenceQueue.embed` or :meth:`InferenceQueue.translate` and blocks on a future. One
worker thread takes the oldest waiting request, waits until ``max_batch`` images of the same
kind are waiting or the oldest has waited ``max_wait_ms``, runs them through the model in one
call and hands each request its rows back. So:

* one model instance: the worker is the only caller of the networks while batching is on;
* a batch holds one kind of work only: the same model object (a bundle swapped in while
  requests wait gets batches of its own) and the same operation (embed or translate).
  Sketches and photos share embedding passes: each image is preprocessed as its kind
  (sketches grey, photos in colour) before the pass, so a fused query's sketch and
  translation, and other requests' images, go through the networks together;
* no request waits longer than ``max_wait_ms`` for others to join it: the deadline is set by
  the oldest waiting request, and later ones only ever wait less. Beyond that a request waits
  for the forward passes ahead of it, as it did on the model's lock before;
* a request of more than ``max_batch`` images is split over several passes (in order);
* at most ``max_queued`` images wait at once; one more is refused with :class:`QueueFullError`
  (HTTP 503 with Retry-After) before anything of it runs, so the caller can stop before
  writing anything;
* when a pass over several requests fails, each request is run again alone, so one bad request
  fails alone;
* :meth:`close` refuses new work, finishes what is waiting and stops the worker.

``max_batch == 1`` or ``max_wait_ms == 0`` turns batching off: each call runs the model in
the caller's thread, exactly as without the queue (no worker, no bound).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from app.errors import SketchReidError
from app.ml.infer.embedder import BaseEmbedder, BaseTranslator, Modality, modalities_of

log = logging.getLogger(__name__)


class QueueFullError(SketchReidError):
    """Too many images are waiting for the model: HTTP 503 with ``Retry-After``."""

    def __init__(self, message: str, retry_after: int = 1) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class QueueClosedError(SketchReidError):
    """The queue no longer takes work (the service is shutting down): HTTP 503."""

    retry_after = 5


@dataclass(eq=False)  # identity: jobs are found in the deque by `is`, not by value
class _Job:
    key: Hashable
    run: Callable[[list[Any]], Sequence[Any]]
    items: list[Any]
    enqueued: float
    future: Future[list[Any]] = field(default_factory=Future)
    taken: int = 0  # items handed to a batch so far
    done: int = 0  # items whose results are in
    results: list[Any] = field(default_factory=list)
    failed: bool = False

    def __post_init__(self) -> None:
        self.results = [None] * len(self.items)


@dataclass
class _Slice:
    job: _Job
    start: int
    stop: int


@dataclass
class QueueStats:
    """Counters since the queue was made (batched mode only)."""

    requests: int = 0
    items: int = 0
    passes: int = 0
    largest_batch: int = 0
    refused: int = 0
    retried_alone: int = 0


class InferenceQueue:
    """A bounded queue with one worker thread that batches model calls (see the module
    docstring). ``embed_batch_size`` / ``translate_batch_size`` are the chunk sizes passed to
    the model classes, as the direct path always did."""

    def __init__(
        self,
        max_batch: int = 16,
        max_wait_ms: float = 2.0,
        max_queued: int = 256,
        *,
        embed_batch_size: int = 64,
        translate_batch_size: int = 16,
        name: str = "inference-batcher",
    ) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be >= 1")
        if max_wait_ms < 0:
            raise ValueError("max_wait_ms must be >= 0")
        if max_queued < 1:
            raise ValueError("max_queued must be >= 1")
        self.max_batch = int(max_batch)
        self.max_wait_ms = float(max_wait_ms)
        self.max_queued = int(max_queued)
        self.embed_batch_size = int(embed_batch_size)
        self.translate_batch_size = int(translate_batch_size)
        self.enabled = self.max_batch > 1 and self.max_wait_ms > 0
        self.stats = QueueStats()
        self._lock = threading.Lock()
        self._work = threading.Condition(self._lock)  # the worker waits for jobs
        self._room = threading.Condition(self._lock)  # submitters wait for room
        self._pending: deque[_Job] = deque()
        self._queued = 0  # images waiting, not yet taken into a batch
        self._closed = False
        self._thread: threading.Thread | None = None
        if self.enabled:
            self._thread = threading.Thread(target=self._worker, name=name, daemon=True)
            self._thread.start()

    # -- what the service calls ------------------------------------------------------------

    def embed(
        self,
        embedder: BaseEmbedder,
        images: Sequence[Image.Image],
        modality: Modality | Sequence[Modality] = "photo",
        *,
        wait_s: float = 0.0,
    ) -> np.ndarray:
        """``embedder.embed(images, modality=modality)``, batched with other requests
        (``modality``: one for all images or one per image)."""
        modalities = modalities_of(modality, len(images))
        chunk = self.embed_batch_size

        def run(batch: list[tuple[Image.Image, Modality]]) -> Sequence[Any]:
            pictures = [image for image, _ in batch]
            kinds = [kind for _, kind in batch]
            return list(embedder.embed(pictures, modality=kinds, batch_size=chunk))

        if not images:
            return embedder.embed([], modality="photo")
        items = list(zip(images, modalities, strict=True))
        rows = self.submit((id(embedder), "embed"), run, items, wait_s=wait_s)
        return np.stack(rows).astype(np.float32, copy=False)

    def translate(
        self,
        translator: BaseTranslator,
        images: Sequence[Image.Image],
        *,
        wait_s: float = 0.0,
    ) -> list[Image.Image]:
        """``translator.translate_batch(images)``, batched with other requests."""
        chunk = self.translate_batch_size

        def run(batch: list[Image.Image]) -> list[Image.Image]:
            return translator.translate_batch(batch, batch_size=chunk)

        if not images:
            return []
        return self.submit((id(translator), "translate"), run, list(images), wait_s=wait_s)

    def submit(
        self,
        key: Hashable,
        run: Callable[[list[Any]], Sequence[Any]],
        items: list[Any],
        *,
        wait_s: float = 0.0,
    ) -> list[Any]:
        """``list(run(items))``, run with the items of other jobs of the same ``key``.

        ``run`` must map a list of items to one result per item, and two jobs with equal keys
        must be interchangeable (``run`` of one may run the other's items). Waits up to
        ``wait_s`` seconds for room when the queue is full, then raises
        :class:`QueueFullError`; raises :class:`QueueClosedError` after :meth:`close`.
        """
        if not self.enabled:
            return list(run(items))
        job = _Job(key=key, run=run, items=items, enqueued=0.0)
        with self._lock:
            self._admit(len(items), wait_s)
            job.enqueued = time.monotonic()
            self._pending.append(job)
            self._queued += len(items)
            self.stats.requests += 1
            self._work.notify()
        return job.future.result()

    def close(self, timeout: float | None = 30.0) -> None:
        """Refuse new work, finish the waiting jobs and stop the worker."""
        with self._lock:
            self._closed = True
            self._work.notify_all()
            self._room.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.error("the inference worker did not stop within %s s", timeout)

    @property
    def closed(self) -> bool:
        return self._closed

    def describe(self) -> dict[str, Any]:
        """Settings and counters, for /api/v1/model and the benchmarks."""
        with self._lock:
            queued = self._queued
        return {
            "enabled": self.enabled,
            "max_batch": self.max_batch,
            "max_wait_ms": self.max_wait_ms,
            "max_queued": self.max_queued,
            "queued": queued,
            "requests": self.stats.requests,
            "items": self.stats.items,
            "passes": self.stats.passes,
            "largest_batch": self.stats.largest_batch,
            "refused": self.stats.refused,
        }

    # -- inside ------------------------------------------------------------------------------

    def _admit(self, count: int, wait_s: float) -> None:
        """Wait (lock held) until ``count`` more images fit, at most ``wait_s`` seconds. A job
        larger than the whole bound is let in when nothing else waits."""
        deadline = time.monotonic() + max(0.0, wait_s)
        while True:
            if self._closed:
                raise QueueClosedError("the service is shutting down; retry in a few seconds")
            if self._queued == 0 or self._queued + count <= self.max_queued:
                return
            left = deadline - time.monotonic()
            if left <= 0:
                self.stats.refused += 1
                raise QueueFullError(
                    f"the server is busy: {self._queued} images are waiting for the model "
                    f"(at most {self.max_queued}); nothing was stored, retry in a moment"
                )
            self._room.wait(left)

    def _next_batch(self) -> list[_Slice] | None:
        """Block until a batch is due; None when closed and drained. Called with the lock."""
        while not self._pending:
            if self._closed:
                return None
            self._work.wait()
        head = self._pending[0]
        deadline = head.enqueued + self.max_wait_ms / 1000.0
        while not self._closed:
            waiting = sum(len(j.items) - j.taken for j in self._pending if j.key == head.key)
            left = deadline - time.monotonic()
            if waiting >= self.max_batch or left <= 0:
                break
            self._work.wait(left)
        slices: list[_Slice] = []
        room = self.max_batch
        for job in list(self._pending):
            if room == 0:
                break
            if job.key != head.key:
                continue
            count = min(room, len(job.items) - job.taken)
            slices.append(_Slice(job, job.taken, job.taken + count))
            job.taken += count
            room -= count
            if job.taken == len(job.items):
                self._pending.remove(job)
        taken = self.max_batch - room
        self._queued -= taken
        self.stats.passes += 1
        self.stats.items += taken
        self.stats.largest_batch = max(self.stats.largest_batch, taken)
        self._room.notify_all()
        return slices

    def _worker(self) -> None:
        try:
            while True:
                with self._lock:
                    slices = self._next_batch()
                if slices is None:
                    return
                self._run(slices)
        except BaseException as exc:  # a bug here must not leave callers waiting forever
            log.exception("the inference worker stopped")
            with self._lock:
                self._closed = True
                jobs = list(self._pending)
                self._pending.clear()
                self._queued = 0
                self._room.notify_all()
            for job in jobs:
                if not job.future.done():
                    job.future.set_exception(exc)
            raise

    def _run(self, slices: list[_Slice]) -> None:
        items = [item for s in slices for item in s.job.items[s.start : s.stop]]
        try:
            out = slices[0].job.run(items)
            if len(out) != len(items):
                raise RuntimeError(f"a batch of {len(items)} items gave {len(out)} results")
        except BaseException as exc:  # every caller gets it; the worker carries on
            if len(slices) == 1 or not isinstance(exc, Exception):
                for s in slices:
                    self._fail(s.job, exc)
                return
            # Run each request's part alone: only the one that fails fails.
            self.stats.retried_alone += 1
            log.warning(
                "a batch of %d requests failed (%s); running them one by one", len(slices), exc
            )
            for s in slices:
                self._run([s])
            return
        offset = 0
        for s in slices:
            count = s.stop - s.start
            self._deliver(s, out[offset : offset + count])
            offset += count

    def _deliver(self, s: _Slice, results: Sequence[Any]) -> None:
        job = s.job
        if job.failed:
            return
        job.results[s.start : s.stop] = list(results)
        job.done += s.stop - s.start
        if job.done == len(job.items):
            job.future.set_result(job.results)

    def _fail(self, job: _Job, exc: BaseException) -> None:
        if job.failed:
            return
        job.failed = True
        with self._lock:  # its parts still waiting are dropped
            if job in self._pending:
                self._queued -= len(job.items) - job.taken
                job.taken = len(job.items)
                self._pending.remove(job)
                self._room.notify_all()
        job.future.set_exception(exc)
