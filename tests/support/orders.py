"""Building order requests, and checking their effects against the contract."""

import copy
import uuid
from collections import Counter
from typing import Any

import psycopg


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def order_body(items: dict[str, int], **fields: Any) -> dict[str, Any]:
    """A valid POST /orders body for `items` (sku -> quantity); `fields` override."""
    body: dict[str, Any] = {
        "order_id": new_id("ord"),
        "customer_id": "c-42",
        "customer_email": "ada@example.com",
        "items": [{"sku": sku, "quantity": q} for sku, q in items.items()],
        "payment_method": "pm_card_visa",
        "shipping_address": {
            "name": "Ada Lovelace",
            "line1": "1 Main St",
            "city": "Springfield",
            "postal_code": "12345",
            "country": "US",
        },
    }
    body.update(copy.deepcopy(fields))
    return body


def available(conn: psycopg.Connection[Any], sku: str) -> int | None:
    row = conn.execute(
        "SELECT on_hand - reserved FROM inventory.items WHERE sku = %s", (sku,)
    ).fetchone()
    return None if row is None else int(row[0])


def effects(conn: psycopg.Connection[Any], order_id: str) -> dict[str, Any]:
    """Everything the downstream services hold for the order, in creation order. Voided
    keys (an undo that came first) are markers, not effects, and are left out."""

    def rows(sql: str) -> list[tuple[Any, ...]]:
        return conn.execute(sql, (order_id,)).fetchall()

    return {
        "reservations": [
            r[0]
            for r in rows(
                "SELECT status FROM inventory.reservations WHERE order_id = %s ORDER BY created_at"
            )
        ],
        "payments": rows(
            "SELECT status, amount_cents FROM payments.payments "
            "WHERE order_id = %s AND status <> 'voided' ORDER BY created_at"
        ),
        "shipments": [
            r[0]
            for r in rows(
                "SELECT status FROM shipping.shipments "
                "WHERE order_id = %s AND status <> 'voided' ORDER BY created_at"
            )
        ],
        "notifications": [
            r[0]
            for r in rows(
                "SELECT kind FROM notifications.notifications "
                "WHERE order_id = %s AND status = 'sent' ORDER BY created_at"
            )
        ],
    }


def assert_nothing_lost(
    conn: psycopg.Connection[Any],
    view: dict[str, Any],
    stock_before: dict[str, int],
    ordered: dict[str, int],
) -> None:
    """The contract's "nothing lost" rules for one finished saga that alone used its SKUs."""
    assert_effects_match(conn, view)
    for sku, quantity in ordered.items():
        expected = stock_before[sku] - (quantity if view["state"] == "COMPLETED" else 0)
        assert available(conn, sku) == expected, f"{view['order_id']}: {sku}"


def assert_effects_match(conn: psycopg.Connection[Any], view: dict[str, Any]) -> None:
    """The rules for payments, shipments and notifications: each at most once, and what
    stays in effect is exactly what the final state says."""
    state, order_id = view["state"], view["order_id"]
    fx = effects(conn, order_id)
    assert len(fx["reservations"]) <= 1, f"{order_id}: reserved twice: {fx}"
    assert len(fx["payments"]) <= 1, f"{order_id}: charged twice: {fx}"
    assert len(fx["shipments"]) <= 1, f"{order_id}: shipped twice: {fx}"
    kinds = Counter(fx["notifications"])
    assert kinds["confirmation"] <= 1, f"{order_id}: confirmed twice: {fx}"
    assert kinds["cancellation"] <= 1, f"{order_id}: cancelled twice: {fx}"
    if state == "COMPLETED":
        assert fx["reservations"] == ["active"], f"{order_id}: {fx}"
        assert fx["payments"] == [("captured", view["total_cents"])], f"{order_id}: {fx}"
        assert fx["shipments"] == ["created"], f"{order_id}: {fx}"
        assert fx["notifications"] == ["confirmation"], f"{order_id}: {fx}"
    elif state == "FAILED":
        assert "active" not in fx["reservations"], f"{order_id}: {fx}"
        assert all(status != "captured" for status, _ in fx["payments"]), f"{order_id}: {fx}"
        assert "created" not in fx["shipments"], f"{order_id}: {fx}"
        if "confirmation" in kinds:
            assert fx["notifications"] == ["confirmation", "cancellation"], f"{order_id}: {fx}"
    else:
        raise AssertionError(f"{order_id} is not finished: {state}")


def wait_for_state(
    api: Any, order_id: str, states: set[str] | str, timeout: float = 30
) -> dict[str, Any]:
    """Poll GET /orders/{id} until the saga is in one of `states`; its view."""
    import time

    wanted = {states} if isinstance(states, str) else states
    deadline = time.monotonic() + timeout
    while True:
        view: dict[str, Any] = api.get(f"/orders/{order_id}").json()
        if view.get("state") in wanted:
            return view
        if time.monotonic() > deadline:
            raise AssertionError(f"{order_id} never reached {wanted}: {view}")
        time.sleep(0.01)


def wait_for_step(
    api: Any, order_id: str, name: str, status: str, timeout: float = 30
) -> dict[str, Any]:
    """Poll until step or compensation `name` has `status`; the saga's view."""
    import time

    deadline = time.monotonic() + timeout
    while True:
        view: dict[str, Any] = api.get(f"/orders/{order_id}").json()
        if any(
            s["name"] == name and s["status"] == status
            for s in view["steps"] + view["compensations"]
        ):
            return view
        if time.monotonic() > deadline:
            raise AssertionError(f"{order_id}: {name} never {status}: {view}")
        time.sleep(0.01)


def wait_for_parked_count(
    db: psycopg.Connection[Any], order_id: str, count: int, timeout: float = 20
) -> str:
    """Poll until the saga has parked `count` times; its state then."""
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        row = db.execute(
            "SELECT state, parked_count FROM orders.orders WHERE order_id = %s", (order_id,)
        ).fetchone()
        if row is not None and row[1] >= count:
            return str(row[0])
        time.sleep(0.01)
    raise AssertionError(f"{order_id} did not park {count} times")
