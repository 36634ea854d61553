"""`sketchreid worker`: embed queued uploads (the cluster profile; docs/scaling.md)."""

from __future__ import annotations

import argparse
import gc
import logging
import os
import socket

from app.core.config import get_settings
from app.errors import UserInputError


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
    from app.queue.requeue import Requeuer
    from app.queue.worker import WorkerMetrics, worker_app
    from app.services.context import close_context, notifier_of, open_context
    from app.services.webhook import WebhookCollector

    settings = get_settings()
    if not settings.BROKER_URL:
        raise UserInputError(
            "no broker: set SKETCHREID_BROKER_URL (e.g. amqp://guest:guest@127.0.0.1:5672//) "
            "for the API and the workers"
        )
    level = getattr(logging, args.log_level.upper(), logging.INFO)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    ctx = open_context(settings, worker=True)
    requeuer: Requeuer | None = None
    try:
        metrics = WorkerMetrics()
        metrics.registry.register(WebhookCollector(lambda: notifier_of(ctx)))
        if args.metrics_port is not None:
            start_http_server(args.metrics_port, args.metrics_host, registry=metrics.registry)
        # Items of another model, and pending ones that lost their message (app.queue.requeue):
        # at the start, then every REQUEUE_PENDING_SECONDS while the worker runs.
        requeuer = Requeuer(ctx, settings.REQUEUE_PENDING_SECONDS, metrics.requeued)
        requeuer.at_start()
        requeuer.start()
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
        if requeuer is not None:
            requeuer.close()
        close_context(ctx, save_index=False)
        # Nothing is left to clean up: spare the interpreter's last garbage collection over
        # the model's objects, which took seconds here and delayed the exit of a stopped
        # worker (`docker stop` kills after 10 s).
        gc.freeze()
    return 0
