"""The Celery app: Redis as the broker only (the database is the truth, so no result backend).

Delivery is at-least-once: a message is acked only after its task returns (`acks_late`), a worker
process lost mid-task gives the message back (`task_reject_on_worker_lost`), and Redis redelivers
an unacked message only after `visibility_timeout_s`, longer than the longest job. Each worker
process takes one job at a time (`prefetch 1`), so a long job never holds a second one hostage.
The task is idempotent by job id (`worker/tasks.py`), so every duplicate is harmless.
"""

import threading

from celery import Celery
from celery.signals import worker_process_init, worker_ready, worker_shutdown

from app.jobs_queue import TRAIN_TASK  # the name the API sends; one place for it
from app.settings import get_settings

__all__ = ["TRAIN_TASK", "celery_app", "make_celery"]


def make_celery() -> Celery:
    settings = get_settings()
    app = Celery("freshnets", broker=settings.effective_redis_url, include=["worker.tasks"])
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_ignore_result=True,
        worker_prefetch_multiplier=1,
        worker_concurrency=settings.worker_concurrency,
        broker_transport_options={"visibility_timeout": settings.visibility_timeout_s},
        broker_connection_retry_on_startup=True,
        task_serializer="json",
        accept_content=["json"],
        # A training job is one process's work; the worker never needs to cancel it by signal.
        worker_cancel_long_running_tasks_on_connection_loss=False,
        worker_hijack_root_logger=False,
    )
    return app


celery_app = make_celery()

_reconciler_stop = threading.Event()


@worker_ready.connect
def _start_reconciler(**_: object) -> None:
    """Re-queue lost jobs now and every `reconcile_interval_s` while this worker runs."""
    from worker.reconcile import run_periodically

    _reconciler_stop.clear()
    threading.Thread(
        target=run_periodically,
        args=(celery_app, _reconciler_stop),
        name="freshnets-reconciler",
        daemon=True,
    ).start()


@worker_shutdown.connect
def _stop_reconciler(**_: object) -> None:
    _reconciler_stop.set()


@worker_process_init.connect
def _fresh_engine_after_fork(**_: object) -> None:
    """A forked pool child must not share the parent's database connections."""
    from app.db.engine import get_engine

    if get_engine.cache_info().currsize:
        get_engine().dispose(close=False)
