"""Prometheus metrics (`GET /metrics`): what this process did, and the state of the fleet.

Counters and histograms are updated where the thing happens (the step runner, the saga's
ends, parking, taking an order in), once per real event: a step that DBOS replays from its
checkpoint runs no code here, and one whose journal says it already completed before a crash
returns that outcome without counting an attempt. They belong to this process, and restart
from zero with it; with several serving processes (`make run`, PROCESSES > 1) they are kept
in files shared by all of them (prometheus_client's multiprocess mode, its directory made by
the supervisor), so any of them answers for all, and a serving process that is restarted
loses nothing.

The gauges (sagas in each state, the oldest unfinished saga, those needing attention) are
read from the database when scraped (`Fleet`), so every process, in any mode, answers them
for the whole fleet, and a restart loses nothing.

Names follow Prometheus's conventions: base units (seconds), `_total` on counters, and no
label value is an id (steps, states, results, HTTP methods, route templates, status codes).
"""

import functools
import logging
import os
import time
from collections.abc import Iterator
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from orders import views
from orders.model import COMPENSATION_OF, FORWARD_STEPS, TERMINAL_STATES
from runtime import database
from runtime.processes import METRICS_DIR_VARIABLE
from runtime.settings import get_settings

__all__ = ["CONTENT_TYPE_LATEST", "HttpMetrics", "exposition"]

log = logging.getLogger(__name__)

STEP_RESULTS = ("ok", "refused", "transient", "error")
STEP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
HTTP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)

SAGAS_STARTED = Counter(
    "saga_started", "Sagas started: orders taken in by this process (a resent order is not)"
)
SAGAS_FINISHED = Counter(
    "saga_finished", "Sagas that reached an end state in this process", ["state"]
)
SAGAS_PARKED = Counter(
    "saga_parked",
    "Times a saga parked in COMPENSATION_FAILED (a compensation ran out of tries) here",
)
STEP_ATTEMPTS = Counter(
    "saga_step_attempts",
    "Attempts of forward steps and compensations that called their service, by result: "
    "ok, refused (a business no), transient (to be tried again), error",
    ["step", "result"],
)
STEP_DURATION = Histogram(
    "saga_step_duration_seconds",
    "Time of one attempt of a forward step or compensation, its journal writes included",
    ["step"],
    buckets=STEP_BUCKETS,
)
HTTP_REQUESTS = Counter(
    "http_requests",
    "HTTP requests answered, by method, route template and status code",
    ["method", "route", "status"],
)
HTTP_DURATION = Histogram(
    "http_request_duration_seconds",
    "Time from a request's arrival to the end of its answer, by method and route template",
    ["method", "route"],
    buckets=HTTP_BUCKETS,
)

# Every series that can exist starts at 0, so a rate or a test sees the first event.
STEPS = (*FORWARD_STEPS, *COMPENSATION_OF)
for _state in TERMINAL_STATES:
    SAGAS_FINISHED.labels(_state)
for _step in STEPS:
    STEP_DURATION.labels(_step)
    for _result in STEP_RESULTS:
        STEP_ATTEMPTS.labels(_step, _result)


@functools.cache
def enabled() -> bool:
    """METRICS (default true); off, nothing is counted (for measuring what counting costs)."""
    return get_settings().metrics


def saga_started() -> None:
    if enabled():
        SAGAS_STARTED.inc()


def saga_finished(state: str) -> None:
    if enabled():
        SAGAS_FINISHED.labels(state).inc()


def saga_parked() -> None:
    if enabled():
        SAGAS_PARKED.inc()


def step_attempt(step: str, result: str, seconds: float) -> None:
    if enabled():
        STEP_ATTEMPTS.labels(step, result).inc()
        STEP_DURATION.labels(step).observe(seconds)


class Fleet(Collector):
    """The gauges of the whole fleet, read from the database at each scrape (one round trip).

    While the database cannot be read they are left out and `saga_database_up` is 0: a
    scrape still answers, with this process's counters."""

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily(
            "saga_database_up", "Whether the database answered this scrape's fleet queries"
        )
        try:
            with database.connection() as conn:
                now = views.fleet(conn)
        except Exception as error:  # an outage: the rest of the scrape still answers
            log.warning("metrics: the fleet's gauges could not be read: %s", error)
            up.add_metric([], 0)
            yield up
            return
        sagas = GaugeMetricFamily("sagas", "Sagas in each state now", labels=["state"])
        for state, count in now.counts.items():
            sagas.add_metric([state], count)
        yield sagas
        yield GaugeMetricFamily(
            "saga_oldest_unfinished_seconds",
            "Age of the oldest saga not COMPLETED or FAILED (0 when there is none)",
            value=now.oldest_unfinished_seconds,
        )
        yield GaugeMetricFamily(
            "sagas_needing_attention",
            "Unfinished sagas that need an operator: parked, their workflow ended without "
            "finishing them, or unchanged for ATTENTION_AFTER_SECONDS (docs/PSQL.md)",
            value=now.needing_attention,
        )
        up.add_metric([], 1)
        yield up


_registry: CollectorRegistry | None = None


def registry() -> CollectorRegistry:
    """What `GET /metrics` shows: this process's metrics (or, with several serving
    processes, all of theirs) and the fleet's gauges."""
    global _registry
    if _registry is None:
        if os.environ.get(METRICS_DIR_VARIABLE):  # set by a supervisor of several
            _registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(_registry)  # type: ignore[no-untyped-call]
        else:
            _registry = REGISTRY
        _registry.register(Fleet())
    return _registry


def exposition() -> bytes:
    """The text format of every metric, for `GET /metrics`."""
    return generate_latest(registry())


class HttpMetrics:
    """ASGI middleware counting and timing every HTTP request by its route template (the
    path with `{order_id}`, never the id itself; `unmatched` for a path of no route; a
    method outside the usual few is `other`: no client can make a new series at will)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # if the app raises before it answers

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            route = _template(scope)
            method = scope["method"] if scope["method"] in METHODS else "other"
            HTTP_REQUESTS.labels(method, route, str(status)).inc()
            HTTP_DURATION.labels(method, route).observe(time.perf_counter() - started)


def _template(scope: Scope) -> str:
    route: Any = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else "unmatched"
