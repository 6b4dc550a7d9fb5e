"""A live process starts a stored order whose saga was never created (its request got a 503
in an outage and the client never came back) without waiting for a restart."""

from collections.abc import Callable
from typing import Any

import httpx
import psycopg

from orders import intake
from runtime.lifecycle import SWEEP_INTERVAL_SECONDS
from tests.support.orders import assert_nothing_lost, order_body, wait_for_state


def test_a_stored_order_without_a_saga_is_started_by_the_running_process(
    api: httpx.Client, db: psycopg.Connection[Any], stock: Callable[..., str]
) -> None:
    sku = stock(5)
    body = order_body({sku: 2})
    placement = intake.place(db, body, None)  # stored as POST /orders does, never started
    assert placement.created
    assert api.get(f"/orders/{body['order_id']}").json()["dbos_status"] is None

    view = wait_for_state(api, body["order_id"], "COMPLETED", timeout=3 * SWEEP_INTERVAL_SECONDS)

    assert view["saga_id"] == placement.saga_id
    assert_nothing_lost(db, view, {sku: 5}, {sku: 2})
