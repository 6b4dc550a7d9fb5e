"""The downstream services on their own: every operation acts once per key."""

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import psycopg
import pytest

from services import inventory, notifications, payments, shipping, transport
from services.outcomes import ServiceUnavailable
from tests.support.orders import new_id

Conn = psycopg.Connection[Any]


def item(conn: Conn, available: int, price_cents: int = 100) -> str:
    sku = new_id("SKU")
    inventory.put_item(conn, sku, available, price_cents)
    return sku


def test_a_reservation_is_made_once_per_key(conn: Conn) -> None:
    sku = item(conn, 5, price_cents=250)
    order_id = new_id("ord")

    first = inventory.reserve_inventory(
        conn, f"{order_id}:r", order_id, [{"sku": sku, "quantity": 2}]
    )
    again = inventory.reserve_inventory(
        conn, f"{order_id}:r", order_id, [{"sku": sku, "quantity": 2}]
    )

    assert first == again
    assert first["total_cents"] == 500
    assert inventory.get_item(conn, sku) == {"sku": sku, "available": 3, "price_cents": 250}


def test_a_refused_reservation_holds_nothing(conn: Conn) -> None:
    plenty, scarce = item(conn, 5), item(conn, 1)
    order_id = new_id("ord")

    outcome = inventory.reserve_inventory(
        conn,
        f"{order_id}:r",
        order_id,
        [{"sku": plenty, "quantity": 2}, {"sku": scarce, "quantity": 2}],
    )

    assert outcome == {
        "outcome": "refused",
        "reason": f"insufficient stock for {scarce!r}: 2 requested, 1 available",
    }
    assert inventory.get_item(conn, plenty)["available"] == 5  # type: ignore[index]
    held = conn.execute(
        """SELECT r.status, count(l.sku) FROM inventory.reservations r
             LEFT JOIN inventory.reservation_lines l USING (reservation_id)
            WHERE r.order_id = %s GROUP BY r.status""",
        (order_id,),
    ).fetchall()
    assert held == [("refused", 0)]  # the answer is kept for the key; nothing is held


def test_releasing_twice_gives_the_stock_back_once(conn: Conn) -> None:
    sku = item(conn, 5)
    order_id = new_id("ord")
    inventory.reserve_inventory(conn, f"{order_id}:r", order_id, [{"sku": sku, "quantity": 4}])

    first = inventory.release_reservation(conn, f"{order_id}:r", order_id)
    again = inventory.release_reservation(conn, f"{order_id}:r", order_id)

    assert (first["released"], again["released"]) == (True, False)
    assert inventory.get_item(conn, sku)["available"] == 5  # type: ignore[index]


def test_replacing_stock_keeps_what_is_reserved(conn: Conn) -> None:
    sku = item(conn, 10)
    order_id = new_id("ord")
    inventory.reserve_inventory(conn, f"{order_id}:r", order_id, [{"sku": sku, "quantity": 3}])

    inventory.put_item(conn, sku, available=7, price_cents=100)
    inventory.release_reservation(conn, f"{order_id}:r", order_id)

    assert inventory.get_item(conn, sku)["available"] == 10  # type: ignore[index]


def test_concurrent_multi_item_reservations_never_oversell_or_deadlock(live_url: str) -> None:
    from runtime import database

    with database.connection() as conn:
        a, b = item(conn, 20), item(conn, 20)

    def reserve(i: int) -> dict[str, Any]:
        lines = [{"sku": a, "quantity": 3}, {"sku": b, "quantity": 3}]
        order_id = new_id("ord")
        with database.connection() as conn:  # half of them list the SKUs the other way round
            return inventory.reserve_inventory(
                conn, f"{order_id}:r", order_id, lines if i % 2 else lines[::-1]
            )

    with ThreadPoolExecutor(max_workers=8) as pool:
        outcomes = list(pool.map(reserve, range(16)))

    assert sum(o["outcome"] == "done" for o in outcomes) == 6  # 20 // 3
    with database.connection() as conn:
        assert inventory.get_item(conn, a)["available"] == 2  # type: ignore[index]
        assert inventory.get_item(conn, b)["available"] == 2  # type: ignore[index]


