"""The API's side of the broker: send the wake-up message for a job, revoke it, look at the queue.

The job row is the truth and the message only wakes a worker, so a broker that is down loses
nothing: the row stays `queued` and the worker's reconciler sends the message again.
"""

import logging
from functools import lru_cache

import redis
from celery import Celery

from app.settings import Settings

log = logging.getLogger(__name__)

# The task name the worker registers (worker/tasks.py); the message carries only the job id.
TRAIN_TASK = "freshnets.train_job"
# Celery's default queue: the Redis list the worker consumes.
QUEUE = "celery"
# The API answers in milliseconds; a broker that does not answer in this time counts as down.
BROKER_TIMEOUT_S = 2.0


@lru_cache
def celery_client(broker_url: str) -> Celery:
    app = Celery("freshnets-api", broker=broker_url)
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,
        broker_connection_retry=False,
        broker_connection_max_retries=0,
        broker_connection_timeout=BROKER_TIMEOUT_S,
        broker_transport_options={
            "socket_connect_timeout": BROKER_TIMEOUT_S,
            "socket_timeout": BROKER_TIMEOUT_S,
        },
    )
    return app


def enqueue(settings: Settings, job_id: str) -> bool:
    """Send the job's message; False (and a log line) when the broker cannot take it now."""
    # A quick ping first: kombu's own connect retries would hold the request for seconds.
    if not broker_reachable(settings):
        log.warning("job %s stays queued: broker unreachable", job_id)
        return False
    try:
        celery_client(settings.effective_redis_url).send_task(
            TRAIN_TASK, args=[job_id], task_id=job_id, retry=False
        )
    except Exception as exc:  # the broker's many failure types; the row keeps the job safe
        log.warning("job %s stays queued: broker unreachable (%s)", job_id, exc)
        return False
    return True


def revoke(settings: Settings, job_id: str) -> bool:
    """Tell workers to drop a queued job's message (the cancelled row stops it anyway)."""
    if not broker_reachable(settings):
        log.warning("could not revoke job %s: broker unreachable", job_id)
        return False
    try:
        celery_client(settings.effective_redis_url).control.revoke(job_id)
    except Exception as exc:
        log.warning("could not revoke job %s: %s", job_id, exc)
        return False
    return True


def _redis(settings: Settings) -> redis.Redis:
    return redis.Redis.from_url(
        settings.effective_redis_url,
        socket_connect_timeout=BROKER_TIMEOUT_S,
        socket_timeout=BROKER_TIMEOUT_S,
    )


def broker_reachable(settings: Settings) -> bool:
    try:
        with _redis(settings) as client:
            return bool(client.ping())
    except redis.RedisError:
        return False


def queue_depth(settings: Settings) -> int | None:
    """Messages waiting in the training queue, or None when the broker is unreachable."""
    try:
        with _redis(settings) as client:
            return int(client.llen(QUEUE))
    except redis.RedisError:
        return None
