"""What every step does around its downstream call: journal, classify failures, retry policy."""

import logging
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import psycopg
import psycopg_pool

from orders import events, journal
from orders.model import StepKind
from runtime import database, lease, logs, metrics
from runtime.settings import get_settings
from services import transport
from services.outcomes import Outcome, ServiceUnavailable, is_refused

log = logging.getLogger(__name__)

Action = Callable[[psycopg.Connection[Any]], Outcome]


class StepFailed(Exception):
    """A step raised something that is not transient: retrying will not help."""


def is_transient(error: BaseException) -> bool:
    """Worth another try: the service or the database could not be reached."""
    return isinstance(
        error,
        ServiceUnavailable
        | database.DatabaseUnavailable
        | psycopg.OperationalError
        | psycopg_pool.PoolTimeout,
    )


def retry_policy() -> dict[str, Any]:
    """DBOS retry options for forward steps and bookkeeping: transient errors are tried
    STEP_ATTEMPTS times, waiting RETRY_BACKOFF_SECONDS, doubled each time, in between.

    Compensations have none: the workflow retries them itself, with durable waits, and
    parks the saga when they run out (workflows/order_fulfillment.py).
    """
    settings = get_settings()
    return {
        "retries_allowed": True,
        "max_attempts": settings.step_attempts,
        "interval_seconds": settings.retry_backoff_seconds,
        "backoff_rate": 2.0,
        "should_retry": is_transient,
    }


def run(
    kind: StepKind, name: str, order_id: str, action: Action, *, reason: str | None = None
) -> Outcome:
    """Call downstream operation `name` for the order, journaling the attempt around it.

    Returns the service's outcome (done or refused). A forward step also reports a cancel
    request: `{"outcome": "cancelled"}` if it came before the call (this attempt did
    nothing, though an earlier one, cut short by a crash, may have), or `"cancel_requested"`
    added to the outcome if it came during the call.

    While the database cannot be reached, or this process's lease on its executor id has
    lapsed, the step waits (runtime.database, runtime.lease) and uses up none of its tries.
    A forward step's transient errors propagate for DBOS to retry.
    Anything else, the journal's own writes included, and every error of a compensation,
    becomes StepFailed, so the workflow sees the same class of error on its first run as on
    a replay.
    """
    began = time.perf_counter()
    with logs.step(name) as context:
        try:
            tried = _run_once(kind, name, order_id, action, reason, context)
        except Exception as error:
            result: journal.AttemptOutcome = "transient" if is_transient(error) else "error"
            _journal_failure(order_id, kind, name, f"{type(error).__name__}: {error}", result)
            metrics.step_attempt(name, result, time.perf_counter() - began)
            log.warning(
                "%s failed%s: %s: %s",
                _title(kind, name),
                ", to be tried again" if result == "transient" else "",
                type(error).__name__,
                error,
            )
            if kind == "forward" and is_transient(error):
                raise
            raise StepFailed(f"{name}: {type(error).__name__}: {error}") from error
        outcome, cancel = tried.outcome, tried.finish.cancel
        if tried.called:
            seconds = time.perf_counter() - began
            refused = is_refused(outcome)
            metrics.step_attempt(name, "refused" if refused else "ok", seconds)
            if refused:
                log.info("%s refused: %s", _title(kind, name), outcome.get("reason"))
            else:
                log.info("%s done in %.0f ms", _title(kind, name), seconds * 1000)
            if tried.finish.completed_saga:
                metrics.saga_finished("COMPLETED")
                log.info("saga COMPLETED")
    if cancel is not None and kind == "forward" and not is_refused(outcome):
        return {**outcome, "cancel_requested": cancel}
    return outcome


class Recorded(NamedTuple):
    """What a step's journal write recorded, as told to a choreographed order's handler
    (orders.events.announce) in the same transaction, so that its event commits with it."""

    outcome: Outcome  # the service's answer, or `cancelled(...)` if the step did not run
    cancel: str | None  # the cancel reason, if a cancel was requested


class _Tried(NamedTuple):
    outcome: Outcome
    finish: journal.Finish  # what recording the outcome said (nothing, if not called)
    called: bool  # the service was called: a real attempt (else a cancel or a replay)


_NOT_CALLED = journal.Finish(None, False)
# What a step answers when its handler had announced its outcome already (not to be acted on).
ANNOUNCED: Outcome = {"outcome": "done", "announced_before": True}


@database.outlasting_outages
def _run_once(
    kind: StepKind,
    name: str,
    order_id: str,
    action: Action,
    reason: str | None,
    context: dict[str, Any],
) -> _Tried:
    """One try. Run again from the top after a database outage: the journal and the
    services are idempotent. `context`: the step's log context, given its attempt number."""
    with database.connection() as conn:
        if events.announced(conn):  # a choreographed order's handler, replayed after a crash
            log.info("%s not run again: done and announced before a restart", _title(kind, name))
            return _Tried(ANNOUNCED, _NOT_CALLED, called=False)
        start = journal.step_started(conn, order_id, kind, name, reason)
        if start.cancel is not None and kind == "forward":
            outcome = cancelled(start.cancel, may_have_acted=start.began_before)
            # Not in the same transaction, and need not be: a cancel is never taken back,
            # so a replay after a crash in between finds it again and announces it then.
            events.announce(conn, Recorded(outcome, start.cancel))
    if start.cancel is not None and kind == "forward":
        log.info("%s not run: the saga was cancelled", _title(kind, name))
        return _Tried(outcome, _NOT_CALLED, called=False)
    if start.completed is not None:  # it completed before a crash: that outcome stands
        return _Tried(dict(start.completed), _NOT_CALLED, called=False)
    context["attempt"] = start.attempt
    # Only while this process's lease holds: once it has lapsed, another process may soon
    # take this saga over, and the two must not both act (runtime/lease.py).
    lease.wait_until_held()
    outcome = transport.call(name, action)
    with database.connection() as conn, events.atomic(conn):
        finish = journal.step_finished(conn, order_id, kind, name, outcome)
        events.announce(conn, Recorded(outcome, finish.cancel))
    return _Tried(outcome, finish, True)


def _title(kind: StepKind, name: str) -> str:
    return name if kind == "forward" else f"{name} (compensation)"


def cancelled(reason: str, *, may_have_acted: bool) -> Outcome:
    """A forward step's answer when the saga was cancelled before this attempt acted."""
    return {"outcome": "cancelled", "reason": reason, "may_have_acted": may_have_acted}


def _journal_failure(
    order_id: str, kind: StepKind, name: str, error: str, outcome: journal.AttemptOutcome
) -> None:
    try:
        with database.connection() as conn:
            journal.step_failed(conn, order_id, kind, name, error, outcome)
    except Exception:  # the step's own error matters more; DBOS records that one
        log.warning("could not journal the failure of %s for %s", name, order_id, exc_info=True)
