"""Reading saga state for the API: the saga_status view plus each step's journal row."""

from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from orders.model import FORWARD_STEPS, TERMINAL_STATES

Conn = psycopg.Connection[Any]

_STEP_COLUMNS = "name, status, attempts, error, started_at, finished_at"


def order_view(conn: Conn, order_id: str) -> dict[str, Any] | None:
    """The saga of one order with its four forward steps and the compensations it ran."""
    with conn.cursor(row_factory=dict_row) as cur:
        saga = cur.execute(
            """SELECT order_id, saga_id, state, total_cents, error, current_step, dbos_status,
                      created_at, updated_at, approval_deadline, decision, cancel_requested_at,
                      needs_attention, attention_reason, trace_id
                 FROM saga_status WHERE order_id = %s""",
            (order_id,),
        ).fetchone()
        if saga is None:
            return None
        rows = cur.execute(
            f"""SELECT kind, {_STEP_COLUMNS} FROM orders.saga_steps
                 WHERE order_id = %s ORDER BY seq""",
            (order_id,),
        ).fetchall()
    deadline, decision = saga.pop("approval_deadline"), saga.pop("decision")
    saga["approval"] = None if deadline is None else {"deadline": deadline, "decision": decision}
    forward = {row["name"]: row for row in rows if row["kind"] == "forward"}
    saga["steps"] = [_step(forward.get(name), name) for name in FORWARD_STEPS]
    saga["compensations"] = [_step(row, row["name"]) for row in rows if row["kind"] != "forward"]
    return saga


def has_ended(conn: Conn, order_id: str) -> bool:
    """The saga reached COMPLETED or FAILED and its workflow has returned too."""
    row = conn.execute(
        "SELECT state, dbos_status FROM saga_status WHERE order_id = %s", (order_id,)
    ).fetchone()
    return row is not None and row[0] in TERMINAL_STATES and row[1] not in ("PENDING", "ENQUEUED")


def list_orders(
    conn: Conn, state: str | None, limit: int, attention: bool | None = None
) -> list[dict[str, Any]]:
    """Summaries, newest first, optionally only those in `state`, and only those that need
    attention (`attention` True) or only those that do not (False).

    Only the filters given are in the SQL, so that the planner sees them as they are: with
    `needs_attention` it reads the partial index orders_unfinished (migration 0005) backwards,
    not every order."""
    filters = [sql.SQL("true")]
    params: dict[str, Any] = {"limit": limit}
    if state is not None:
        filters.append(sql.SQL("state = %(state)s"))
        params["state"] = state
    if attention is True:
        filters.append(sql.SQL("needs_attention"))
    elif attention is False:
        filters.append(sql.SQL("NOT needs_attention"))
    query = sql.SQL(
        """SELECT order_id, saga_id, state, total_cents, error, created_at, updated_at
             FROM saga_status WHERE {}
            ORDER BY created_at DESC, order_id DESC LIMIT %(limit)s"""
    ).format(sql.SQL(" AND ").join(filters))
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(query, params).fetchall()


def _step(row: dict[str, Any] | None, name: str) -> dict[str, Any]:
    if row is None:
        return {"name": name, "status": "pending", "attempts": 0, "error": None,
                "started_at": None, "finished_at": None}  # fmt: skip
    return {key: row[key] for key in ("name", "status", "attempts", "error",
                                       "started_at", "finished_at")}  # fmt: skip
