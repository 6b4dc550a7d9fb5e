"""Taking an order in: stored once per Idempotency-Key (or order_id), before its saga starts."""

import hashlib
import json
import uuid
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, cast

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from orders.errors import IdempotencyConflict
from orders.model import Coordination, Order, SagaState

Conn = psycopg.Connection[Any]


@dataclass(frozen=True)
class Placement:
    """An accepted order and its saga. `created` is False when a retry found it stored."""

    order_id: str
    saga_id: str
    state: SagaState
    order: Order
    created: bool
    coordination: Coordination = "orchestration"


Begin = Callable[[Conn, Placement], None]


def place(
    conn: Conn,
    request: dict[str, Any],
    idempotency_key: str | None,
    begin_choreography: Begin | None = None,
) -> Placement:
    """Store the order unless the same request was stored already.

    `request` is the validated body (order_id None when the client gave none; coordination,
    if absent, orchestration). A new choreographed order is begun by `begin_choreography`,
    in the transaction that stores it (its first event). Raises IdempotencyConflict when the
    key or order_id was used for a different body (the coordination included).
    """
    coordination: Coordination = request.get("coordination") or "orchestration"
    # The default leaves the fingerprint as it was before there was a choice: a request
    # retried across the upgrade still matches.
    body = {k: v for k, v in request.items() if k != "coordination"}
    fingerprint = hashlib.sha256(
        json.dumps(
            body if coordination == "orchestration" else request,
            sort_keys=True,
            separators=(",", ":"),
        ).encode()
    ).hexdigest()
    order = cast(Order, {**body, "order_id": body.get("order_id") or _new_order_id()})
    choreographed = coordination == "choreography"
    with conn.transaction() if choreographed else nullcontext():
        row = conn.execute(
            """INSERT INTO orders.orders (order_id, saga_id, idempotency_key, request,
                                         request_sha256, state, coordination)
               VALUES (%s, %s, %s, %s, %s, 'STARTED', %s)
               ON CONFLICT DO NOTHING RETURNING saga_id""",
            (
                order["order_id"],
                str(uuid.uuid4()),
                idempotency_key,
                Jsonb(order),
                fingerprint,
                coordination,
            ),
        ).fetchone()
        if row is not None:
            placed = Placement(order["order_id"], row[0], "STARTED", order, True, coordination)
            if choreographed:
                assert begin_choreography is not None
                begin_choreography(conn, placed)
            return placed
    return _stored_placement(conn, order["order_id"], idempotency_key, fingerprint)


def unstarted(conn: Conn, min_age_seconds: float = 0.0) -> list[tuple[str, Order]]:
    """(saga_id, order) of stored orchestrated orders whose saga was never created (a crash
    or an outage in between), stored at least `min_age_seconds` ago. (A choreographed order
    begins in the transaction that stores it.)"""
    rows = conn.execute(
        """SELECT o.saga_id, o.request FROM orders.orders o
            WHERE o.state = 'STARTED' AND o.coordination = 'orchestration'
              AND o.created_at <= now() - make_interval(secs => %s)
              AND NOT EXISTS
                  (SELECT 1 FROM dbos.workflow_status w WHERE w.workflow_uuid = o.saga_id)
            ORDER BY o.created_at""",
        (min_age_seconds,),
    ).fetchall()
    return [(saga_id, cast(Order, request)) for saga_id, request in rows]


def _stored_placement(
    conn: Conn, order_id: str, idempotency_key: str | None, fingerprint: str
) -> Placement:
    with conn.cursor(row_factory=dict_row) as cur:
        if idempotency_key is not None:
            cur.execute(
                "SELECT * FROM orders.orders WHERE idempotency_key = %s", (idempotency_key,)
            )
        else:
            cur.execute("SELECT * FROM orders.orders WHERE order_id = %s", (order_id,))
        stored = cur.fetchone()
    if stored is None:
        raise IdempotencyConflict(
            f"order_id {order_id!r} already belongs to a request with a different Idempotency-Key"
        )
    if stored["request_sha256"] != fingerprint:
        used = (
            f"Idempotency-Key {idempotency_key!r}" if idempotency_key else f"order_id {order_id!r}"
        )
        raise IdempotencyConflict(f"{used} was already used with a different request body")
    return Placement(
        stored["order_id"],
        stored["saga_id"],
        stored["state"],
        stored["request"],
        created=False,
        coordination=stored["coordination"],
    )


def _new_order_id() -> str:
    return f"ord_{uuid.uuid4().hex}"
