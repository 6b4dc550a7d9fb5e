"""Inventory steps: hold the order's stock, and give it back."""

from dbos import DBOS

from orders.model import Order, idempotency_key
from services import inventory
from services.outcomes import Outcome
from steps import runner


@DBOS.step(name="reserve_inventory", **runner.retry_policy())
def reserve_inventory(order: Order) -> Outcome:
    """Reserve every item (all or nothing); the outcome carries `total_cents`."""
    key = idempotency_key(order["order_id"], "reserve_inventory")
    items = [dict(item) for item in order["items"]]
    return runner.run(
        "forward",
        "reserve_inventory",
        order["order_id"],
        lambda conn: inventory.reserve_inventory(conn, key, order["order_id"], items),
    )


@DBOS.step(name="release_reservation")
def release_reservation(order: Order, reason: str) -> Outcome:
    """Give back whatever the order holds (a no-op if nothing is held)."""
    key = idempotency_key(order["order_id"], "reserve_inventory")
    return runner.run(
        "compensation",
        "release_reservation",
        order["order_id"],
        lambda conn: inventory.release_reservation(conn, key, order["order_id"]),
        reason=reason,
    )
