"""A compensation that keeps failing is tried COMPENSATION_ATTEMPTS times (4 in the suite)
with growing durable waits, then the saga parks in COMPENSATION_FAILED: alive, listed, the
failing compensation and its error in view. retry-compensation tries the rest again."""

from collections.abc import Callable
from typing import Any

import httpx
import psycopg
import pytest

from tests.support.orders import (
    assert_nothing_lost,
    available,
    effects,
    order_body,
    wait_for_parked_count,
    wait_for_state,
)

AQ = {"name": "A", "line1": "1", "city": "C", "postal_code": "1", "country": "AQ"}


def park_an_order(
    api: httpx.Client, stock: Callable[..., str], style: dict[str, str] | None = None
) -> tuple[str, dict[str, Any]]:
    """An order whose refund cannot get through: (sku, body), parked."""
    sku = stock(5)
    body = order_body({sku: 2}, shipping_address=AQ, **(style or {}))
    api.put("/faults/refund_payment", json={"down": True}).raise_for_status()
    api.post("/orders", json=body).raise_for_status()
    wait_for_state(api, body["order_id"], "COMPENSATION_FAILED")
    return sku, body


@pytest.mark.usefixtures("faults_repaired")
def test_a_stuck_compensation_parks_the_saga_with_nothing_forgotten(
    style: dict[str, str], api: httpx.Client, db: psycopg.Connection[Any], stock: Callable[..., str]
) -> None:
    sku, body = park_an_order(api, stock, style)
    order_id = body["order_id"]

    view = api.get(f"/orders/{order_id}").json()
    listed = api.get("/orders", params={"state": "COMPENSATION_FAILED", "limit": 1000}).json()
    row = db.execute(
        """SELECT state, current_step, step_error, step_attempts, dbos_status, parked_count
             FROM saga_status WHERE order_id = %s""",
        (order_id,),
    ).fetchone()

    assert view["current_step"] == "refund_payment"
    assert view["error"].startswith("create_shipment refused")
    refund = view["compensations"][-1]
    assert (refund["name"], refund["status"], refund["attempts"]) == ("refund_payment", "failed", 4)
    assert "fault switch is on" in refund["error"]
    assert order_id in {o["order_id"] for o in listed["orders"]}
    assert row is not None
    assert row[:2] == ("COMPENSATION_FAILED", "refund_payment")
    assert "fault switch is on" in row[2]
    assert row[3:] == (4, "PENDING", 1)  # the workflow is alive, waiting for an operator
    # Nothing after the stuck compensation ran yet: the stock is still held.
    assert available(db, sku) == 3
    assert effects(db, order_id)["payments"] == [("captured", 2000)]


@pytest.mark.usefixtures("faults_repaired")
def test_a_retry_while_still_broken_parks_again_and_a_retry_after_repair_finishes(
    style: dict[str, str], api: httpx.Client, db: psycopg.Connection[Any], stock: Callable[..., str]
) -> None:
    sku, body = park_an_order(api, stock, style)
    order_id = body["order_id"]

    assert api.post(f"/orders/{order_id}/retry-compensation").status_code == 202
    parked_again = wait_for_parked_count(db, order_id, 2)
    api.put("/faults/refund_payment", json={"down": False}).raise_for_status()
    assert api.post(f"/orders/{order_id}/retry-compensation").status_code == 202
    view = api.post("/orders", json=body, params={"wait": 30}).json()

    assert parked_again == "COMPENSATION_FAILED"
    assert view["state"] == "FAILED"
    assert view["error"].startswith("create_shipment refused")
    assert [c["name"] for c in view["compensations"]] == ["refund_payment", "release_reservation"]
    assert view["compensations"][0]["attempts"] == 9  # 4, 4 more, then the one that worked
    assert_nothing_lost(db, view, {sku: 5}, {sku: 2})
    assert api.post(f"/orders/{order_id}/retry-compensation").status_code == 409


@pytest.mark.usefixtures("faults_repaired")
def test_only_cancel_is_accepted_while_parked_and_it_changes_nothing(
    style: dict[str, str], api: httpx.Client, db: psycopg.Connection[Any], stock: Callable[..., str]
) -> None:
    _, body = park_an_order(api, stock, style)
    order_id = body["order_id"]

    answers = [api.post(f"/orders/{order_id}/{verb}").status_code for verb in ("approve", "reject")]
    cancelled = api.post(f"/orders/{order_id}/cancel")

    assert answers == [409, 409]
    assert cancelled.status_code == 202
    assert api.get(f"/orders/{order_id}").json()["state"] == "COMPENSATION_FAILED"


def test_retrying_a_saga_that_is_not_parked_is_a_conflict(
    style: dict[str, str], api: httpx.Client, stock: Callable[..., str]
) -> None:
    view = api.post("/orders", json=order_body({stock(1): 1}, **style), params={"wait": 30}).json()

    response = api.post(f"/orders/{view['order_id']}/retry-compensation")

    assert response.status_code == 409
    assert "only an order in COMPENSATION_FAILED can be retried" in response.json()["detail"]
