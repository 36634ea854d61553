"""`sketchreid worker`: embed queued uploads (the cluster profile; docs/scaling.md)."""

from __future__ import annotations

import argparse
import logging
import os
import socket

from app.core.config import get_settings
from app.errors import UserInputError

REQUEUE_CHUNK = 64


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    worker = subparsers.add_parser(
        "worker",
        help="embed queued uploads from the broker (SKETCHREID_BROKER_URL) into the index",
    )
    worker.add_argument("--log-level", default="info", help="log level (default info)")
    worker.add_argument(
        "--metrics-port",
        type=int,
        default=None,
        metavar="PORT",
        help="serve Prometheus metrics (items, failures, crops/s) on this port",
    )
    worker.add_argument(
        "--metrics-host", default="127.0.0.1", help="bind address of the metrics (127.0.0.1)"
    )
    worker.set_defaults(func=cmd_worker)


def cmd_worker(args: argparse.Namespace) -> int:
    from prometheus_client import start_http_server

    from app.queue.celery_app import QUEUE
    from app.queue.producer import IngestQueue
    from app.queue.worker import WorkerMetrics, worker_app
    from app.services.context import close_context, open_context
    from app.services.indexing import stale_items

    settings = get_settings()
    if not settings.BROKER_URL:
        raise UserInputError(
            "no broker: set SKETCHREID_BROKER_URL (e.g. amqp://guest:guest@127.0.0.1:5672//) "
            "for the API and the workers"
        )
    level = getattr(logging, args.log_level.upper(), logging.INFO)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    ctx = open_context(settings, worker=True)
    try:
        metrics = WorkerMetrics()
        if args.metrics_port is not None:
            start_http_server(args.metrics_port, args.metrics_host, registry=metrics.registry)
        stale = stale_items(ctx, settings.REQUEUE_PENDING_SECONDS)
        if stale:
            logging.getLogger(__name__).warning("queueing %d stale item(s) again", len(stale))
            queue = IngestQueue(settings.BROKER_URL, settings.BROKER_TIMEOUT_SECONDS)
            try:
                for start in range(0, len(stale), REQUEUE_CHUNK):
                    queue.publish(stale[start : start + REQUEUE_CHUNK])
            finally:
                queue.close()
        app = worker_app(ctx, metrics)
        name = f"sketchreid-{os.getpid()}@{socket.gethostname()}"
        app.worker_main(
            [
                "worker",
                "--pool=solo",
                "--concurrency=1",
                f"--queues={QUEUE}",
                f"--hostname={name}",
                f"--loglevel={args.log_level.upper()}",
                "--without-gossip",
                "--without-mingle",
            ]
        )
    finally:
        close_context(ctx, save_index=False)
    return 0
