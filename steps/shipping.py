"""Shipping steps: book the shipment, and cancel it."""

from dbos import DBOS

from orders.model import Order, idempotency_key
from services import shipping
from services.outcomes import Outcome
from steps import runner


@DBOS.step(name="create_shipment", **runner.retry_policy())
def create_shipment(order: Order) -> Outcome:
    """Book a shipment to the order's address."""
    key = idempotency_key(order["order_id"], "create_shipment")
    address = dict(order["shipping_address"])
    return runner.run(
        "forward",
        "create_shipment",
        order["order_id"],
        lambda conn: shipping.create_shipment(conn, key, order["order_id"], address),
    )


@DBOS.step(name="cancel_shipment")
def cancel_shipment(order: Order, reason: str) -> Outcome:
    """Cancel the order's shipment (a no-op if none was booked)."""
    key = idempotency_key(order["order_id"], "create_shipment")
    return runner.run(
        "compensation",
        "cancel_shipment",
        order["order_id"],
        lambda conn: shipping.cancel_shipment(conn, key, order["order_id"]),
        reason=reason,
    )
