"""The saga's progress, written by its own steps: one SQL statement per change.

Writing here (about 0.2 ms) rather than through extra DBOS operations (one step's cost each)
keeps the saga near DBOS's floor, and makes the state plain to read in psql.

Every statement that moves the saga updates its order row first and reads the cancel request
from that same (locked) row, so a cancel and a step can never both think they came first.
Nothing here takes a finished saga back: a step re-run after the end (a crash before its
checkpoint, an operator's fork) only touches its own journal row, and a COMPLETED saga can
never become anything else. (One exception, for operators' forks of a FAILED saga: if a
compensation re-run there gets stuck, the saga parks, so that it can be retried.)
"""

from typing import Any, Literal, NamedTuple

import psycopg
from psycopg.types.json import Jsonb

from orders.model import COMPENSATION_OF, FORWARD_STEPS, StepKind

Conn = psycopg.Connection[Any]

PRICED_BY = "reserve_inventory"  # the reservation fixes the order's total
_CANCEL_REASON = "COALESCE(o.cancel_reason, 'cancelled by request')"
_CANCELLED = f"CASE WHEN o.cancel_requested_at IS NOT NULL THEN {_CANCEL_REASON} END"
_ENDED = "o.state IN ('COMPLETED', 'FAILED')"
_HALTED = "(%(kind)s = 'forward' AND o.cancel_requested_at IS NOT NULL)"
_DONE = "(%(kind)s = 'forward' AND EXISTS (SELECT 1 FROM prior WHERE status = 'completed'))"
# How the step's latest attempt ended (its number is the step row's count, which the
# statement that says so does not change), into orders.step_attempts.
_ATTEMPT_ENDED = """
               UPDATE orders.step_attempts a
                  SET finished_at = now(), outcome = %(outcome)s, error = %(error)s
                 FROM orders.saga_steps s
                WHERE s.order_id = %(order_id)s AND s.kind = %(kind)s AND s.name = %(name)s
                  AND a.order_id = s.order_id AND a.kind = s.kind AND a.name = s.name
                  AND a.attempt = s.attempts AND a.finished_at IS NULL"""

AttemptOutcome = Literal["ok", "refused", "transient", "error"]


class Start(NamedTuple):
    """What a step learns as it starts."""

    cancel: str | None  # the cancel reason, if a cancel was requested
    began_before: bool  # an earlier attempt began: it may have acted, before a crash
    completed: Any  # a forward step already completed: its recorded outcome (else None)
    attempt: int  # this attempt's number, counted across crashes (0: none is recorded)


class Finish(NamedTuple):
    """What a step learns as it records its outcome."""

    cancel: str | None  # the cancel reason, if a cancel was requested
    completed_saga: bool  # this outcome completed the saga (the last forward step, done)


def step_started(conn: Conn, order_id: str, kind: StepKind, name: str, reason: str | None) -> Start:
    """Record an attempt of a step as executing, and the saga as being at that step.

    A cancelled forward step must not act, and this attempt is not recorded. Neither is an
    attempt of a forward step that already completed (a crash came before DBOS checkpointed
    it): its recorded outcome stands, the service is not called again, and a saga it
    completed stays COMPLETED. A compensation marks the step it undoes as compensating and
    keeps `reason` as the saga's error.
    """
    row = conn.execute(
        f"""WITH prior AS (  -- this step's row as it was before this statement
               SELECT status, output FROM orders.saga_steps
                WHERE order_id = %(order_id)s AND kind = %(kind)s AND name = %(name)s),
           saga AS (
               UPDATE orders.orders o
                  SET state = CASE WHEN {_ENDED} OR {_HALTED} OR {_DONE} THEN o.state
                                   ELSE %(state)s END,
                      current_step = CASE WHEN {_ENDED} OR {_HALTED} OR {_DONE}
                                          THEN o.current_step ELSE %(name)s END,
                      error = CASE WHEN {_ENDED} THEN o.error
                                   ELSE COALESCE(o.error, %(reason)s) END,
                      updated_at = CASE WHEN {_ENDED} THEN o.updated_at ELSE now() END
                WHERE o.order_id = %(order_id)s
            RETURNING {_HALTED} AS halted, {_CANCELLED} AS cancelled),
           go AS (SELECT 1 FROM saga WHERE NOT halted AND NOT {_DONE}),
           step AS (
               INSERT INTO orders.saga_steps AS s
                      (order_id, kind, name, status, attempts, started_at)
               SELECT %(order_id)s, %(kind)s, %(name)s, 'executing', 1, now() FROM go
               ON CONFLICT (order_id, kind, name) DO UPDATE
                  SET status = 'executing', attempts = s.attempts + 1, finished_at = NULL
               RETURNING s.attempts),
           tried AS (
               INSERT INTO orders.step_attempts (order_id, kind, name, attempt)
               SELECT %(order_id)s, %(kind)s, %(name)s, attempts FROM step),
           undone AS (
               UPDATE orders.saga_steps SET status = 'compensating'
                WHERE order_id = %(order_id)s AND kind = 'forward' AND name = %(undoes)s
                  AND EXISTS (SELECT 1 FROM go))
           SELECT cancelled, EXISTS (SELECT 1 FROM prior),
                  (SELECT output FROM prior WHERE status = 'completed' AND %(kind)s = 'forward'),
                  (SELECT attempts FROM step)
             FROM saga""",
        {
            "order_id": order_id,
            "kind": kind,
            "name": name,
            "undoes": COMPENSATION_OF.get(name),
            "state": "PENDING" if kind == "forward" else "COMPENSATING",
            "reason": reason,
        },
    ).fetchone()
    if row is None:
        return Start(None, False, None, 0)
    return Start(row[0], bool(row[1]), row[2], row[3] or 0)


