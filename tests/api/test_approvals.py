"""Orders at or above APPROVAL_THRESHOLD_CENTS (100000 here) wait after the reservation.
APPROVAL_TIMEOUT_SECONDS is 4 in the suite (tests/conftest.py)."""

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import psycopg

from tests.support.orders import (
    assert_nothing_lost,
    effects,
    order_body,
    wait_for_state,
)


def big_order(
    api: httpx.Client, stock: Callable[..., str], style: dict[str, str] | None = None, **fields: Any
) -> dict[str, Any]:
    """A 2 x 50000 = 100000-cent order (exactly the threshold), placed; its body."""
    sku = stock(5, price_cents=50_000)
    body = order_body({sku: 2}, **fields, **(style or {}))
    assert api.post("/orders", json=body).status_code == 202
    return body


def sku_of(body: dict[str, Any]) -> str:
    return str(body["items"][0]["sku"])


def test_an_order_at_the_threshold_waits_then_goes_on_when_approved(
    style: dict[str, str], api: httpx.Client, db: psycopg.Connection[Any], stock: Callable[..., str]
) -> None:
    body = big_order(api, stock, style)

    waiting = wait_for_state(api, body["order_id"], "AWAITING_APPROVAL")
    charged_while_waiting = effects(db, body["order_id"])["payments"]
    approved = api.post(f"/orders/{body['order_id']}/approve")
    done = api.post("/orders", json=body, params={"wait": 30}).json()

    assert [s["status"] for s in waiting["steps"]] == ["completed", "pending", "pending", "pending"]
    assert waiting["current_step"] is None
    deadline = datetime.fromisoformat(waiting["approval"]["deadline"])
    assert timedelta(seconds=3) < deadline - datetime.now(UTC) <= timedelta(seconds=4)
    assert charged_while_waiting == []
    assert approved.status_code == 202
    assert done["state"] == "COMPLETED"
    assert done["approval"]["decision"] == "approved"
    assert_nothing_lost(db, done, {sku_of(body): 5}, {sku_of(body): 2})


def test_an_order_below_the_threshold_does_not_wait(
    style: dict[str, str], api: httpx.Client, stock: Callable[..., str]
) -> None:
    sku = stock(5, price_cents=99_999)

    view = api.post("/orders", json=order_body({sku: 1}, **style), params={"wait": 30}).json()

    assert view["state"] == "COMPLETED"
    assert view["approval"] is None


def test_a_rejected_order_releases_its_reservation(
    style: dict[str, str], api: httpx.Client, db: psycopg.Connection[Any], stock: Callable[..., str]
) -> None:
    body = big_order(api, stock, style)
    wait_for_state(api, body["order_id"], "AWAITING_APPROVAL")

    assert api.post(f"/orders/{body['order_id']}/reject").status_code == 202
    view = api.post("/orders", json=body, params={"wait": 30}).json()

    assert view["state"] == "FAILED"
    assert view["error"] == "rejected by the approver"
    assert view["approval"]["decision"] == "rejected"
    assert [c["name"] for c in view["compensations"]] == ["release_reservation"]
    assert_nothing_lost(db, view, {sku_of(body): 5}, {sku_of(body): 2})


def test_an_order_nobody_approves_in_time_is_undone_and_cannot_be_approved_after(
    style: dict[str, str], api: httpx.Client, db: psycopg.Connection[Any], stock: Callable[..., str]
) -> None:
    body = big_order(api, stock, style)

    view = api.post("/orders", json=body, params={"wait": 30}).json()
    late = api.post(f"/orders/{body['order_id']}/approve")

    assert view["state"] == "FAILED"
    assert view["error"] == "not approved within 4 s"
    assert view["approval"]["decision"] == "timed_out"
    assert [c["name"] for c in view["compensations"]] == ["release_reservation"]
    assert_nothing_lost(db, view, {sku_of(body): 5}, {sku_of(body): 2})
    assert late.status_code == 409
    assert "timed out" in late.json()["detail"]


def test_deciding_twice_is_harmless_and_answered_clearly(
    style: dict[str, str], api: httpx.Client, db: psycopg.Connection[Any], stock: Callable[..., str]
) -> None:
    body = big_order(api, stock, style)
    order_id = body["order_id"]
    wait_for_state(api, order_id, "AWAITING_APPROVAL")

    first = api.post(f"/orders/{order_id}/approve")
    view = api.post("/orders", json=body, params={"wait": 30}).json()
    again = api.post(f"/orders/{order_id}/approve")
    contrary = api.post(f"/orders/{order_id}/reject")

    assert first.status_code == 202
    assert view["state"] == "COMPLETED"
    assert (again.status_code, contrary.status_code) == (409, 409)
    assert again.json()["detail"] == f"order {order_id!r} was already approved; it is COMPLETED"
    assert effects(db, order_id)["payments"] == [("captured", 100_000)]


def test_only_a_waiting_order_can_be_approved(
    style: dict[str, str], api: httpx.Client, stock: Callable[..., str]
) -> None:
    view = api.post("/orders", json=order_body({stock(1): 1}, **style), params={"wait": 30}).json()

    response = api.post(f"/orders/{view['order_id']}/approve")

    assert response.status_code == 409
    assert "only an order AWAITING_APPROVAL can be approved" in response.json()["detail"]
    assert api.post("/orders/no-such-order/approve").status_code == 404


def test_a_decision_after_the_deadline_shown_is_refused(
    style: dict[str, str], api: httpx.Client, db: psycopg.Connection[Any], stock: Callable[..., str]
) -> None:
    body = big_order(api, stock, style)
    order_id = body["order_id"]
    wait_for_state(api, order_id, "AWAITING_APPROVAL")
    db.execute(  # as if the saga's own timer ran late (a crash just as it began waiting)
        "UPDATE orders.orders SET approval_deadline = now() - interval '1 second' "
        "WHERE order_id = %s",
        (order_id,),
    )

    late = api.post(f"/orders/{order_id}/approve")
    view = api.post("/orders", json=body, params={"wait": 30}).json()

    assert late.status_code == 409
    assert "timed out" in late.json()["detail"]
    assert view["state"] == "FAILED"
    assert view["approval"]["decision"] == "timed_out"
