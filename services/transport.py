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


def call(operation: str, action: Callable[[psycopg.Connection[Any]], T]) -> T:
    """Run `action` as the named downstream operation.

    Half of PARTICIPANT_LATENCY_MS passes before the service acts and half after, so a
    process can die after the effect but before the caller hears of it (as over a network).
    Raises ServiceUnavailable while the operation's fault switch is on.
    """
    half_trip = get_settings().participant_latency_ms / 2000
    if half_trip:
        time.sleep(half_trip)
    with database.connection() as conn:
        if faults.is_down(conn, operation):
            raise ServiceUnavailable(f"{operation}: service unreachable (fault switch is on)")
        result = action(conn)
    if half_trip:
        time.sleep(half_trip)
    return result
