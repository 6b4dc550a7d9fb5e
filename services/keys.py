"""Idempotency keys: what a key holds, and closing one when its effect is undone."""

from collections.abc import Callable
from typing import Any

import psycopg
from psycopg import sql

from services.outcomes import Outcome, done

Conn = psycopg.Connection[Any]


def key_status(conn: Conn, table: str, key: str) -> str | None:
    """The status of the row `table` holds under `key` (None: nothing yet)."""
    query = sql.SQL("SELECT status FROM {} WHERE idempotency_key = %s").format(
        sql.Identifier(*table.split("."))
    )
    row = conn.execute(query, (key,)).fetchone()
    return None if row is None else str(row[0])


def close_key(
    conn: Conn,
    table: str,
    key: str,
    *,
    in_effect: str,
    undo: Callable[[], Outcome | None],
    void: Callable[[], bool],
    verb: str,
) -> Outcome:
    """Undo what `key` holds, or, with nothing there yet, void the key so that a forward call
    arriving late (still in flight in a process presumed dead) is refused, never acting.

    `undo` undoes a row whose status is `in_effect` and answers its outcome, or None when
    there is none; `void` stores the void marker, False if the key was taken meanwhile.
    The answer when nothing was undone is `{verb: False}` (and `voided` if it voided).
    """
    with conn.transaction():
        # If a forward call claims the key after `undo` found nothing, `void` waits for it
        # and conflicts; the second pass then undoes what that call did.
        for _ in range(2):
            undone = undo()
            if undone is not None:
                return undone
            if void():
                return done(**{verb: False}, voided=True)
            if key_status(conn, table, key) != in_effect:
                return done(**{verb: False})
    raise RuntimeError(f"{table} {key!r} kept changing while being undone")
