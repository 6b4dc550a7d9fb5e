"""Notifications: e-mails to customers."""

import uuid
from typing import Any

import psycopg
from psycopg.rows import dict_row

from services.outcomes import Outcome, done, refused

Conn = psycopg.Connection[Any]

BOUNCING_DOMAIN = "@bounce.test"  # mail to it never arrives, like a mailbox that does not exist

_COLUMNS = 'notification_id, order_id, kind, "to"'


def send_confirmation(conn: Conn, key: str, order_id: str, to: str) -> Outcome:
    """Send the order confirmation once per key; refused when the address bounces."""
    existing = _notification(conn, key)
    if existing is not None:
        return done(**existing)
    if to.lower().endswith(BOUNCING_DOMAIN):
        return refused(f"confirmation to {to} bounced: mailbox does not exist")
    return done(**_send(conn, key, order_id, "confirmation", to))


def send_cancellation_notice(conn: Conn, key: str, order_id: str, to: str) -> Outcome:
    """Tell the customer the order is cancelled, once per key, only if they were confirmed."""
    existing = _notification(conn, key)
    if existing is not None:
        return done(**existing)
    confirmed = conn.execute(
        """SELECT 1 FROM notifications.notifications
            WHERE order_id = %s AND kind = 'confirmation'""",
        (order_id,),
    ).fetchone()
    if confirmed is None:
        return done(sent=False, reason="no confirmation was sent, so there is nothing to retract")
    return done(**_send(conn, key, order_id, "cancellation", to))


def notifications_for(conn: Conn, order_id: str) -> list[dict[str, Any]]:
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(
            f"""SELECT {_COLUMNS} FROM notifications.notifications
                 WHERE order_id = %s ORDER BY created_at""",
            (order_id,),
        ).fetchall()


def _send(conn: Conn, key: str, order_id: str, kind: str, to: str) -> dict[str, Any]:
    conn.execute(
        """INSERT INTO notifications.notifications
               (notification_id, idempotency_key, order_id, kind, "to")
           VALUES (%s, %s, %s, %s, %s) ON CONFLICT (idempotency_key) DO NOTHING""",
        (f"ntf_{uuid.uuid4().hex}", key, order_id, kind, to),
    )
    sent = _notification(conn, key)
    assert sent is not None
    return sent


def _notification(conn: Conn, key: str) -> dict[str, Any] | None:
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(
            f"SELECT {_COLUMNS} FROM notifications.notifications WHERE idempotency_key = %s",
            (key,),
        ).fetchone()
