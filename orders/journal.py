"""The saga's progress, written by its steps: one SQL statement before and after each call.

Writing here (about 0.2 ms) rather than through extra DBOS operations (one step's cost each)
keeps the saga near DBOS's floor, and makes the state plain to read in psql.
"""

from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from orders.model import COMPENSATION_OF, FORWARD_STEPS, StepKind

Conn = psycopg.Connection[Any]

PRICED_BY = "reserve_inventory"  # the reservation fixes the order's total


def step_started(conn: Conn, order_id: str, kind: StepKind, name: str, reason: str | None) -> None:
    """Record an attempt of a step as executing, and the saga as being at that step.

    A compensation also marks the step it undoes as compensating and keeps `reason`
    as the saga's error.
    """
    conn.execute(
        """WITH step AS (
               INSERT INTO orders.saga_steps AS s
                      (order_id, kind, name, status, attempts, started_at)
               VALUES (%(order_id)s, %(kind)s, %(name)s, 'executing', 1, now())
               ON CONFLICT (order_id, kind, name) DO UPDATE
                  SET status = 'executing', attempts = s.attempts + 1, finished_at = NULL),
           undone AS (
               UPDATE orders.saga_steps SET status = 'compensating'
                WHERE order_id = %(order_id)s AND kind = 'forward' AND name = %(undoes)s)
           UPDATE orders.orders
              SET state = %(state)s, current_step = %(name)s,
                  error = COALESCE(error, %(reason)s), updated_at = now()
            WHERE order_id = %(order_id)s
              -- a step re-run after the saga ended (a crash before its checkpoint, a fork)
              -- must not take a finished saga back
              AND state NOT IN ('COMPLETED', 'FAILED')""",
        {
            "order_id": order_id,
            "kind": kind,
            "name": name,
            "undoes": COMPENSATION_OF.get(name),
            "state": "PENDING" if kind == "forward" else "COMPENSATING",
            "reason": reason,
        },
    )


def step_finished(conn: Conn, order_id: str, kind: StepKind, name: str, outcome: Any) -> None:
    """Record what the step's call answered: done, or refused (a failed forward step).

    The last forward step completing completes the saga; a compensation completing marks
    the step it undid as compensated.
    """
    refused = outcome.get("outcome") == "refused"
    completes_saga = kind == "forward" and name == FORWARD_STEPS[-1] and not refused
    conn.execute(
        """WITH step AS (
               UPDATE orders.saga_steps
                  SET status = %(status)s, error = %(error)s, output = %(output)s,
                      finished_at = now()
                WHERE order_id = %(order_id)s AND kind = %(kind)s AND name = %(name)s),
           undone AS (
               UPDATE orders.saga_steps SET status = 'compensated'
                WHERE order_id = %(order_id)s AND kind = 'forward' AND name = %(undoes)s)
           UPDATE orders.orders
              SET total_cents = COALESCE(%(total_cents)s, total_cents),
                  state = CASE WHEN %(completes)s THEN 'COMPLETED' ELSE state END,
                  current_step = CASE WHEN %(completes)s THEN NULL ELSE current_step END,
                  updated_at = now()
            WHERE order_id = %(order_id)s""",
        {
            "order_id": order_id,
            "kind": kind,
            "name": name,
            "status": "failed" if refused else "completed",
            "error": outcome.get("reason") if refused else None,
            "output": Jsonb(outcome),
            "undoes": COMPENSATION_OF.get(name),
            "total_cents": outcome.get("total_cents") if name == PRICED_BY else None,
            "completes": completes_saga,
        },
    )


def step_failed(conn: Conn, order_id: str, kind: StepKind, name: str, error: str) -> None:
    """Record that an attempt of a step raised (it may be retried)."""
    conn.execute(
        """WITH step AS (
               UPDATE orders.saga_steps
                  SET status = 'failed', error = %(error)s, finished_at = now()
                WHERE order_id = %(order_id)s AND kind = %(kind)s AND name = %(name)s)
           UPDATE orders.orders SET updated_at = now() WHERE order_id = %(order_id)s""",
        {"order_id": order_id, "kind": kind, "name": name, "error": error},
    )


def saga_failed(conn: Conn, order_id: str, reason: str) -> None:
    """The saga is over: what it did has been undone. A reason already recorded is kept
    (a re-run of a failed saga fails again, often for a reason of its own)."""
    conn.execute(
        """UPDATE orders.orders
              SET state = 'FAILED', current_step = NULL, error = COALESCE(error, %s),
                  updated_at = now()
            WHERE order_id = %s""",
        (reason, order_id),
    )
