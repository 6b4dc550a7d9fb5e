"""A downstream call slower than STEP_TIMEOUT_SECONDS (1 s in the suite) is a transient
failure: retried STEP_ATTEMPTS times (4), then the saga compensates. A hung service cannot
hang a saga, and a call that timed out after acting is undone like any other."""

import os
import threading
from collections.abc import Callable
from typing import Any

import httpx
import psycopg
import pytest

from tests.support.orders import assert_nothing_lost, effects, order_body


def shipment_step(view: dict[str, Any]) -> dict[str, Any]:
    return next(s for s in view["steps"] if s["name"] == "create_shipment")


@pytest.mark.usefixtures("faults_repaired")
@pytest.mark.parametrize(
    ("latency_ms", "shipments"),
    [
        pytest.param(3000, [], id="hung-before-acting"),
        pytest.param(1600, ["cancelled"], id="answers-after-acting"),
    ],
)
def test_a_step_slower_than_the_deadline_fails_after_its_attempts_and_is_undone(
    style: dict[str, str],
    api: httpx.Client,
    db: psycopg.Connection[Any],
    stock: Callable[..., str],
    latency_ms: int,
    shipments: list[str],
) -> None:
    sku = stock(5)
    body = order_body({sku: 1}, **style)
    api.put("/faults/create_shipment", json={"down": False, "latency_ms": latency_ms})

    view = api.post("/orders", json=body, params={"wait": 30}).json()

    assert view["state"] == "FAILED"
    assert shipment_step(view)["attempts"] == 4
    assert "no answer within STEP_TIMEOUT_SECONDS=1.0" in shipment_step(view)["error"]
    assert [c["name"] for c in view["compensations"]] == [
        "cancel_shipment",
        "refund_payment",
        "release_reservation",
    ]
    assert effects(db, body["order_id"])["shipments"] == shipments  # booked once at most
    assert_nothing_lost(db, view, {sku: 5}, {sku: 1})


def test_a_query_stuck_behind_a_lock_is_cut_off_and_the_saga_moves_on(
    style: dict[str, str], api: httpx.Client, db: psycopg.Connection[Any], stock: Callable[..., str]
) -> None:
    sku = stock(5)
    body = order_body({sku: 1}, **style)
    held, released = threading.Event(), threading.Event()

    def hold_the_item_row() -> None:
        with psycopg.connect(os.environ["DATABASE_URL"]) as conn:
            conn.execute("SELECT 1 FROM inventory.items WHERE sku = %s FOR UPDATE", (sku,))
            held.set()
            released.wait(timeout=30)

    holder = threading.Thread(target=hold_the_item_row)
    holder.start()
    assert held.wait(10), "the row lock was not taken"  # before the saga reaches the row
    try:
        view = api.post("/orders", json=body, params={"wait": 30}).json()
    finally:
        released.set()
        holder.join()

    reserve = next(s for s in view["steps"] if s["name"] == "reserve_inventory")
    assert view["state"] == "FAILED"
    assert reserve["attempts"] == 4
    assert "canceling statement due to statement timeout" in reserve["error"]
    assert_nothing_lost(db, view, {sku: 5}, {sku: 1})
