"""The Celery task of `sketchreid worker` and the worker's own Prometheus metrics."""

from __future__ import annotations

import logging
from typing import Any

from celery import Celery
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from app.queue.celery_app import TASK, make_celery
from app.services.context import ServiceContext
from app.services.indexing import index_items

log = logging.getLogger(__name__)

# A task that fails as a whole (database unreachable, ...) is retried with growing pauses; after
# the last retry its items stay pending until a worker's re-queue finds them
# (REQUEUE_PENDING_SECONDS, app.queue.requeue).
MAX_RETRIES = 8


class WorkerMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.items = Counter(
            "sketchreid_worker_items",
            "Queued gallery items handled, by outcome (indexed, already, failed, missing)",
            ["outcome"],
            registry=self.registry,
        )
        self.task_failures = Counter(
            "sketchreid_worker_task_failures",
            "Tasks that failed as a whole (retried later)",
            registry=self.registry,
        )
        self.seconds = Histogram(
            "sketchreid_worker_task_duration_seconds",
            "Time to embed and store one message's items",
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=self.registry,
        )
        self.requeued = Counter(
            "sketchreid_worker_requeued_items",
            "Items queued again by this worker: pending without a message, or of another model",
            registry=self.registry,
        )
        self.rate = Gauge(
            "sketchreid_worker_crops_per_second",
            "Crops embedded per second by the last task",
            registry=self.registry,
        )


def worker_app(ctx: ServiceContext, metrics: WorkerMetrics) -> Celery:
    """The Celery app with the indexing task bound to ``ctx`` (opened once per worker)."""
    settings = ctx.settings
    app = make_celery(settings.BROKER_URL, settings.BROKER_TIMEOUT_SECONDS)

    @app.task(name=TASK, bind=True)
    def index_task(self: Any, item_ids: list[int]) -> None:
        request = self.request
        again = bool((request.delivery_info or {}).get("redelivered"))
        log.info(
            "task %s: indexing %d item(s)%s",
            request.id,
            len(item_ids),
            " (delivered again)" if again else "",
        )
        try:
            report = index_items(ctx, item_ids)
        except Exception as exc:
            metrics.task_failures.inc()
            log.exception("task %s failed; retried later", request.id)
            raise self.retry(
                exc=exc, countdown=min(60, 2**request.retries), max_retries=MAX_RETRIES
            ) from None
        for outcome in ("indexed", "already", "failed", "missing"):
            metrics.items.labels(outcome).inc(getattr(report, outcome))
        metrics.seconds.observe(report.seconds)
        if report.seconds > 0 and report.indexed:
            metrics.rate.set(report.indexed / report.seconds)
        log.info(
            "task %s: done: %d indexed, %d already, %d failed, %d missing in %.3f s",
            request.id,
            report.indexed,
            report.already,
            report.failed,
            report.missing,
            report.seconds,
        )

    return app
