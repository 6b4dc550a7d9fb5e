"""What every step does around its downstream call: journal, classify failures, retry policy."""

import logging
from collections.abc import Callable
from typing import Any

import psycopg
import psycopg_pool

from orders import journal
from orders.model import StepKind
from runtime import database
from runtime.settings import get_settings
from services import transport
from services.outcomes import Outcome, ServiceUnavailable

log = logging.getLogger(__name__)

Action = Callable[[psycopg.Connection[Any]], Outcome]


class StepFailed(Exception):
    """A step raised something that is not transient: retrying will not help."""


def is_transient(error: BaseException) -> bool:
    """Worth another try: the service or the database could not be reached."""
    return isinstance(
        error, ServiceUnavailable | psycopg.OperationalError | psycopg_pool.PoolTimeout
    )


def forward_policy() -> dict[str, Any]:
    """DBOS retry options for forward steps (STEP_ATTEMPTS, RETRY_BACKOFF_SECONDS)."""
    settings = get_settings()
    return _policy(settings.step_attempts, settings.retry_backoff_seconds)


def compensation_policy() -> dict[str, Any]:
    """DBOS retry options for compensations (COMPENSATION_ATTEMPTS, RETRY_BACKOFF_SECONDS)."""
    settings = get_settings()
    return _policy(settings.compensation_attempts, settings.retry_backoff_seconds)


def _policy(attempts: int, backoff_seconds: float) -> dict[str, Any]:
    return {
        "retries_allowed": True,
        "max_attempts": attempts,
        "interval_seconds": backoff_seconds,
        "backoff_rate": 2.0,
        "should_retry": is_transient,
    }


def run(
    kind: StepKind, name: str, order_id: str, action: Action, *, reason: str | None = None
) -> Outcome:
    """Call downstream operation `name` for the order, journaling the attempt around it.

    Returns the service's outcome (done or refused). Transient errors propagate for DBOS
    to retry; anything else, the journal's writes included, becomes StepFailed (not retried),
    so the workflow sees the same class of error on its first run as on a replay.
    """
    try:
        with database.connection() as conn:
            journal.step_started(conn, order_id, kind, name, reason)
        outcome = transport.call(name, action)
        with database.connection() as conn:
            journal.step_finished(conn, order_id, kind, name, outcome)
    except Exception as error:
        _journal_failure(order_id, kind, name, f"{type(error).__name__}: {error}")
        if is_transient(error):
            raise
        raise StepFailed(f"{name}: {type(error).__name__}: {error}") from error
    return outcome


def _journal_failure(order_id: str, kind: StepKind, name: str, error: str) -> None:
    try:
        with database.connection() as conn:
            journal.step_failed(conn, order_id, kind, name, error)
    except Exception:  # the step's own error matters more; DBOS records that one
        log.warning("could not journal the failure of %s for %s", name, order_id, exc_info=True)
