"""The order every benchmark saga runs: one unit of a SKU in stock, a card that is accepted,
an address that is served; so every saga completes."""

import uuid
from typing import Any


def order_body(sku: str) -> dict[str, Any]:
    """A new order (its own order_id) as `POST /orders` takes it."""
    return {
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
            "country": "US",
        },
    }
