"""Publishing gallery items to the ingestion queue (the API side), and the queue's depth."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from kombu.exceptions import KombuError

from app.errors import SketchReidError
from app.queue.celery_app import QUEUE, TASK, make_celery

log = logging.getLogger(__name__)


class BrokerUnavailableError(SketchReidError):
    """The broker did not take the message: HTTP 503 with ``Retry-After``."""

    retry_after = 5


class IngestQueue:
    def __init__(self, broker_url: str, timeout_s: float = 3.0) -> None:
        self.app = make_celery(broker_url, timeout_s)
        self.timeout_s = timeout_s
        probe = self.app.connection_for_write()
        self._errors: tuple[type[BaseException], ...] = (
            KombuError,
            OSError,
            *probe.connection_errors,
            *probe.channel_errors,
        )
        probe.release()

    def publish(self, item_ids: Sequence[int]) -> None:
        """Queue the items for embedding; ``BrokerUnavailableError`` when the broker does not
        confirm the message (unreachable, refusing, or slower than the timeout)."""
        if not item_ids:
            return
        try:
            self.app.send_task(
                TASK,
                args=[[int(i) for i in item_ids]],
                queue=QUEUE,
                retry=True,  # once: a pooled connection that the broker dropped is re-made
                retry_policy={
                    "max_retries": 1,
                    "interval_start": 0,
                    "interval_step": 0.2,
                    "interval_max": 0.2,
                },
            )
        except self._errors as exc:  # unreachable, refused, closed, no confirm in time
            first = str(exc).strip().splitlines()[0] if str(exc) else ""
            log.error(
                "cannot publish %d item(s) to the broker: %s %s",
                len(item_ids),
                exc.__class__.__name__,
                first,
            )
            raise BrokerUnavailableError(
                "the ingestion queue (message broker) is unreachable, so the upload was not "
                f"stored: send it again later ({exc.__class__.__name__}: {first[:200]})"
            ) from None

    def depth(self) -> int | None:
        """Messages waiting in the queue (not counting those being worked on), or None when the
        broker cannot be asked."""
        try:
            with self.app.connection_for_write() as conn:
                conn.ensure_connection(max_retries=1, timeout=self.timeout_s)
                declared = conn.default_channel.queue_declare(QUEUE, passive=True)
                return int(declared.message_count)
        except Exception:
            return None

    def close(self) -> None:
        self.app.close()
