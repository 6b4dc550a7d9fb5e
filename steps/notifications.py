"""Notification steps: confirm the order, and retract a confirmation."""

from dbos import DBOS

from orders.model import Order, idempotency_key
from services import notifications
from services.outcomes import Outcome
from steps import runner


@DBOS.step(name="send_confirmation", **runner.retry_policy())
def send_confirmation(order: Order) -> Outcome:
    """E-mail the customer that the order is on its way."""
    key = idempotency_key(order["order_id"], "send_confirmation")
    return runner.run(
        "forward",
        "send_confirmation",
        order["order_id"],
        lambda conn: notifications.send_confirmation(
            conn, key, order["order_id"], order["customer_email"]
        ),
    )


@DBOS.step(name="send_cancellation_notice")
def send_cancellation_notice(order: Order, reason: str) -> Outcome:
    """E-mail the customer that the order is cancelled, if they had been confirmed."""
    key = idempotency_key(order["order_id"], "send_cancellation_notice")
    confirmation_key = idempotency_key(order["order_id"], "send_confirmation")
    return runner.run(
        "compensation",
        "send_cancellation_notice",
        order["order_id"],
        lambda conn: notifications.send_cancellation_notice(
            conn, key, confirmation_key, order["order_id"], order["customer_email"]
        ),
        reason=reason,
    )