def test_the_database_itself_refuses_stock_below_zero(conn: Conn) -> None:
    sku = item(conn, 1)

    with pytest.raises(psycopg.errors.CheckViolation):
        conn.execute("UPDATE inventory.items SET reserved = 2 WHERE sku = %s", (sku,))


def test_a_payment_is_captured_once_per_key_and_refunded_once(conn: Conn) -> None:
    order_id = new_id("ord")
    key = f"{order_id}:p"

    first = payments.process_payment(conn, key, order_id, 1234, "pm_card_visa")
    again = payments.process_payment(conn, key, order_id, 1234, "pm_card_visa")
    refunds = [payments.refund_payment(conn, key, order_id)["refunded"] for _ in range(2)]

    assert first == again
    assert refunds == [True, False]
    assert [(p["status"], p["amount_cents"]) for p in payments.payments_for(conn, order_id)] == [
        ("refunded", 1234)
    ]


def test_the_flaky_card_fails_twice_then_captures(conn: Conn) -> None:
    order_id = new_id("ord")

    for _ in range(2):
        with pytest.raises(ServiceUnavailable):
            payments.process_payment(conn, f"{order_id}:p", order_id, 100, "pm_card_flaky")
    captured = payments.process_payment(conn, f"{order_id}:p", order_id, 100, "pm_card_flaky")

    assert captured["status"] == "captured"


def test_shipping_refuses_unserved_countries_and_cancels_once(conn: Conn) -> None:
    order_id = new_id("ord")
    address = {"country": "AQ"}

    assert (
        shipping.create_shipment(conn, f"{order_id}:s", order_id, address)["outcome"] == "refused"
    )
    shipment = shipping.create_shipment(conn, f"{order_id}:s", order_id, {"country": "FR"})
    cancels = [
        shipping.cancel_shipment(conn, f"{order_id}:s", order_id)["cancelled"] for _ in range(2)
    ]

    assert shipment["tracking_number"].startswith("TRK")
    assert cancels == [True, False]


def test_a_cancellation_notice_goes_only_to_a_confirmed_customer_and_only_once(conn: Conn) -> None:
    order_id = new_id("ord")

    unconfirmed = notifications.send_cancellation_notice(
        conn, f"{order_id}:x", f"{order_id}:c0", order_id, "a@b.co"
    )
    notifications.send_confirmation(conn, f"{order_id}:c", order_id, "a@b.co")
    for _ in range(2):
        notifications.send_cancellation_notice(
            conn, f"{order_id}:x2", f"{order_id}:c", order_id, "a@b.co"
        )

    assert unconfirmed["sent"] is False
    kinds = [n["kind"] for n in notifications.notifications_for(conn, order_id)]
    assert kinds == ["confirmation", "cancellation"]


def test_a_bouncing_address_is_refused(conn: Conn) -> None:
    order_id = new_id("ord")

    outcome = notifications.send_confirmation(conn, f"{order_id}:c", order_id, "Ada@Bounce.Test")

    assert outcome["outcome"] == "refused"
    assert notifications.notifications_for(conn, order_id) == []


def test_an_operation_switched_down_is_unreachable_until_repaired(conn: Conn) -> None:
    from services import faults

    faults.set_switch(conn, "cancel_shipment", True, 0)
    try:
        with pytest.raises(ServiceUnavailable, match="fault switch is on"):
            transport.call("cancel_shipment", lambda c: shipping.cancel_shipment(c, "k", "o"))
        assert transport.call("create_shipment", lambda c: {"reached": True}) == {"reached": True}
    finally:
        faults.set_switch(conn, "cancel_shipment", False, 0)
    assert transport.call("cancel_shipment", lambda c: {"reached": True}) == {"reached": True}


# Each forward operation with its undo: (act, undo) on one order, and what "it acted" means.
def reserve(conn: Conn, order_id: str) -> dict[str, Any]:
    return inventory.reserve_inventory(
        conn, f"{order_id}:r", order_id, [{"sku": SHARED_SKU, "quantity": 1}]
    )


def release(conn: Conn, order_id: str) -> dict[str, Any]:
    return inventory.release_reservation(conn, f"{order_id}:r", order_id)


def capture(conn: Conn, order_id: str) -> dict[str, Any]:
    return payments.process_payment(conn, f"{order_id}:p", order_id, 100, "pm_card_visa")


