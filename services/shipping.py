"""Shipping: shipments to the countries the carrier serves."""

import secrets
import uuid
from typing import Any

import psycopg
from psycopg.rows import dict_row

from services import keys
from services.outcomes import Outcome, done, refused

Conn = psycopg.Connection[Any]

# ISO 3166-1 alpha-2 codes the simulated carrier delivers to. AQ (Antarctica) never is.
SERVED_COUNTRIES = frozenset(
    {"AT", "AU", "BE", "CA", "CH", "CZ", "DE", "DK", "ES", "FI", "FR", "GB"}
    | {"IE", "IT", "JP", "MX", "NL", "NO", "NZ", "PL", "PT", "SE", "US"}
)

_COLUMNS = "shipment_id, order_id, status, tracking_number"


def create_shipment(conn: Conn, key: str, order_id: str, address: dict[str, Any]) -> Outcome:
    """Book one shipment per key; refused when the country is not served, and refused once
    the key's shipment was cancelled or voided by a compensation."""
    existing = _answer(conn, key)
    if existing is not None:
        return existing
    country = address["country"]
    if country not in SERVED_COUNTRIES:
        return refused(f"shipping to {country} is not served")
    tracking = f"TRK{secrets.randbelow(10**12):012d}"
    booked = _insert(conn, key, order_id, "created", tracking, country)
    if booked is not None:  # this call booked it: the row is the answer
        return done(**booked)
    answer = _answer(conn, key)  # a concurrent call under the same key got there first
    assert answer is not None
    return answer


def cancel_shipment(conn: Conn, key: str, order_id: str) -> Outcome:
    """Cancel the shipment booked under `key`. With none booked, void the key, so that a
    booking arriving late (a call still in flight elsewhere) is refused."""

    def cancel() -> Outcome | None:
        row = conn.execute(
            """UPDATE shipping.shipments SET status = 'cancelled', cancelled_at = now()
                WHERE idempotency_key = %s AND status = 'created' RETURNING shipment_id""",
            (key,),
        ).fetchone()
        return None if row is None else done(cancelled=True, shipment_id=row[0])

    return keys.close_key(
        conn,
        "shipping.shipments",
        key,
        in_effect="created",
        undo=cancel,
        void=lambda: _insert(conn, key, order_id, "voided", None, None) is not None,
        verb="cancelled",
    )


def shipments_for(conn: Conn, order_id: str) -> list[dict[str, Any]]:
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(
            f"""SELECT {_COLUMNS} FROM shipping.shipments
                 WHERE order_id = %s AND status <> 'voided' ORDER BY created_at""",
            (order_id,),
        ).fetchall()


def _answer(conn: Conn, key: str) -> Outcome | None:
    """What a booking under `key` answers, given what the key holds (None: nothing yet)."""
    with conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute(
            f"SELECT {_COLUMNS} FROM shipping.shipments WHERE idempotency_key = %s", (key,)
        ).fetchone()
    if row is None:
        return None
    if row["status"] != "created":
        return refused(f"the shipment was already {row['status']} by a compensation")
    return done(**row)


def _insert(
    conn: Conn, key: str, order_id: str, status: str, tracking: str | None, country: str | None
) -> dict[str, Any] | None:
    """Store the key's shipment; the stored row, or None if the key was taken already."""
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(
            f"""INSERT INTO shipping.shipments
                    (shipment_id, idempotency_key, order_id, status, tracking_number, country)
                VALUES (%s, %s, %s, %s, %s, %s)
                ON CONFLICT (idempotency_key) DO NOTHING RETURNING {_COLUMNS}""",
            (f"shp_{uuid.uuid4().hex}", key, order_id, status, tracking, country),
        ).fetchone()
