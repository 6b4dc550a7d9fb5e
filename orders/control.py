"""What a person can ask of a running saga: approve, reject, cancel, retry compensation.

Each request is settled here, atomically, in the order's row, by one statement that also
records it in orders.operator_actions with who asked and why (a refused request records
nothing); the caller then wakes the saga (a DBOS message with an idempotency key, so asking
twice wakes it once).
"""

from dataclasses import dataclass
from typing import Any, Literal

import psycopg

from orders import events
from orders.errors import NotAllowedNow, OrderNotFound
from orders.model import APPROVAL_TOPIC, RETRY_TOPIC

Conn = psycopg.Connection[Any]
Decision = Literal["approved", "rejected"]
ACTION_OF: dict[Decision, str] = {"approved": "approve", "rejected": "reject"}
UNKNOWN_OPERATOR = "unknown"

# Appended to each request's statement: record it if the statement took it (`saga` is the
# CTE that settled it, returning the order's id).
_RECORDED = """,
           recorded AS (
               INSERT INTO orders.operator_actions (order_id, action, by, reason)
               SELECT order_id, %(action)s, %(by)s, %(note)s FROM saga)"""


@dataclass(frozen=True)
class Operator:
    """Who asks, and why (both as given: the X-Operator header and the body's reason)."""

    name: str = UNKNOWN_OPERATOR
    reason: str | None = None

    def params(self, action: str) -> dict[str, Any]:
        return {"action": action, "by": self.name, "note": self.reason}


@dataclass(frozen=True)
class Wake:
    """A message to send the saga so it notices the request now: to its workflow, or a
    choreographed order's handler carrying it (the one waiting for approval, or parked)."""

    workflow_id: str
    topic: str
    idempotency_key: str


def decide(conn: Conn, order_id: str, decision: Decision, operator: Operator) -> Wake:
    """Record the approver's decision; allowed only while AWAITING_APPROVAL with no other
    decision (the same decision again is accepted: the first request may not have woken it)."""
    row = conn.execute(
        f"""WITH saga AS (
               UPDATE orders.orders
                  SET decision = %(decision)s, decided_at = COALESCE(decided_at, now()),
                      updated_at = now()
                WHERE order_id = %(order_id)s AND state = 'AWAITING_APPROVAL'
                  AND COALESCE(decision, %(decision)s) = %(decision)s
                  AND cancel_requested_at IS NULL AND approval_deadline > now()
            RETURNING saga_id, order_id, {events.CARRIER}){_RECORDED}
           SELECT saga_id, carrier FROM saga""",
        {"order_id": order_id, "decision": decision, **operator.params(ACTION_OF[decision])},
    ).fetchone()
    if row is None:
        state, decided, cancelled = _state(conn, order_id)
        if cancelled:
            raise NotAllowedNow(f"order {order_id!r} was cancelled; it cannot be {decision}")
        if decided == "timed_out" or (decided is None and state == "AWAITING_APPROVAL"):
            raise NotAllowedNow(f"the approval of order {order_id!r} timed out; it is {state}")
        if decided:
            raise NotAllowedNow(f"order {order_id!r} was already {decided}; it is {state}")
        raise NotAllowedNow(
            f"order {order_id!r} is {state}; only an order AWAITING_APPROVAL can be {decision}"
        )
    return _decision_wake(row[0], row[1])


