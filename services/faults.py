"""Switches that make one downstream operation unreachable, for demos and chaos tests."""

from typing import Any, Literal, get_args

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


def is_down(conn: psycopg.Connection[Any], operation: str) -> bool:
    row = conn.execute(
        "SELECT down FROM faults.switches WHERE operation = %s", (operation,)
    ).fetchone()
    return bool(row and row[0])


def set_down(conn: psycopg.Connection[Any], operation: str, down: bool) -> None:
    conn.execute(
        """INSERT INTO faults.switches (operation, down) VALUES (%s, %s)
           ON CONFLICT (operation) DO UPDATE SET down = EXCLUDED.down, updated_at = now()""",
        (operation, down),
    )


def switches(conn: psycopg.Connection[Any]) -> dict[str, bool]:
    """Every operation with whether it is down now."""
    rows = conn.execute("SELECT operation, down FROM faults.switches").fetchall()
    down = {op: bool(is_down) for op, is_down in rows}
    return {op: down.get(op, False) for op in OPERATIONS}
