"""Queueing again what no message will bring to a worker: `sketchreid worker`'s re-queue.

Two kinds of items are pending without a message in the queue:

* an upload whose process died between committing its row and publishing its message, or whose
  task gave up (the database unreachable for all its retries): pending for longer than
  ``REQUEUE_PENDING_SECONDS``. A worker checks for them at its start and then every
  ``REQUEUE_PENDING_SECONDS``, and queues them again **only when no message waits in the
  queue**: with a backlog, old pending items are most likely still queued, and publishing them
  again on every check would flood the queue with duplicates; once the backlog is drained,
  the ones still pending have lost their message. A message that is queued twice all the same
  (two workers checking at once, a task slower than the period) costs one more task that finds
  the embedding there (``already``): writes are idempotent.
* items indexed under another model than the worker's (a model change): set to pending and
  queued at the worker's start, once.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence

from prometheus_client import Counter

from app.queue.producer import IngestQueue
from app.services.context import ServiceContext
from app.services.indexing import other_model_items, stale_pending

log = logging.getLogger(__name__)

CHUNK = 64  # item ids per message


class Requeuer:
    def __init__(
        self, ctx: ServiceContext, older_than_s: float, counter: Counter | None = None
    ) -> None:
        self.ctx = ctx
        self.older_than_s = older_than_s
        self.counter = counter
        settings = ctx.settings
        self.queue = IngestQueue(settings.BROKER_URL, settings.BROKER_TIMEOUT_SECONDS)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _publish(self, ids: Sequence[int]) -> None:
        for start in range(0, len(ids), CHUNK):
            self.queue.publish(ids[start : start + CHUNK])
        if self.counter is not None:
            self.counter.inc(len(ids))

    def at_start(self) -> None:
        """Queue the items of another model, then check for stale pending ones."""
        other = other_model_items(self.ctx)
        if other:
            log.warning("queueing %d item(s) indexed under another model", len(other))
            self._publish(other)
        if self.older_than_s > 0:
            self.check()

    def check(self) -> int:
        """Queue again the items pending for longer than ``older_than_s`` when no message waits
        in the queue; how many."""
        depth = self.queue.depth()
        if depth != 0:  # a backlog (their messages are likely in it), or no broker to ask
            return 0
        stale = stale_pending(self.ctx, self.older_than_s)
        if stale:
            log.warning(
                "queueing %d item(s) again: pending for more than %g s with the queue empty",
                len(stale),
                self.older_than_s,
            )
            self._publish(stale)
        return len(stale)

    def _loop(self) -> None:
        while not self._stop.wait(self.older_than_s):
            try:
                self.check()
            except Exception:  # the database or the broker is away: try again next period
                log.exception("the periodic re-queue of pending items failed")

    def start(self) -> None:
        """Check every ``older_than_s`` in a thread of its own (0: never)."""
        if self.older_than_s <= 0 or self._thread is not None:
            return
        self._thread = threading.Thread(target=self._loop, name="requeue", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
        self.queue.close()
