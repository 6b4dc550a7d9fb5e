"""Every row of the contract's business-outcome table, with its effects checked."""

from collections.abc import Callable
from typing import Any

import httpx
import psycopg
import pytest

from tests.support.orders import assert_nothing_lost, available, effects, order_body

US = {
    "name": "Ada",
    "line1": "1 Main St",
    "city": "Springfield",
    "postal_code": "1",
    "country": "US",
}
AQ = {**US, "country": "AQ"}


def place_and_wait(api: httpx.Client, body: dict[str, Any]) -> dict[str, Any]:
    response = api.post("/orders", params={"wait": 30}, json=body)
    assert response.status_code == 200, response.text
    return response.json()


def statuses(view: dict[str, Any]) -> dict[str, str]:
    return {step["name"]: step["status"] for step in view["steps"]}


def compensation_order(view: dict[str, Any]) -> list[str]:
    return [c["name"] for c in view["compensations"]]


DONE = ("completed",) * 4


@pytest.mark.parametrize(
    ("fields", "state", "step_statuses", "compensations"),
    [
        pytest.param({}, "COMPLETED", DONE, [], id="visa-captured"),
        pytest.param({"payment_method": "pm_card_mastercard"}, "COMPLETED", DONE, [], id="any-pm"),
        pytest.param(
            {"payment_method": "pm_card_declined"},
            "FAILED",
            ("compensated", "failed", "pending", "pending"),
            ["release_reservation"],
            id="declined",
        ),
        pytest.param(
            {"payment_method": "pm_card_insufficient_funds"},
            "FAILED",
            ("compensated", "failed", "pending", "pending"),
            ["release_reservation"],
            id="insufficient-funds",
        ),
        pytest.param(
            {"shipping_address": AQ},
            "FAILED",
            ("compensated", "compensated", "failed", "pending"),
            ["refund_payment", "release_reservation"],
            id="country-not-served",
        ),
        pytest.param(
            {"customer_email": "ada@bounce.test"},
            "FAILED",
            ("compensated", "compensated", "compensated", "failed"),
            ["cancel_shipment", "refund_payment", "release_reservation"],
            id="email-bounces",
        ),
    ],
)
def test_outcome_and_effects_follow_the_test_cards(
    style: dict[str, str],
    api: httpx.Client,
    db: psycopg.Connection[Any],
    stock: Callable[..., str],
    fields: dict[str, Any],
    state: str,
    step_statuses: tuple[str, ...],
    compensations: list[str],
) -> None:
    widget, gadget = stock(10, price_cents=1999), stock(5, price_cents=500)
    ordered = {widget: 2, gadget: 1}

    view = place_and_wait(api, order_body(ordered, **fields, **style))

    assert view["state"] == state
    assert view["total_cents"] == 2 * 1999 + 500
    assert tuple(statuses(view).values()) == step_statuses
    assert compensation_order(view) == compensations
    assert all(c["status"] == "completed" and c["attempts"] == 1 for c in view["compensations"])
    assert view["current_step"] is None
    assert view["dbos_status"] == "SUCCESS"
    assert_nothing_lost(db, view, {widget: 10, gadget: 5}, ordered)
    if state == "COMPLETED":
        assert view["error"] is None
    else:
        failed = next(name for name, status in statuses(view).items() if status == "failed")
        assert view["error"].startswith(f"{failed} refused: ")


@pytest.mark.parametrize(
    "items",
    [
        pytest.param("unknown", id="unknown-sku"),
        pytest.param("short", id="quantity-above-available"),
    ],
)
def test_an_unreservable_item_fails_the_order_and_reserves_nothing(
    style: dict[str, str],
    api: httpx.Client,
    db: psycopg.Connection[Any],
    stock: Callable[..., str],
    items: str,
) -> None:
    plenty, scarce = stock(10), stock(1)
    second = "NO-SUCH-SKU-" + plenty if items == "unknown" else scarce
    ordered = {plenty: 3, second: 2}

    view = place_and_wait(api, order_body(ordered, **style))

    assert view["state"] == "FAILED"
    assert statuses(view) == {
        "reserve_inventory": "failed",
        "process_payment": "pending",
        "create_shipment": "pending",
        "send_confirmation": "pending",
    }
    assert view["compensations"] == []  # all or nothing: nothing was reserved
    assert second in view["error"]
    assert available(db, plenty) == 10
    assert effects(db, view["order_id"]) == {
        "reservations": ["refused"],
        "payments": [],
        "shipments": [],
        "notifications": [],
    }


def test_a_flaky_card_is_retried_until_it_captures_once(
    style: dict[str, str], api: httpx.Client, db: psycopg.Connection[Any], stock: Callable[..., str]
) -> None:
    sku = stock(3)

    view = place_and_wait(api, order_body({sku: 1}, payment_method="pm_card_flaky", **style))

    assert view["state"] == "COMPLETED"
    payment = next(s for s in view["steps"] if s["name"] == "process_payment")
    assert payment["attempts"] >= 3
    assert payment["error"] is None
    assert_nothing_lost(db, view, {sku: 3}, {sku: 1})


@pytest.mark.usefixtures("faults_repaired")
def test_a_step_whose_service_stays_down_fails_after_its_attempts_and_is_undone(
    style: dict[str, str], api: httpx.Client, db: psycopg.Connection[Any], stock: Callable[..., str]
) -> None:
    sku = stock(3)
    api.put("/faults/create_shipment", json={"down": True}).raise_for_status()

    view = place_and_wait(api, order_body({sku: 1}, **style))

    assert view["state"] == "FAILED"
    shipment = next(s for s in view["steps"] if s["name"] == "create_shipment")
    assert shipment["attempts"] == 4  # STEP_ATTEMPTS in tests/conftest.py
    assert "fault switch is on" in shipment["error"]
    # The shipment might have been booked by a call that timed out, so it is cancelled too.
    assert compensation_order(view) == ["cancel_shipment", "refund_payment", "release_reservation"]
    assert_nothing_lost(db, view, {sku: 3}, {sku: 1})