def cancel(conn: Conn, order_id: str, operator: Operator) -> Wake | None:
    """Ask the saga to stop and undo what it did; refused once it has ended.

    Returns the message to wake it if it is waiting for approval (elsewhere it notices the
    request at its next step). Asking again changes nothing in the saga (it is recorded as
    asked again). A choreographed order gets its OrderCancelled event, once: no service
    needs telling (each sees the cancel at its next step, in the order's row, as the
    orchestrated saga's steps do), but the order's events show it.
    """
    text = "cancelled by request" + (f": {operator.reason}" if operator.reason else "")
    row = conn.execute(
        f"""WITH saga AS (
               UPDATE orders.orders
                  SET cancel_requested_at = COALESCE(cancel_requested_at, now()),
                      cancel_reason = COALESCE(cancel_reason, %(text)s), updated_at = now()
                WHERE order_id = %(order_id)s AND state NOT IN ('COMPLETED', 'FAILED')
            RETURNING saga_id, state, order_id, coordination, cancel_reason,
                      {events.CARRIER}){_RECORDED},
           announced AS (
               INSERT INTO orders.events (order_id, type, by, payload)
               SELECT order_id, %(event)s, %(emitter)s, jsonb_build_object('reason', cancel_reason)
                 FROM saga WHERE coordination = 'choreography'
               ON CONFLICT (order_id, type) DO NOTHING)
           SELECT saga_id, state, carrier FROM saga""",
        {
            "text": text,
            "order_id": order_id,
            "event": events.ORDER_CANCELLED,
            "emitter": events.EMITTED_BY[events.ORDER_CANCELLED],
            **operator.params("cancel"),
        },
    ).fetchone()
    if row is None:
        state, _, _ = _state(conn, order_id)
        raise NotAllowedNow(f"order {order_id!r} is {state}; it can no longer be cancelled")
    saga_id, state, carrier = row
    return _cancel_wake(saga_id, carrier) if state == "AWAITING_APPROVAL" else None


def retry_compensation(conn: Conn, order_id: str, operator: Operator) -> Wake:
    """Ask a parked saga to try its remaining compensations again."""
    row = conn.execute(
        f"""WITH saga AS (
               SELECT saga_id, parked_count, order_id, {events.CARRIER} FROM orders.orders
                WHERE order_id = %(order_id)s AND state = 'COMPENSATION_FAILED'){_RECORDED}
           SELECT saga_id, parked_count, carrier FROM saga""",
        {"order_id": order_id, **operator.params("retry-compensation")},
    ).fetchone()
    if row is None:
        state, _, _ = _state(conn, order_id)
        raise NotAllowedNow(
            f"order {order_id!r} is {state}; only an order in COMPENSATION_FAILED can be retried"
        )
    saga_id, parked, carrier = row
    return Wake(carrier, RETRY_TOPIC, f"{saga_id}:retry:{parked}")  # one per time it parked


def unsent_wakes(conn: Conn, min_age_seconds: float = 0.0) -> list[Wake]:
    """Wake-ups for requests settled in a row (at least `min_age_seconds` ago) whose saga
    may not have heard of them (the process died, or the database went away, between the
    two). Sending them again is harmless: they have their keys."""
    rows = conn.execute(
        f"""SELECT saga_id, {events.CARRIER}, decision IS NOT NULL FROM orders.orders
            WHERE state = 'AWAITING_APPROVAL'
              AND (decision IS NOT NULL OR cancel_requested_at IS NOT NULL)
              AND updated_at <= now() - make_interval(secs => %s)""",
        (min_age_seconds,),
    ).fetchall()
    return [
        _decision_wake(saga_id, carrier) if decided else _cancel_wake(saga_id, carrier)
        for saga_id, carrier, decided in rows
    ]


def _decision_wake(saga_id: str, carrier: str) -> Wake:
    return Wake(carrier, APPROVAL_TOPIC, f"{saga_id}:decision")


def _cancel_wake(saga_id: str, carrier: str) -> Wake:
    return Wake(carrier, APPROVAL_TOPIC, f"{saga_id}:cancel")


def _state(conn: Conn, order_id: str) -> tuple[str, str | None, bool]:
    row = conn.execute(
        """SELECT state, decision, cancel_requested_at IS NOT NULL
             FROM orders.orders WHERE order_id = %s""",
        (order_id,),
    ).fetchone()
    if row is None:
        raise OrderNotFound(order_id)
    return str(row[0]), row[1], bool(row[2])
