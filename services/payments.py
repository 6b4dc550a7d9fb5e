"""Payments: a simulated provider whose test cards decide the outcome."""

import uuid
from typing import Any

import psycopg
from psycopg.rows import dict_row

from services import keys
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
    """Capture `amount_cents` once per key; refused for declining test cards, and refused
    once the key's payment was refunded or voided by a compensation."""
    existing = _answer(conn, key)
    if existing is not None:
        return existing
    if payment_method in DECLINED:
        return refused(f"payment declined: {DECLINED[payment_method]} ({payment_method})")
    if payment_method == FLAKY:
        calls = _count_call(conn, key)
        if calls <= FLAKY_FAILURES:
            raise ServiceUnavailable(
                f"process_payment: provider timed out ({FLAKY}, call {calls} of "
                f"{FLAKY_FAILURES} that fail)"
            )
    captured = _insert(conn, key, order_id, "captured", amount_cents, payment_method)
    if captured is not None:  # this call captured it: the row is the answer
        return done(**captured)
    answer = _answer(conn, key)  # a concurrent call under the same key got there first
    assert answer is not None
    return answer


def refund_payment(conn: Conn, key: str, order_id: str) -> Outcome:
    """Refund the payment captured under `key`. With none captured, void the key, so that
    a capture arriving late (a call still in flight elsewhere) is refused."""

    def refund() -> Outcome | None:
        row = conn.execute(
            """UPDATE payments.payments SET status = 'refunded', refunded_at = now()
                WHERE idempotency_key = %s AND status = 'captured' RETURNING payment_id""",
            (key,),
        ).fetchone()
        return None if row is None else done(refunded=True, payment_id=row[0])

    return keys.close_key(
        conn,
        "payments.payments",
        key,
        in_effect="captured",
        undo=refund,
        void=lambda: _insert(conn, key, order_id, "voided", 0, None) is not None,
        verb="refunded",
    )


def payments_for(conn: Conn, order_id: str) -> list[dict[str, Any]]:
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(
            f"""SELECT {_COLUMNS} FROM payments.payments
                 WHERE order_id = %s AND status <> 'voided' ORDER BY created_at""",
            (order_id,),
        ).fetchall()


def _answer(conn: Conn, key: str) -> Outcome | None:
    """What a capture under `key` answers, given what the key holds (None: nothing yet)."""
    with conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute(
            f"SELECT {_COLUMNS} FROM payments.payments WHERE idempotency_key = %s", (key,)
        ).fetchone()
    if row is None:
        return None
    if row["status"] != "captured":
        return refused(f"the payment was already {row['status']} by a compensation")
    return done(**row)


def _insert(
    conn: Conn, key: str, order_id: str, status: str, amount: int, method: str | None
) -> dict[str, Any] | None:
    """Store the key's payment; the stored row, or None if the key was taken already."""
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(
            f"""INSERT INTO payments.payments
                    (payment_id, idempotency_key, order_id, amount_cents, payment_method, status)
                VALUES (%s, %s, %s, %s, %s, %s)
                ON CONFLICT (idempotency_key) DO NOTHING RETURNING {_COLUMNS}""",
            (f"pay_{uuid.uuid4().hex}", key, order_id, amount, method, status),
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
