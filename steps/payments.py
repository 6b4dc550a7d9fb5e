"""Payment steps: charge the order once, and refund it."""

from dbos import DBOS

from orders.model import Order, idempotency_key
from services import payments
from services.outcomes import Outcome
from steps import runner


@DBOS.step(name="process_payment", **runner.retry_policy())
def process_payment(order: Order, amount_cents: int) -> Outcome:
    """Capture `amount_cents` with the order's payment method."""
    key = idempotency_key(order["order_id"], "process_payment")
    return runner.run(
        "forward",
        "process_payment",
        order["order_id"],
        lambda conn: payments.process_payment(
            conn, key, order["order_id"], amount_cents, order["payment_method"]
        ),
    )


@DBOS.step(name="refund_payment")
def refund_payment(order: Order, reason: str) -> Outcome:
    """Refund the order's payment (a no-op if none was captured)."""
    key = idempotency_key(order["order_id"], "process_payment")
    return runner.run(
        "compensation",
        "refund_payment",
        order["order_id"],
        lambda conn: payments.refund_payment(conn, key, order["order_id"]),
        reason=reason,
    )
