"""Prometheus metrics: request counts and latencies, jobs by state, queue depth.

Everything lives on prometheus_client's default REGISTRY (with its process metrics), so other
parts define metrics as usual; values that are cheaper to read at
scrape time than to keep current (a cache's size, say) go in a function given to `on_scrape`.
"""

import time
from collections.abc import Callable
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from sqlalchemy import func, select
from sqlalchemy.orm import Session
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app import jobs_queue
from app.db.models import Job, JobState
from app.settings import Settings

HTTP_REQUESTS = Counter(
    "freshnets_http_requests",
    "HTTP requests answered, by method, route template and status.",
    ["method", "route", "status"],
    registry=REGISTRY,
)
HTTP_LATENCY = Histogram(
    "freshnets_http_request_duration_seconds",
    "Time to answer an HTTP request, by method and route template.",
    ["method", "route"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
    registry=REGISTRY,
)
JOBS = Gauge("freshnets_jobs", "Jobs in the database, by state.", ["state"], registry=REGISTRY)
QUEUE_DEPTH = Gauge(
    "freshnets_queue_depth",
    "Messages waiting in the broker's training queue (-1: broker unreachable).",
    registry=REGISTRY,
)

_scrape_hooks: list[Callable[[], None]] = []


def on_scrape(hook: Callable[[], None]) -> Callable[[], None]:
    """Run `hook` before every scrape, to bring gauges up to date."""
    _scrape_hooks.append(hook)
    return hook


def render(session: Session, settings: Settings) -> tuple[bytes, str]:
    """The Prometheus text exposition, with the database and broker gauges read now."""
    counts = dict(session.execute(select(Job.state, func.count()).group_by(Job.state)).all())
    for state in JobState:
        JOBS.labels(state=state.value).set(counts.get(state, 0))
    depth = jobs_queue.queue_depth(settings)
    QUEUE_DEPTH.set(-1 if depth is None else depth)
    for hook in _scrape_hooks:
        hook()
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST


class MetricsMiddleware:
    """Counts and times every HTTP request by its route template (not its raw path)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        # The labelled children, kept: `labels()` validates and locks on every call.
        self._counters: dict[tuple[str, str, int], Any] = {}
        self._timers: dict[tuple[str, str], Any] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_with_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_with_status)
        finally:
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            method = scope["method"]
            counter = self._counters.get((method, route, status))
            if counter is None:
                counter = HTTP_REQUESTS.labels(method=method, route=route, status=str(status))
                self._counters[method, route, status] = counter
            counter.inc()
            timer = self._timers.get((method, route))
            if timer is None:
                timer = HTTP_LATENCY.labels(method=method, route=route)
                self._timers[method, route] = timer
            timer.observe(time.perf_counter() - start)
