"""Notifications: e-mails to customers."""

import uuid
from typing import Any

import psycopg
from psycopg.rows import dict_row

from services import keys
from services.outcomes import Outcome, done, refused

Conn = psycopg.Connection[Any]

BOUNCING_DOMAIN = "@bounce.test"  # mail to it never arrives, like a mailbox that does not exist

_COLUMNS = 'notification_id, order_id, kind, "to", status'


def send_confirmation(conn: Conn, key: str, order_id: str, to: str) -> Outcome:
    """Send the order confirmation once per key; refused when the address bounces, and
    refused once the order's cancellation went out (before it, or after it to retract it)."""
    existing = _answer(conn, key)
    if existing is not None:
        if existing["outcome"] == "done" and _retracted(conn, order_id):
            return refused("the confirmation was already retracted by a cancellation notice")
        return existing
    if to.lower().endswith(BOUNCING_DOMAIN):
        return refused(f"confirmation to {to} bounced: mailbox does not exist")
    sent = _insert(conn, key, order_id, "confirmation", to, "sent")
    if sent is not None:  # this call sent it: the row is the answer
        return _outcome(sent)
    answer = _answer(conn, key)  # a concurrent call under the same key got there first
    assert answer is not None
    return answer


def send_cancellation_notice(
    conn: Conn, key: str, confirmation_key: str, order_id: str, to: str
) -> Outcome:
    """Tell the customer the order is cancelled, once per key, if the confirmation under
    `confirmation_key` went out. If it did not, void that key so it never goes out late."""
    with conn.transaction():
        for _ in range(2):  # a confirmation landing meanwhile is retracted on the 2nd pass
            existing = _answer(conn, key)
            if existing is not None:
                return existing
            confirmation = keys.key_status(conn, "notifications.notifications", confirmation_key)
            if confirmation == "sent":
                _insert(conn, key, order_id, "cancellation", to, "sent")
                continue
            if confirmation == "voided" or (
                _insert(conn, confirmation_key, order_id, "confirmation", to, "voided") is not None
            ):
                return done(sent=False, reason="no confirmation went out, so none is retracted")
    answer = _answer(conn, key)
    if answer is None:
        raise RuntimeError(f"notification {key!r} kept changing while being sent")
    return answer


def notifications_for(conn: Conn, order_id: str) -> list[dict[str, Any]]:
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(
            """SELECT notification_id, order_id, kind, "to" FROM notifications.notifications
                WHERE order_id = %s AND status = 'sent' ORDER BY created_at""",
            (order_id,),
        ).fetchall()


def _answer(conn: Conn, key: str) -> Outcome | None:
    """What a send under `key` answers, given what the key holds (None: nothing yet)."""
    with conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute(
            f"SELECT {_COLUMNS} FROM notifications.notifications WHERE idempotency_key = %s",
            (key,),
        ).fetchone()
    return None if row is None else _outcome(row)


def _outcome(row: dict[str, Any]) -> Outcome:
    """The answer a notification row gives."""
    row = dict(row)
    if row.pop("status") == "voided":
        return refused("the order was cancelled before its confirmation went out")
    return done(**row)


def _retracted(conn: Conn, order_id: str) -> bool:
    row = conn.execute(
        """SELECT 1 FROM notifications.notifications
            WHERE order_id = %s AND kind = 'cancellation' AND status = 'sent'""",
        (order_id,),
    ).fetchone()
    return row is not None


def _insert(
    conn: Conn, key: str, order_id: str, kind: str, to: str, status: str
) -> dict[str, Any] | None:
    """Store the key's notification; the stored row, or None if the key was taken already."""
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(
            f"""INSERT INTO notifications.notifications
                    (notification_id, idempotency_key, order_id, kind, "to", status)
                VALUES (%s, %s, %s, %s, %s, %s)
                ON CONFLICT (idempotency_key) DO NOTHING RETURNING {_COLUMNS}""",
            (f"ntf_{uuid.uuid4().hex}", key, order_id, kind, to, status),
        ).fetchone()
