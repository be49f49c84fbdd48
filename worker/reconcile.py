"""The reconciler: the database says which jobs need a worker; make sure the broker agrees.

A Celery message is only a wake-up call, and it can be lost: Redis restarted empty, a worker
killed while its message waits out the visibility timeout, an API that died between commit and
send. At worker start and every `reconcile_interval_s`, every `queued` job with no message waiting
in the queue, and every `running` job whose heartbeat is stale (its worker is dead), gets a fresh
message. The task is idempotent by job id, so a needless duplicate costs one cheap skip.
"""

import json
import logging
import threading
import time
from collections.abc import Iterable
from datetime import timedelta

import redis
from celery import Celery
from sqlalchemy import and_, or_, select

from app.db.engine import get_sessionmaker
from app.db.models import Job, JobState, utcnow
from app.settings import get_settings
from worker.celery_app import TRAIN_TASK

log = logging.getLogger(__name__)

# kombu's Redis transport keeps one list per priority step: `queue`, `queue\x06\x163`, ...
_PRIORITY_SEP = "\x06\x16"
_PRIORITY_STEPS = (0, 3, 6, 9)
# ...and the messages a worker has taken but not acked in a hash, with the time taken in a zset.
_UNACKED, _UNACKED_INDEX = "unacked", "unacked_index"
# A job created this recently may still be between the API's commit and its send.
_GRACE = timedelta(seconds=5)


def _task_id(raw: bytes | str) -> str | None:
    try:
        body = json.loads(raw)
        message = body[0] if isinstance(body, list) else body  # unacked: [message, ex, key]
        return str(message["headers"]["id"])
    except (ValueError, KeyError, TypeError, IndexError):
        return None  # not one of ours


def waiting_job_ids(client: redis.Redis, queue: str, taken_within_s: float = 0.0) -> set[str]:
    """Task ids of the messages waiting in `queue`, and of those a worker took (not yet acked)
    less than `taken_within_s` ago: that worker is about to claim the job."""
    ids: set[str] = set()
    keys = [queue] + [f"{queue}{_PRIORITY_SEP}{step}" for step in _PRIORITY_STEPS[1:]]
    for key in keys:
        ids.update(filter(None, map(_task_id, client.lrange(key, 0, -1))))
    if taken_within_s > 0:
        recent = client.zrangebyscore(_UNACKED_INDEX, time.time() - taken_within_s, "+inf")
        if recent:
            ids.update(filter(None, map(_task_id, filter(None, client.hmget(_UNACKED, recent)))))
    return ids


def jobs_needing_a_message(waiting: set[str]) -> list[str]:
    """Queued jobs with no waiting message, and running jobs whose worker stopped beating."""
    settings = get_settings()
    now = utcnow()
    stale = now - timedelta(seconds=settings.heartbeat_timeout_s)
    with get_sessionmaker()() as session:
        rows: Iterable[str] = session.scalars(
            select(Job.id).where(
                or_(
                    and_(Job.state == JobState.queued, Job.created_at < now - _GRACE),
                    and_(
                        Job.state == JobState.running,
                        or_(Job.heartbeat_at.is_(None), Job.heartbeat_at < stale),
                    ),
                )
            )
        )
        return [job_id for job_id in rows if job_id not in waiting]


def reconcile(app: Celery) -> list[str]:
    """Send a message for every job that needs one; returns their ids."""
    client = redis.Redis.from_url(get_settings().effective_redis_url)
    try:
        waiting = waiting_job_ids(
            client, app.conf.task_default_queue, get_settings().heartbeat_timeout_s
        )
    finally:
        client.close()
    resend = jobs_needing_a_message(waiting)
    for job_id in resend:
        app.send_task(TRAIN_TASK, args=[job_id], task_id=job_id)
    if resend:
        log.info("reconciler re-queued %d job(s): %s", len(resend), ", ".join(resend))
    return resend


def run_periodically(app: Celery, stop: threading.Event) -> None:
    """Reconcile now, then every `reconcile_interval_s` until `stop` is set; never dies."""
    interval = max(1, get_settings().reconcile_interval_s)
    while True:
        try:
            reconcile(app)
        except Exception:  # the broker or database may be briefly away; try again next round
            log.exception("reconciler round failed")
        if stop.wait(interval):
            return
