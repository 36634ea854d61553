"""Alerts POSTed to a webhook by one background thread: ingestion only puts the alert on a
bounded queue and never waits for the receiver.

Each alert is tried ``attempts`` times; after a failure (no answer, a timeout, a status that
is not 2xx) the thread waits ``backoff``, then twice that, and so on. An alert that fails every
try, or that finds the queue full, is logged and dropped: it stays stored and listed
(``GET /api/v1/alerts``), only its notification is lost.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
from collections.abc import Callable, Iterator
from typing import Any

import httpx

log = logging.getLogger(__name__)


class WebhookNotifier:
    def __init__(
        self,
        url: str,
        *,
        attempts: int = 5,
        backoff: float = 1.0,
        timeout: float = 5.0,
        max_queued: int = 1000,
    ) -> None:
        self.url = url
        self.attempts = attempts
        self.backoff = backoff
        self.timeout = timeout
        self._queue: queue.Queue[dict[str, Any] | None] = queue.Queue(max_queued)
        self._stop = threading.Event()
        self.delivered = 0
        self.failed = 0
        self.dropped = 0
        self._thread = threading.Thread(target=self._run, name="alert-webhook", daemon=True)
        self._thread.start()

    def counts(self) -> dict[str, int]:
        """Alerts delivered, failed (every try) and dropped (queue full) so far; waiting now."""
        return {
            "delivered": self.delivered,
            "failed": self.failed,
            "dropped": self.dropped,
            "waiting": self._queue.qsize(),
        }

    def send(self, payload: dict[str, Any]) -> bool:
        """Queue one alert; False (logged) when the queue is full or the notifier stopped."""
        if self._stop.is_set():
            return False
        try:
            self._queue.put_nowait(payload)
        except queue.Full:
            self.dropped += 1
            log.error(
                "alert %s not sent to the webhook: %d alerts already wait",
                payload.get("alert_id"),
                self._queue.maxsize,
            )
            return False
        return True

    def _deliver(self, client: httpx.Client, payload: dict[str, Any]) -> None:
        wait = self.backoff
        for attempt in range(1, self.attempts + 1):
            try:
                response = client.post(self.url, json=payload)
                if 200 <= response.status_code < 300:
                    self.delivered += 1
                    return
                problem = f"HTTP {response.status_code}"
            except httpx.HTTPError as exc:
                problem = f"{type(exc).__name__}: {exc}"
            if attempt == self.attempts:
                break
            log.warning(
                "alert %s: webhook try %d of %d failed (%s); next in %.1f s",
                payload.get("alert_id"),
                attempt,
                self.attempts,
                problem,
                wait,
            )
            if self._stop.wait(wait):
                break
            wait *= 2
        self.failed += 1
        log.error(
            "alert %s: the webhook failed %d time(s) (%s); the alert stays listed",
            payload.get("alert_id"),
            attempt,
            problem,
        )

    def _run(self) -> None:
        with httpx.Client(timeout=self.timeout) as client:
            while True:
                payload = self._queue.get()
                if payload is None:
                    return
                try:
                    self._deliver(client, payload)
                except Exception:  # never let one alert stop the thread
                    log.exception("alert %s: webhook delivery failed", payload.get("alert_id"))

    def close(self, timeout: float = 10.0) -> None:
        """Deliver what waits (for at most ``timeout`` seconds), then stop."""
        with contextlib.suppress(queue.Full):
            self._queue.put(None, timeout=timeout)
        self._thread.join(timeout)
        self._stop.set()
        self._thread.join(1.0)


WEBHOOK_METRIC = "sketchreid_alert_webhook_alerts"
WEBHOOK_HELP = (
    "Watchlist alerts for the webhook since this process started, by outcome: delivered, failed "
    "(every try), dropped (the queue was full), waiting (queued now); the alerts themselves are "
    "stored whatever the outcome (the process that indexes crops sends them: in the cluster "
    "profile each worker, on its --metrics-port)"
)


class WebhookCollector:
    """Prometheus collector of a notifier's :meth:`WebhookNotifier.counts`, read at each scrape
    (the API's ``/metrics``, a worker's ``--metrics-port``). ``notifier`` gives the process's
    notifier, or None (no webhook configured, or the service not started yet): nothing then."""

    def __init__(self, notifier: Callable[[], WebhookNotifier | None]) -> None:
        self.notifier = notifier

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily

        notifier = self.notifier()
        if notifier is None:
            return
        family = GaugeMetricFamily(WEBHOOK_METRIC, WEBHOOK_HELP, labels=["outcome"])
        for outcome, count in notifier.counts().items():
            family.add_metric([outcome], count)
        yield family
