"""Shipping: shipments to the countries the carrier serves."""

import secrets
import uuid
from typing import Any

import psycopg
from psycopg.rows import dict_row

from services.outcomes import Outcome, done, refused

Conn = psycopg.Connection[Any]

# ISO 3166-1 alpha-2 codes the simulated carrier delivers to. AQ (Antarctica) never is.
SERVED_COUNTRIES = frozenset(
    {"AT", "AU", "BE", "CA", "CH", "CZ", "DE", "DK", "ES", "FI", "FR", "GB"}
    | {"IE", "IT", "JP", "MX", "NL", "NO", "NZ", "PL", "PT", "SE", "US"}
)

_COLUMNS = "shipment_id, order_id, status, tracking_number"


def create_shipment(conn: Conn, key: str, order_id: str, address: dict[str, Any]) -> Outcome:
    """Book one shipment per key; refused when the country is not served."""
    existing = _shipment(conn, key)
    if existing is not None:
        return done(**existing)
    country = address["country"]
    if country not in SERVED_COUNTRIES:
        return refused(f"shipping to {country} is not served")
    conn.execute(
        """INSERT INTO shipping.shipments
               (shipment_id, idempotency_key, order_id, status, tracking_number, country)
           VALUES (%s, %s, %s, 'created', %s, %s)
           ON CONFLICT (idempotency_key) DO NOTHING""",
        (f"shp_{uuid.uuid4().hex}", key, order_id, f"TRK{secrets.randbelow(10**12):012d}", country),
    )
    created = _shipment(conn, key)
    assert created is not None
    return done(**created)


def cancel_shipment(conn: Conn, key: str) -> Outcome:
    """Cancel the shipment booked under `key`; a no-op if there is none (any more)."""
    row = conn.execute(
        """UPDATE shipping.shipments SET status = 'cancelled', cancelled_at = now()
            WHERE idempotency_key = %s AND status = 'created' RETURNING shipment_id""",
        (key,),
    ).fetchone()
    return done(cancelled=row is not None, shipment_id=row[0] if row else None)


def shipments_for(conn: Conn, order_id: str) -> list[dict[str, Any]]:
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(
            f"SELECT {_COLUMNS} FROM shipping.shipments WHERE order_id = %s ORDER BY created_at",
            (order_id,),
        ).fetchall()


def _shipment(conn: Conn, key: str) -> dict[str, Any] | None:
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(
            f"SELECT {_COLUMNS} FROM shipping.shipments WHERE idempotency_key = %s", (key,)
        ).fetchone()
