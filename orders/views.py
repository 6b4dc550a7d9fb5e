"""Reading saga state for the API: the saga_status view plus each step's journal row."""

from typing import Any, NamedTuple

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from orders import events
from orders.errors import OrderNotFound
from orders.model import FORWARD_STEPS, SAGA_STATES, TERMINAL_STATES

Conn = psycopg.Connection[Any]

_STEP_COLUMNS = "name, status, attempts, error, started_at, finished_at"
_STEP_KEYS = ("name", "status", "attempts", "error", "started_at", "finished_at", "history")
# Each attempt of a step (orders.step_attempts), oldest first, as JSON (times in UTC: every
# session is, runtime/database.py).
_HISTORY = """coalesce((
        SELECT jsonb_agg(jsonb_build_object(
                   'attempt', a.attempt, 'started_at', a.started_at,
                   'finished_at', a.finished_at, 'outcome', a.outcome, 'error', a.error)
                 ORDER BY a.attempt)
          FROM orders.step_attempts a
         WHERE a.order_id = s.order_id AND a.kind = s.kind AND a.name = s.name), '[]')"""
# The operators' accepted requests (orders.operator_actions), oldest first.
_ACTIONS = """coalesce((
        SELECT jsonb_agg(jsonb_build_object(
                   'action', a.action, 'at', a.at, 'by', a.by, 'reason', a.reason)
                 ORDER BY a.id)
          FROM orders.operator_actions a WHERE a.order_id = v.order_id), '[]')"""


def order_view(conn: Conn, order_id: str) -> dict[str, Any] | None:
    """The saga of one order with its four forward steps and the compensations it ran."""
    with conn.cursor(row_factory=dict_row) as cur:
        saga = cur.execute(
            f"""SELECT order_id, saga_id, state, total_cents, error, current_step, dbos_status,
                      created_at, updated_at, approval_deadline, decision, cancel_requested_at,
                      needs_attention, attention_reason, trace_id, parked_count, executor_id,
                      application_version, customer_id, coordination, workflow_id,
                      {_ACTIONS} AS actions
                 FROM saga_status v WHERE order_id = %s""",
            (order_id,),
        ).fetchone()
        if saga is None:
            return None
        rows = cur.execute(
            f"""SELECT kind, {_STEP_COLUMNS}, {_HISTORY} AS history FROM orders.saga_steps s
                 WHERE order_id = %s ORDER BY seq""",
            (order_id,),
        ).fetchall()
    deadline, decision = saga.pop("approval_deadline"), saga.pop("decision")
    saga["approval"] = None if deadline is None else {"deadline": deadline, "decision": decision}
    forward = {row["name"]: row for row in rows if row["kind"] == "forward"}
    saga["steps"] = [_step(forward.get(name), name) for name in FORWARD_STEPS]
    saga["compensations"] = [_step(row, row["name"]) for row in rows if row["kind"] != "forward"]
    saga["events"] = (
        events.of_order(conn, order_id) if saga["coordination"] != "orchestration" else []
    )
    return saga


def has_ended(conn: Conn, order_id: str) -> bool:
    """The saga reached COMPLETED or FAILED and its workflow has returned too; for a
    choreographed one, its end event (OrderCompleted, OrderFailed) is written and the
    handler that wrote it has returned (the one before it made the order COMPLETED)."""
    row = conn.execute(
        """SELECT state, dbos_status, coordination = 'choreography', EXISTS (
                      SELECT 1 FROM orders.events e
                       WHERE e.order_id = v.order_id AND e.type = ANY(%s))
             FROM saga_status v WHERE order_id = %s""",
        (list(events.END_EVENTS), order_id),
    ).fetchone()
    if row is None:
        return False
    state, status, choreographed, end_written = row
    if state not in TERMINAL_STATES or status in ("PENDING", "ENQUEUED"):
        return False
    return bool(end_written) and status is not None if choreographed else True


