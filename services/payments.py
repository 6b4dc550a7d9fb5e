"""Payments: a simulated provider whose test cards decide the outcome."""

import uuid
from typing import Any

import psycopg
from psycopg.rows import dict_row

from services.outcomes import Outcome, ServiceUnavailable, done, refused

Conn = psycopg.Connection[Any]

DECLINED = {
    "pm_card_declined": "card declined",
    "pm_card_insufficient_funds": "insufficient funds",
}
FLAKY = "pm_card_flaky"
FLAKY_FAILURES = 2  # the flaky card's first two calls time out, the third captures

_COLUMNS = "payment_id, order_id, amount_cents, status"


def process_payment(
    conn: Conn, key: str, order_id: str, amount_cents: int, payment_method: str
) -> Outcome:
    """Capture `amount_cents` once per key; refused for declining test cards."""
    existing = _payment(conn, key)
    if existing is not None:
        return done(**existing)
    if payment_method in DECLINED:
        return refused(f"payment declined: {DECLINED[payment_method]} ({payment_method})")
    if payment_method == FLAKY:
        calls = _count_call(conn, key)
        if calls <= FLAKY_FAILURES:
            raise ServiceUnavailable(
                f"process_payment: provider timed out ({FLAKY}, call {calls} of "
                f"{FLAKY_FAILURES} that fail)"
            )
    conn.execute(
        """INSERT INTO payments.payments
               (payment_id, idempotency_key, order_id, amount_cents, payment_method, status)
           VALUES (%s, %s, %s, %s, %s, 'captured')
           ON CONFLICT (idempotency_key) DO NOTHING""",
        (f"pay_{uuid.uuid4().hex}", key, order_id, amount_cents, payment_method),
    )
    captured = _payment(conn, key)
    assert captured is not None
    return done(**captured)


def refund_payment(conn: Conn, key: str) -> Outcome:
    """Refund the payment captured under `key`; a no-op if there is none (any more)."""
    row = conn.execute(
        """UPDATE payments.payments SET status = 'refunded', refunded_at = now()
            WHERE idempotency_key = %s AND status = 'captured' RETURNING payment_id""",
        (key,),
    ).fetchone()
    return done(refunded=row is not None, payment_id=row[0] if row else None)


def payments_for(conn: Conn, order_id: str) -> list[dict[str, Any]]:
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(
            f"SELECT {_COLUMNS} FROM payments.payments WHERE order_id = %s ORDER BY created_at",
            (order_id,),
        ).fetchall()


def _payment(conn: Conn, key: str) -> dict[str, Any] | None:
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(
            f"SELECT {_COLUMNS} FROM payments.payments WHERE idempotency_key = %s", (key,)
        ).fetchone()


def _count_call(conn: Conn, key: str) -> int:
    row = conn.execute(
        """INSERT INTO payments.provider_calls (idempotency_key, calls) VALUES (%s, 1)
           ON CONFLICT (idempotency_key) DO UPDATE SET calls = provider_calls.calls + 1
           RETURNING calls""",
        (key,),
    ).fetchone()
    assert row is not None
    return int(row[0])
