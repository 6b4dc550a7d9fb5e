"""POST /orders/{id}/cancel: the saga stops at its next safe point and undoes exactly what it
did, also while it waits for approval or while a step is in flight; 409 once it has ended.

A step is held in flight with its fault switch's latency_ms (700 ms, under the suite's
STEP_TIMEOUT_SECONDS of 1)."""

from collections.abc import Callable
from typing import Any

import httpx
import psycopg
import pytest

from tests.support.orders import (
    assert_nothing_lost,
    effects,
    order_body,
    wait_for_state,
    wait_for_step,
)

SLOW_MS = 700


def names(steps: list[dict[str, Any]]) -> list[str]:
    return [s["name"] for s in steps]


@pytest.mark.usefixtures("faults_repaired")
@pytest.mark.parametrize(
    ("slow_step", "compensations"),
    [
        pytest.param("reserve_inventory", ["release_reservation"], id="before-payment"),
        pytest.param(
            "create_shipment",
            ["cancel_shipment", "refund_payment", "release_reservation"],
            id="during-shipment",
        ),
        pytest.param(
            "send_confirmation",
            [
                "send_cancellation_notice",
                "cancel_shipment",
                "refund_payment",
                "release_reservation",
            ],
            id="during-last-step",
        ),
    ],
)
def test_a_cancel_during_a_step_lets_it_finish_then_undoes_it_and_all_before(
    style: dict[str, str],
    api: httpx.Client,
    db: psycopg.Connection[Any],
    stock: Callable[..., str],
    slow_step: str,
    compensations: list[str],
) -> None:
    sku = stock(5)
    body = order_body({sku: 1}, **style)
    api.put(f"/faults/{slow_step}", json={"down": False, "latency_ms": SLOW_MS}).raise_for_status()
    api.post("/orders", json=body).raise_for_status()
    wait_for_step(api, body["order_id"], slow_step, "executing")

    cancelled = api.post(f"/orders/{body['order_id']}/cancel", json={"reason": "changed my mind"})
    view = api.post("/orders", json=body, params={"wait": 30}).json()

    assert cancelled.status_code == 202
    assert view["state"] == "FAILED"
    assert view["error"] == "cancelled by request: changed my mind"
    assert view["cancel_requested_at"] is not None
    assert names(view["compensations"]) == compensations
    reached = [s["name"] for s in view["steps"] if s["status"] != "pending"]
    assert reached[-1] == slow_step  # it finished, and nothing after it began
    assert_nothing_lost(db, view, {sku: 5}, {sku: 1})
    if slow_step == "send_confirmation":
        assert effects(db, body["order_id"])["notifications"] == ["confirmation", "cancellation"]


def test_a_cancel_while_awaiting_approval_wakes_the_saga_and_releases_the_stock(
    style: dict[str, str], api: httpx.Client, db: psycopg.Connection[Any], stock: Callable[..., str]
) -> None:
    sku = stock(5, price_cents=60_000)
    body = order_body({sku: 2}, **style)
    api.post("/orders", json=body).raise_for_status()
    wait_for_state(api, body["order_id"], "AWAITING_APPROVAL")

    cancelled = api.post(f"/orders/{body['order_id']}/cancel")
    view = wait_for_state(api, body["order_id"], {"FAILED"}, timeout=3)  # well before 4 s

    assert cancelled.status_code == 202
    assert view["error"] == "cancelled by request"
    assert view["approval"]["decision"] is None  # ended by the cancel, not timed out
    assert names(view["compensations"]) == ["release_reservation"]
    assert api.post(f"/orders/{body['order_id']}/approve").status_code == 409
    assert_nothing_lost(db, view, {sku: 5}, {sku: 2})


@pytest.mark.usefixtures("faults_repaired")
def test_cancelling_twice_is_accepted_and_changes_nothing_more(
    style: dict[str, str], api: httpx.Client, db: psycopg.Connection[Any], stock: Callable[..., str]
) -> None:
    sku = stock(5)
    body = order_body({sku: 1}, **style)
    api.put("/faults/process_payment", json={"down": False, "latency_ms": SLOW_MS})
    api.post("/orders", json=body).raise_for_status()
    wait_for_step(api, body["order_id"], "process_payment", "executing")

    first = api.post(f"/orders/{body['order_id']}/cancel", json={"reason": "first"})
    second = api.post(f"/orders/{body['order_id']}/cancel", json={"reason": "second"})
    view = api.post("/orders", json=body, params={"wait": 30}).json()

    assert (first.status_code, second.status_code) == (202, 202)
    assert view["error"] == "cancelled by request: first"
    assert names(view["compensations"]) == ["refund_payment", "release_reservation"]
    assert_nothing_lost(db, view, {sku: 5}, {sku: 1})


def test_a_finished_saga_cannot_be_cancelled(
    style: dict[str, str], api: httpx.Client, stock: Callable[..., str]
) -> None:
    view = api.post("/orders", json=order_body({stock(1): 1}, **style), params={"wait": 30}).json()

    response = api.post(f"/orders/{view['order_id']}/cancel")

    assert response.status_code == 409
    assert response.json()["detail"] == (
        f"order {view['order_id']!r} is COMPLETED; it can no longer be cancelled"
    )
    assert api.get(f"/orders/{view['order_id']}").json()["state"] == "COMPLETED"
    assert api.post("/orders/no-such-order/cancel").status_code == 404
