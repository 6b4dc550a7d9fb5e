"""Inventory: stock levels, prices, and all-or-nothing reservations."""

import uuid
from typing import Any

import psycopg
from psycopg.rows import dict_row

from services import keys
from services.outcomes import Outcome, done, refused

Conn = psycopg.Connection[Any]


def put_item(conn: Conn, sku: str, available: int, price_cents: int) -> dict[str, Any]:
    """Create or replace an item so that `available` (on hand minus reservations) is as given."""
    conn.execute(
        """INSERT INTO inventory.items (sku, on_hand, price_cents) VALUES (%s, %s, %s)
           ON CONFLICT (sku) DO UPDATE
              SET on_hand = items.reserved + EXCLUDED.on_hand,
                  price_cents = EXCLUDED.price_cents, updated_at = now()""",
        (sku, available, price_cents),
    )
    item = get_item(conn, sku)
    assert item is not None
    return item


def get_item(conn: Conn, sku: str) -> dict[str, Any] | None:
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(
            """SELECT sku, on_hand - reserved AS available, price_cents
                 FROM inventory.items WHERE sku = %s""",
            (sku,),
        ).fetchone()


def reserve_inventory(conn: Conn, key: str, order_id: str, items: list[dict[str, Any]]) -> Outcome:
    """Hold every item of the order, or none: refused on an unknown SKU or short stock.

    The first answer under `key` is final: a repeated call gets it back, and a call after
    the reservation was released (or after a release that came first) is refused.
    """
    refusal: str | None = None
    held: Outcome | None = None  # what this call reserved, once it has
    with conn.transaction() as tx:
        # Claiming the key first makes a concurrent call with the same key wait, then reuse.
        reservation_id = f"res_{uuid.uuid4().hex}"
        if not _claim(conn, reservation_id, key, order_id, "active"):
            raise psycopg.Rollback(tx)
        total = 0
        lines: list[dict[str, Any]] = []
        for item in sorted(items, key=lambda i: str(i["sku"])):  # one lock order: no deadlocks
            sku, quantity = item["sku"], item["quantity"]
            row = conn.execute(
                """UPDATE inventory.items SET reserved = reserved + %(q)s, updated_at = now()
                    WHERE sku = %(sku)s AND on_hand - reserved >= %(q)s
                RETURNING price_cents""",
                {"sku": sku, "q": quantity},
            ).fetchone()
            if row is None:
                refusal = _why_not_reservable(conn, sku, quantity)
                raise psycopg.Rollback(tx)
            total += row[0] * quantity
            lines.append({"sku": sku, "quantity": quantity, "unit_price_cents": row[0]})
            conn.execute(
                """INSERT INTO inventory.reservation_lines
                       (reservation_id, sku, quantity, unit_price_cents) VALUES (%s, %s, %s, %s)""",
                (reservation_id, sku, quantity, row[0]),
            )
        conn.execute(
            "UPDATE inventory.reservations SET total_cents = %s WHERE reservation_id = %s",
            (total, reservation_id),
        )
        held = done(reservation_id=reservation_id, total_cents=total, lines=lines)
    if held is not None:  # committed: what this call stored is the answer
        return held
    if refusal is not None:  # keep the refusal, so the key answers the same way from now on
        _claim(conn, reservation_id, key, order_id, "refused", refusal)
    return _answer(conn, key)


def release_reservation(conn: Conn, key: str, order_id: str) -> Outcome:
    """Give back the stock held under `key`. With nothing held, void the key, so that a
    reserve arriving late (a call still in flight elsewhere) is refused instead of holding."""

    def release() -> Outcome | None:
        row = conn.execute(
            """UPDATE inventory.reservations SET status = 'released', released_at = now()
                WHERE idempotency_key = %s AND status = 'active' RETURNING reservation_id""",
            (key,),
        ).fetchone()
        if row is None:
            return None
        _give_back(conn, row[0])
        return done(released=True, reservation_id=row[0])

    return keys.close_key(
        conn,
        "inventory.reservations",
        key,
        in_effect="active",
        undo=release,
        void=lambda: _claim(conn, f"res_{uuid.uuid4().hex}", key, order_id, "released"),
        verb="released",
    )


def _claim(
    conn: Conn,
    reservation_id: str,
    key: str,
    order_id: str,
    status: str,
    refusal: str | None = None,
) -> bool:
    row = conn.execute(
        """INSERT INTO inventory.reservations
               (reservation_id, idempotency_key, order_id, status, total_cents, refusal,
                released_at)
           VALUES (%s, %s, %s, %s, 0, %s, CASE WHEN %s = 'released' THEN now() END)
           ON CONFLICT (idempotency_key) DO NOTHING RETURNING reservation_id""",
        (reservation_id, key, order_id, status, refusal, status),
    ).fetchone()
    return row is not None


def _give_back(conn: Conn, reservation_id: str) -> None:
    lines = conn.execute(  # lock the items in SKU order, as reserve does: no deadlocks
        """SELECT l.sku, l.quantity FROM inventory.reservation_lines l
             JOIN inventory.items i ON i.sku = l.sku
            WHERE l.reservation_id = %s ORDER BY l.sku FOR UPDATE OF i""",
        (reservation_id,),
    ).fetchall()
    for sku, quantity in lines:
        conn.execute(
            """UPDATE inventory.items SET reserved = reserved - %s, updated_at = now()
                WHERE sku = %s""",
            (quantity, sku),
        )


def _answer(conn: Conn, key: str) -> Outcome:
    """What a reserve call under `key` answers, given what the key holds."""
    with conn.cursor(row_factory=dict_row) as cur:
        res = cur.execute(
            """SELECT reservation_id, status, total_cents, refusal FROM inventory.reservations
                WHERE idempotency_key = %s""",
            (key,),
        ).fetchone()
        assert res is not None
        if res["status"] == "refused":
            return refused(res["refusal"])
        if res["status"] == "released":
            return refused("the reservation was already released by a compensation")
        lines = cur.execute(
            """SELECT sku, quantity, unit_price_cents FROM inventory.reservation_lines
                WHERE reservation_id = %s ORDER BY sku""",
            (res["reservation_id"],),
        ).fetchall()
    return done(reservation_id=res["reservation_id"], total_cents=res["total_cents"], lines=lines)


def _why_not_reservable(conn: Conn, sku: str, quantity: int) -> str:
    row = conn.execute(
        "SELECT on_hand - reserved FROM inventory.items WHERE sku = %s", (sku,)
    ).fetchone()
    if row is None:
        return f"unknown SKU {sku!r}"
    return f"insufficient stock for {sku!r}: {quantity} requested, {row[0]} available"