def refund(conn: Conn, order_id: str) -> dict[str, Any]:
    return payments.refund_payment(conn, f"{order_id}:p", order_id)


def book(conn: Conn, order_id: str) -> dict[str, Any]:
    return shipping.create_shipment(conn, f"{order_id}:s", order_id, {"country": "US"})


def cancel(conn: Conn, order_id: str) -> dict[str, Any]:
    return shipping.cancel_shipment(conn, f"{order_id}:s", order_id)


def confirm(conn: Conn, order_id: str) -> dict[str, Any]:
    return notifications.send_confirmation(conn, f"{order_id}:c", order_id, "a@b.co")


def retract(conn: Conn, order_id: str) -> dict[str, Any]:
    return notifications.send_cancellation_notice(
        conn, f"{order_id}:x", f"{order_id}:c", order_id, "a@b.co"
    )


def in_effect(conn: Conn, order_id: str) -> dict[str, bool]:
    """Which forward effects of the order are still standing."""

    def exists(sql: str) -> bool:
        return conn.execute(sql, (order_id,)).fetchone() is not None

    confirmed = exists(
        "SELECT 1 FROM notifications.notifications WHERE order_id = %s "
        "AND kind = 'confirmation' AND status = 'sent'"
    )
    retracted = exists(
        "SELECT 1 FROM notifications.notifications WHERE order_id = %s AND kind = 'cancellation'"
    )
    return {
        "reserve": exists(
            "SELECT 1 FROM inventory.reservations WHERE order_id = %s AND status = 'active'"
        ),
        "capture": exists(
            "SELECT 1 FROM payments.payments WHERE order_id = %s AND status = 'captured'"
        ),
        "book": exists(
            "SELECT 1 FROM shipping.shipments WHERE order_id = %s AND status = 'created'"
        ),
        "confirm": confirmed and not retracted,
    }


PAIRS = [(reserve, release), (capture, refund), (book, cancel), (confirm, retract)]
SHARED_SKU = "RACE-SKU"


@pytest.fixture
def shared_sku(conn: Conn) -> str:
    inventory.put_item(conn, SHARED_SKU, 1_000_000, 100)
    return SHARED_SKU


@pytest.mark.usefixtures("shared_sku")
@pytest.mark.parametrize(("act", "undo"), PAIRS, ids=[a.__name__ for a, _ in PAIRS])
def test_an_undo_that_comes_first_voids_the_key_so_a_late_call_does_nothing(
    conn: Conn, act: Any, undo: Any
) -> None:
    order_id = new_id("ord")

    undone = undo(conn, order_id)
    late = act(conn, order_id)

    assert undone["outcome"] == "done"
    assert late["outcome"] == "refused"
    assert "compensation" in late["reason"] or "cancelled" in late["reason"]
    assert not any(in_effect(conn, order_id).values())


@pytest.mark.usefixtures("shared_sku")
@pytest.mark.parametrize(("act", "undo"), PAIRS, ids=[a.__name__ for a, _ in PAIRS])
def test_an_undo_after_its_call_undoes_it_and_a_repeat_of_the_call_is_refused(
    conn: Conn, act: Any, undo: Any
) -> None:
    order_id = new_id("ord")

    assert act(conn, order_id)["outcome"] == "done"
    undo(conn, order_id)
    again = act(conn, order_id)  # e.g. a saga forked after it had failed

    assert again["outcome"] == "refused"
    assert not any(in_effect(conn, order_id).values())


@pytest.mark.usefixtures("shared_sku")
@pytest.mark.parametrize(("act", "undo"), PAIRS, ids=[a.__name__ for a, _ in PAIRS])
def test_a_call_racing_its_undo_never_leaves_an_effect_standing(
    live_url: str, act: Any, undo: Any
) -> None:
    from runtime import database

    def run(fn: Any, order_id: str, start: threading.Barrier) -> None:
        start.wait()
        with database.connection() as c:
            fn(c, order_id)

    for _ in range(25):
        order_id = new_id("ord")
        start = threading.Barrier(2)
        with ThreadPoolExecutor(max_workers=2) as pool:
            calls = [pool.submit(run, fn, order_id, start) for fn in (act, undo)]
            for call in calls:
                call.result()
        with database.connection() as c:
            assert not any(in_effect(c, order_id).values()), order_id
