"""The saga's own bookkeeping steps: no downstream call, one journal write each. Each waits
out a database outage rather than use up its tries (runtime.database)."""

import logging
from typing import TypedDict

import psycopg
from dbos import DBOS
from psycopg_pool import PoolTimeout

from orders import events, journal
from runtime import database, metrics
from steps import runner

log = logging.getLogger(__name__)


class Settlement(TypedDict):
    decision: str | None  # approved, rejected or timed_out; None if a cancel ended the wait
    cancel: str | None  # the cancel reason, if a cancel was requested


class Opening(TypedDict):
    cancel: str | None  # the cancel reason, if a cancel came first (then it does not wait)
    seconds_left: float  # until the deadline recorded in the order's row


@DBOS.step(name="open_approval", **runner.retry_policy())
@database.outlasting_outages
def open_approval(order_id: str, timeout_seconds: float) -> Opening:
    """Put the saga in AWAITING_APPROVAL with its deadline (kept from an earlier attempt)."""
    with database.connection() as conn:
        cancel, seconds_left = journal.approval_opened(conn, order_id, timeout_seconds)
    if cancel is None:
        log.info("waiting for approval, %.0f s left", seconds_left)
    return {"cancel": cancel, "seconds_left": seconds_left}


@DBOS.step(name="settle_approval", **runner.retry_policy())
@database.outlasting_outages
def settle_approval(order_id: str) -> Settlement:
    """The decision that stands once the wait is over (timed_out if nobody decided)."""
    with database.connection() as conn:
        decision, cancel = journal.approval_settled(conn, order_id)
    log.info("approval wait over: %s", "cancelled" if cancel is not None else decision)
    return {"decision": decision, "cancel": cancel}


@DBOS.step(name="park_saga", **runner.retry_policy())
@database.outlasting_outages
def park_saga(order_id: str, compensation: str) -> int:
    """COMPENSATION_FAILED: `compensation` ran out of tries; wait for an operator."""
    with database.connection() as conn:
        count = journal.saga_parked(conn, order_id, compensation)
    metrics.saga_parked()
    log.warning(
        "saga parked in COMPENSATION_FAILED: %s ran out of tries (parked %d times); "
        "it waits for POST /orders/%s/retry-compensation",
        compensation,
        count,
        order_id,
    )
    return count


@DBOS.step(name="record_failure", **runner.retry_policy())
@database.outlasting_outages
def record_failure(order_id: str, reason: str) -> None:
    """Mark the saga FAILED once everything it did has been undone."""
    with database.connection() as conn, events.atomic(conn):
        newly = journal.saga_failed(conn, order_id, reason)
        events.announce(conn, reason)  # a choreographed order's OrderFailed
    if newly:
        metrics.saga_finished("FAILED")
    log.info("saga FAILED, everything it did undone: %s", reason)


@database.outlasting_outages
def seconds_until_deadline(order_id: str, recorded: float) -> float:
    """How long the saga's approval wait lasts if it begins now: until the deadline in the
    order's row. Not a step, on purpose: a step's recorded answer would be replayed after a
    crash between it and the wait, and the wait would then add the downtime to the deadline.
    Read again on every replay, it only sets the length of a wait not yet begun (DBOS keeps
    the end of one that began). `recorded`: open_approval's answer, used if the row cannot
    be read (an error here must not fail the saga) or has no deadline."""
    try:
        with database.connection() as conn:
            left = journal.approval_seconds_left(conn, order_id)
    except (psycopg.Error, PoolTimeout):
        log.warning("could not read the approval deadline of %s", order_id, exc_info=True)
        return recorded
    return recorded if left is None else left
