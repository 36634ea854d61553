"""The Celery app of the ingestion queue, shared by the API (publisher) and `sketchreid worker`.

Delivery is at least once and nothing acknowledged is lost (docs/scaling.md):

* ``task_acks_late``: a message is acknowledged after its task ran, not when it arrived, so a
  worker killed mid-task (-9, out of memory) leaves it unacknowledged and the broker delivers
  it again, flagged ``redelivered``, to another worker or the restarted one. (With the
  ``solo`` pool Celery's event loop happens to send even an early acknowledgement only once
  the task has returned; with a ``threads`` pool it goes out at once and a killed worker
  loses the task: tests/service/test_cluster.py goes red there without this setting.)
* ``worker_prefetch_multiplier = 1`` with the ``solo`` pool: a worker holds one message at a
  time, so a killed worker strands nothing behind the one it was working on;
* ``task_reject_on_worker_lost``: a ``prefork`` pool, whose parent outlives a killed child,
  gives the child's lost task back instead of acknowledging it. With the ``solo`` pool the
  task runs in the worker process itself, whose death closes its connection, so this setting
  has nothing to act on (the kill test stays green without it);
* persistent messages on a durable queue, and publisher confirms (``confirm_publish``): an
  upload is answered 202 only once the broker has the message.

These are the app's settings, so the task takes them from here (its decorator repeats none).

Since a message may run twice, the task is idempotent (one embedding per item and model key:
``app.services.indexing``).
"""

from __future__ import annotations

from celery import Celery
from kombu import Queue

QUEUE = "sketchreid.index"
TASK = "sketchreid.index_items"


def make_celery(broker_url: str, timeout_s: float = 3.0) -> Celery:
    app = Celery("sketchreid", broker=broker_url, set_as_current=False)
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_default_queue=QUEUE,
        task_queues=[Queue(QUEUE, durable=True)],
        task_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,
        broker_connection_timeout=timeout_s,
        broker_connection_retry_on_startup=True,
        broker_transport_options={"confirm_publish": True},
        worker_hijack_root_logger=False,
        worker_cancel_long_running_tasks_on_connection_loss=True,
    )
    return app