def step_finished(conn: Conn, order_id: str, kind: StepKind, name: str, outcome: Any) -> Finish:
    """Record what the step's call answered: done, or refused (a failed forward step).

    The last forward step completing completes the saga, unless a cancel came first. A
    compensation completing marks the step it undid as compensated.
    """
    refused = outcome.get("outcome") == "refused"
    row = conn.execute(
        f"""WITH saga AS (
               UPDATE orders.orders o
                  SET total_cents = COALESCE(%(total_cents)s, o.total_cents),
                      state = CASE WHEN %(completes)s AND o.cancel_requested_at IS NULL
                                   THEN 'COMPLETED' ELSE o.state END,
                      current_step = CASE WHEN %(completes)s AND o.cancel_requested_at IS NULL
                                          THEN NULL ELSE o.current_step END,
                      updated_at = now()
                WHERE o.order_id = %(order_id)s AND NOT {_ENDED}
            RETURNING {_CANCELLED} AS cancelled, o.state = 'COMPLETED' AS completed),
           step AS (
               UPDATE orders.saga_steps
                  SET status = %(status)s, error = %(error)s, output = %(output)s,
                      finished_at = now()
                WHERE order_id = %(order_id)s AND kind = %(kind)s AND name = %(name)s),
           undone AS (
               UPDATE orders.saga_steps SET status = 'compensated'
                WHERE order_id = %(order_id)s AND kind = 'forward' AND name = %(undoes)s),
           tried AS ({_ATTEMPT_ENDED})
           SELECT cancelled, completed FROM saga""",
        {
            "order_id": order_id,
            "kind": kind,
            "name": name,
            "status": "failed" if refused else "completed",
            "outcome": "refused" if refused else "ok",
            "error": outcome.get("reason") if refused else None,
            "output": Jsonb(outcome),
            "undoes": COMPENSATION_OF.get(name),
            "total_cents": outcome.get("total_cents") if name == PRICED_BY else None,
            "completes": kind == "forward" and name == FORWARD_STEPS[-1] and not refused,
        },
    ).fetchone()
    return Finish(row[0], bool(row[1])) if row else Finish(None, False)


def step_failed(
    conn: Conn, order_id: str, kind: StepKind, name: str, error: str, outcome: AttemptOutcome
) -> None:
    """Record that an attempt of a step raised (it may be tried again): `outcome` is
    'transient' (worth another try) or 'error'."""
    conn.execute(
        f"""WITH step AS (
               UPDATE orders.saga_steps
                  SET status = 'failed', error = %(error)s, finished_at = now()
                WHERE order_id = %(order_id)s AND kind = %(kind)s AND name = %(name)s),
           tried AS ({_ATTEMPT_ENDED})
           UPDATE orders.orders SET updated_at = now()
            WHERE order_id = %(order_id)s AND state NOT IN ('COMPLETED', 'FAILED')""",
        {"order_id": order_id, "kind": kind, "name": name, "error": error, "outcome": outcome},
    )


