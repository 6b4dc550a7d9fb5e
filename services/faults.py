"""Switches that make one downstream operation unreachable or slow, for demos and chaos."""

from typing import Any, Literal, NamedTuple, get_args

import psycopg

Operation = Literal[
    "reserve_inventory",
    "process_payment",
    "create_shipment",
    "send_confirmation",
    "release_reservation",
    "refund_payment",
    "cancel_shipment",
    "send_cancellation_notice",
]
OPERATIONS: tuple[str, ...] = get_args(Operation)


class Switch(NamedTuple):
    down: bool
    latency_ms: int


def switch(conn: psycopg.Connection[Any], operation: str) -> Switch:
    row = conn.execute(
        "SELECT down, latency_ms FROM faults.switches WHERE operation = %s", (operation,)
    ).fetchone()
    return Switch(bool(row[0]), int(row[1])) if row else Switch(False, 0)


def set_switch(conn: psycopg.Connection[Any], operation: str, down: bool, latency_ms: int) -> None:
    conn.execute(
        """INSERT INTO faults.switches (operation, down, latency_ms) VALUES (%s, %s, %s)
           ON CONFLICT (operation) DO UPDATE
              SET down = EXCLUDED.down, latency_ms = EXCLUDED.latency_ms, updated_at = now()""",
        (operation, down, latency_ms),
    )


def switches(conn: psycopg.Connection[Any]) -> dict[str, Switch]:
    """Every operation with its switch."""
    rows = conn.execute("SELECT operation, down, latency_ms FROM faults.switches").fetchall()
    known = {op: Switch(bool(down), int(latency)) for op, down, latency in rows}
    return {op: known.get(op, Switch(False, 0)) for op in OPERATIONS}
