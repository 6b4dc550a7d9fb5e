"""One call to a downstream service, behaving like a network hop."""

import time
from collections.abc import Callable
from typing import Any, TypeVar

import psycopg

from runtime import database
from runtime.settings import get_settings
from services import faults
from services.outcomes import ServiceUnavailable

T = TypeVar("T")
# A database that is slow but reachable is stopped by its own statement_timeout (the same
# STEP_TIMEOUT_SECONDS); a stalled network path is cut from this side this long after it.
CUT_GRACE_SECONDS = 1.0


def call(operation: str, action: Callable[[psycopg.Connection[Any]], T]) -> T:
    """Run `action` as the named downstream operation.

    Latency (PARTICIPANT_LATENCY_MS plus the operation's own `latency_ms` switch) passes half
    before the service acts and half after, so a process can die after the effect but before
    the caller hears of it, as over a network. Raises ServiceUnavailable while the operation
    is switched down, and when no answer comes within STEP_TIMEOUT_SECONDS, which may be
    before or after the service acted (the caller cannot tell, as with a real timeout).
    """
    settings = get_settings()
    deadline = time.monotonic() + settings.step_timeout_seconds
    with database.connection(
        timeout=_left(deadline), deadline=deadline + CUT_GRACE_SECONDS
    ) as conn:
        switch = faults.switch(conn, operation)
        if switch.down:
            raise ServiceUnavailable(f"{operation}: service unreachable (fault switch is on)")
        half_trip = (settings.participant_latency_ms + switch.latency_ms) / 2000
        if not half_trip:
            result = action(conn)
            _travel(0, deadline, operation)  # it answered, but maybe too late
            return result
    _travel(half_trip, deadline, operation)
    with database.connection(
        timeout=_left(deadline), deadline=deadline + CUT_GRACE_SECONDS
    ) as conn:
        result = action(conn)
    _travel(half_trip, deadline, operation)
    return result


def _left(deadline: float) -> float:
    return max(deadline - time.monotonic(), 0.001)


def _travel(seconds: float, deadline: float, operation: str) -> None:
    """Let `seconds` of network time pass, or fail when the deadline comes first."""
    left = deadline - time.monotonic()
    if seconds <= left:
        if seconds > 0:
            time.sleep(seconds)
        return
    time.sleep(max(left, 0))
    raise ServiceUnavailable(
        f"{operation}: no answer within STEP_TIMEOUT_SECONDS={get_settings().step_timeout_seconds}"
    )