def approval_opened(conn: Conn, order_id: str, timeout_seconds: float) -> tuple[Any, float]:
    """Put the saga in AWAITING_APPROVAL with its deadline (kept if already set), unless a
    cancel came first. Returns the cancel reason (or None) and the seconds left until the
    deadline, which is what the saga then waits for."""
    row = conn.execute(
        f"""UPDATE orders.orders o
               SET state = CASE WHEN o.cancel_requested_at IS NULL
                                THEN 'AWAITING_APPROVAL' ELSE o.state END,
                   current_step = CASE WHEN o.cancel_requested_at IS NULL
                                       THEN NULL ELSE o.current_step END,
                   approval_deadline = COALESCE(o.approval_deadline,
                                                now() + make_interval(secs => %s)),
                   updated_at = now()
             WHERE o.order_id = %s AND NOT {_ENDED}
         RETURNING {_CANCELLED},
                   GREATEST(0, EXTRACT(EPOCH FROM o.approval_deadline - now()))::float8""",
        (timeout_seconds, order_id),
    ).fetchone()
    return (row[0], float(row[1])) if row else (None, 0.0)


def approval_seconds_left(conn: Conn, order_id: str) -> float | None:
    """Seconds until the order's approval deadline, by the database's clock (0 once passed;
    None if no deadline was set)."""
    row = conn.execute(
        """SELECT GREATEST(0, EXTRACT(EPOCH FROM approval_deadline - now()))::float8
             FROM orders.orders WHERE order_id = %s""",
        (order_id,),
    ).fetchone()
    return None if row is None or row[0] is None else float(row[0])


def approval_settled(conn: Conn, order_id: str) -> tuple[str | None, str | None]:
    """The decision that stands (approved, rejected, or else timed_out; none if a cancel
    ended the wait), and the cancel reason if a cancel was requested. Whoever wrote first
    won: a decision, or a cancel."""
    row = conn.execute(
        f"""UPDATE orders.orders o
               SET decision = CASE WHEN o.decision IS NULL AND o.cancel_requested_at IS NULL
                                   THEN 'timed_out' ELSE o.decision END,
                   decided_at = CASE WHEN o.decision IS NULL AND o.cancel_requested_at IS NULL
                                     THEN now() ELSE o.decided_at END,
                   updated_at = now()
             WHERE o.order_id = %s
         RETURNING o.decision, {_CANCELLED}""",
        (order_id,),
    ).fetchone()
    assert row is not None
    return row[0], row[1]


def saga_parked(conn: Conn, order_id: str, compensation: str) -> int:
    """The saga waits in COMPENSATION_FAILED for an operator; how many times it has parked."""
    row = conn.execute(
        """UPDATE orders.orders o
               SET state = 'COMPENSATION_FAILED', current_step = %s,
                   parked_count = o.parked_count + 1, updated_at = now()
             WHERE o.order_id = %s AND o.state <> 'COMPLETED'
         RETURNING o.parked_count""",
        (compensation, order_id),
    ).fetchone()
    if row is None:
        raise SagaAlreadyCompleted(order_id)
    return int(row[0])


def saga_failed(conn: Conn, order_id: str, reason: str) -> bool:
    """The saga is over: what it did has been undone. A reason already recorded is kept
    (a re-run of a failed saga fails again, often for a reason of its own). Whether it was
    not FAILED before (a re-run after a crash, or of a failed saga, is no new end)."""
    row = conn.execute(
        """WITH was AS (SELECT state FROM orders.orders WHERE order_id = %(order_id)s)
           UPDATE orders.orders
              SET state = 'FAILED', current_step = NULL, error = COALESCE(error, %(reason)s),
                  updated_at = now()
            WHERE order_id = %(order_id)s AND state <> 'COMPLETED'
        RETURNING (SELECT state FROM was) <> 'FAILED'""",
        {"reason": reason, "order_id": order_id},
    ).fetchone()
    if row is None:
        raise SagaAlreadyCompleted(order_id)
    return bool(row[0])


class SagaAlreadyCompleted(RuntimeError):
    """A completed order was about to be failed or parked: a bug, never to be papered over."""

    def __init__(self, order_id: str) -> None:
        super().__init__(f"order {order_id!r} is COMPLETED; refusing to mark it otherwise")