SUMMARY_COLUMNS = (
    "order_id, saga_id, state, total_cents, error, current_step, customer_id, "
    "needs_attention, attention_reason, coordination, created_at, updated_at"
)


def list_orders(
    conn: Conn,
    state: str | None,
    limit: int,
    attention: bool | None = None,
    search: str | None = None,
    before: str | None = None,
    coordination: str | None = None,
) -> list[dict[str, Any]]:
    """Summaries, newest first, optionally only those in `state`, only those that need
    attention (`attention` True) or only those that do not (False), only those whose order
    id starts with `search` or whose customer id is `search`, and only those listed after
    order `before` (the last of the previous page), and only those of `coordination`.

    Only the filters given are in the SQL, so that the planner sees them as they are: with
    `needs_attention` it reads the partial index orders_unfinished (migration 0005) backwards,
    not every order; a search reads orders_by_id_prefix and orders_by_customer (0006)."""
    filters = [sql.SQL("true")]
    params: dict[str, Any] = {"limit": limit}
    if state is not None:
        filters.append(sql.SQL("state = %(state)s"))
        params["state"] = state
    if attention is True:
        filters.append(sql.SQL("needs_attention"))
    elif attention is False:
        filters.append(sql.SQL("NOT needs_attention"))
    if search is not None:
        filters.append(sql.SQL("(order_id LIKE %(prefix)s OR customer_id = %(search)s)"))
        params["search"] = search
        params["prefix"] = _escape_like(search) + "%"
    if coordination is not None:
        filters.append(sql.SQL("coordination = %(coordination)s"))
        params["coordination"] = coordination
    if before is not None:
        filters.append(
            sql.SQL(
                """(created_at, order_id) < (SELECT created_at, order_id FROM orders.orders
                                              WHERE order_id = %(before)s)"""
            )
        )
        params["before"] = before
    query = sql.SQL(
        """SELECT {columns} FROM saga_status WHERE {filters}
            ORDER BY created_at DESC, order_id DESC LIMIT %(limit)s"""
    ).format(columns=sql.SQL(SUMMARY_COLUMNS), filters=sql.SQL(" AND ").join(filters))
    with conn.cursor(row_factory=dict_row) as cur:
        found = cur.execute(query, params).fetchall()
    if before is not None and not found and not _exists(conn, before):
        raise OrderNotFound(before)  # a wrong cursor, not the end of the list
    return found


def _exists(conn: Conn, order_id: str) -> bool:
    row = conn.execute("SELECT 1 FROM orders.orders WHERE order_id = %s", (order_id,))
    return row.fetchone() is not None


class Fleet(NamedTuple):
    """The whole fleet now."""

    counts: dict[str, int]  # sagas in each state (every state, 0 included)
    oldest_unfinished_seconds: float  # age of the oldest not COMPLETED/FAILED (0: none)
    needing_attention: int


def fleet(conn: Conn) -> Fleet:
    """The counts by state (from the index on (state, created_at)), the oldest unfinished
    saga and the count needing attention (from the partial index on unfinished sagas): one
    round trip, the same for /metrics and the console."""
    row = conn.execute(
        """SELECT (SELECT jsonb_object_agg(state, n)
                     FROM (SELECT state, count(*) AS n FROM orders.orders GROUP BY state) s),
                  (SELECT extract(epoch FROM now() - min(created_at)) FROM orders.orders
                    WHERE state NOT IN ('COMPLETED', 'FAILED')),
                  (SELECT count(*) FROM saga_status WHERE needs_attention)"""
    ).fetchone()
    assert row is not None
    by_state, oldest, needing_attention = row
    counts = dict.fromkeys(SAGA_STATES, 0) | (by_state or {})
    return Fleet(counts, float(oldest or 0), int(needing_attention))


def _escape_like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _step(row: dict[str, Any] | None, name: str) -> dict[str, Any]:
    if row is None:
        return {"name": name, "status": "pending", "attempts": 0, "error": None,
                "started_at": None, "finished_at": None, "history": []}  # fmt: skip
    return {key: row[key] for key in _STEP_KEYS}
