"""Stock never goes below zero, however many orders race for it."""

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import psycopg

from tests.support.orders import available, effects, order_body


def test_thirty_concurrent_orders_for_ten_units_complete_exactly_ten(
    api: httpx.Client, db: psycopg.Connection[Any], stock: Callable[..., str]
) -> None:
    sku = stock(10)
    bodies = [order_body({sku: 1}) for _ in range(30)]

    with ThreadPoolExecutor(max_workers=30) as pool:
        views = list(
            pool.map(lambda b: api.post("/orders", json=b, params={"wait": 60}).json(), bodies)
        )

    states = [view["state"] for view in views]
    assert states.count("COMPLETED") == 10
    assert states.count("FAILED") == 20
    assert available(db, sku) == 0
    for view in views:
        done = view["state"] == "COMPLETED"
        assert effects(db, view["order_id"]) == {
            "reservations": ["active"] if done else ["refused"],
            "payments": [("captured", 1000)] if done else [],
            "shipments": ["created"] if done else [],
            "notifications": ["confirmation"] if done else [],
        }
        if not done:
            assert view["error"].startswith("reserve_inventory refused: insufficient stock")
