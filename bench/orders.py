"""The order every benchmark saga runs: one unit of a SKU in stock, a card that is accepted,
an address that is served; so every saga completes. In (e) one order in six ships to AQ,
where the service does not deliver: its shipment is refused and the payment and the
reservation are undone (the failing saga of ../shared/peers)."""

import uuid
from typing import Any

UNSERVED_COUNTRY = "AQ"


def order_body(
    sku: str, *, failing: bool = False, coordination: str = "orchestration"
) -> dict[str, Any]:
    """A new order (its own order_id) as `POST /orders` takes it; `failing`: one whose saga
    compensates (create_shipment is refused); `coordination`: how its saga is carried."""
    body: dict[str, Any] = {
        "order_id": f"ord_bench_{uuid.uuid4().hex}",
        "customer_id": "bench",
        "customer_email": "bench@example.com",
        "items": [{"sku": sku, "quantity": 1}],
        "payment_method": "pm_card_visa",
        "shipping_address": {
            "name": "Ada",
            "line1": "1 Main St",
            "city": "Springfield",
            "postal_code": "12345",
            "country": UNSERVED_COUNTRY if failing else "US",
        },
    }
    if coordination != "orchestration":
        body["coordination"] = coordination
    return body
