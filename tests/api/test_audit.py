"""`make audit` finds each kind of broken promise: real sagas are run, then their effects are
tampered with inside a transaction that is rolled back, and the audit must name the saga."""

import os
from collections.abc import Iterator
from typing import Any

import httpx
import psycopg
import pytest

from orders.audit import audit, main
from tests.support.orders import order_body


@pytest.fixture
def tx() -> Iterator[psycopg.Connection[Any]]:
    """A connection in a transaction that is rolled back: the tampering never lands."""
    with psycopg.connect(os.environ["DATABASE_URL"]) as conn:
        yield conn
        conn.rollback()


def finished(api: httpx.Client, body: dict[str, Any]) -> dict[str, Any]:
    """The view once the saga has ended and its DBOS workflow has returned too: `?wait=`
    answers only then, while the row says COMPLETED a moment before the workflow returns
    (a test that looked at the row alone saw a workflow still PENDING now and then)."""
    answer = api.post("/orders", params={"wait": 30}, json=body)
    assert answer.status_code == 200, answer.text
    view: dict[str, Any] = answer.json()
    return view


def about(conn: psycopg.Connection[Any], subject: str) -> list[str]:
    report = audit(conn, own_snapshot=False)
    return [v for v in report.violations if subject in v]


@pytest.fixture
def completed(api: httpx.Client, stock: Any, style: dict[str, str]) -> dict[str, Any]:
    """A COMPLETED order, of each coordination (every test taking it runs for both)."""
    sku = stock(10)
    view = finished(api, order_body({sku: 2}, **style))
    assert view["state"] == "COMPLETED"
    return {**view, "sku": sku}


@pytest.fixture
def failed(api: httpx.Client, stock: Any, style: dict[str, str]) -> dict[str, Any]:
    view = finished(api, order_body({stock(10): 1}, payment_method="pm_card_declined", **style))
    assert view["state"] == "FAILED"
    return view


def test_sagas_as_they_really_end_have_no_violations(
    tx: psycopg.Connection[Any], completed: dict[str, Any], failed: dict[str, Any]
) -> None:
    assert about(tx, completed["order_id"]) == []
    assert about(tx, failed["order_id"]) == []
    assert about(tx, completed["sku"]) == []


def test_a_second_capture_is_a_duplicate(
    tx: psycopg.Connection[Any], completed: dict[str, Any]
) -> None:
    tx.execute(
        """INSERT INTO payments.payments
               (payment_id, idempotency_key, order_id, amount_cents, payment_method, status)
           VALUES ('pay_x', 'x', %s, 100, 'pm_card_visa', 'captured')""",
        (completed["order_id"],),
    )
    violations = about(tx, completed["order_id"])
    assert any(v.startswith("duplicated: ") and "2 payments (2 captured)" in v for v in violations)
    assert any(v.startswith("lost: ") and "COMPLETED but captured" in v for v in violations)


def test_a_completed_order_without_its_shipment_lost_something(
    tx: psycopg.Connection[Any], completed: dict[str, Any]
) -> None:
    tx.execute(
        "UPDATE shipping.shipments SET status = 'cancelled' WHERE order_id = %s",
        (completed["order_id"],),
    )
    (violation,) = about(tx, completed["order_id"])
    assert violation.startswith("lost: ")
    assert "COMPLETED but shipments ['cancelled']" in violation


def test_a_failed_order_still_charged_lost_something(
    tx: psycopg.Connection[Any], failed: dict[str, Any]
) -> None:
    tx.execute(
        """INSERT INTO payments.payments
               (payment_id, idempotency_key, order_id, amount_cents, payment_method, status)
           VALUES ('pay_y', 'y', %s, 100, 'pm_card_visa', 'captured')""",
        (failed["order_id"],),
    )
    (violation,) = about(tx, failed["order_id"])
    assert violation.startswith("lost: ")
    assert "FAILED but payment still captured" in violation


def test_stock_held_by_no_reservation_is_flagged(
    tx: psycopg.Connection[Any], completed: dict[str, Any]
) -> None:
    tx.execute(
        "UPDATE inventory.items SET reserved = reserved + 1 WHERE sku = %s", (completed["sku"],)
    )
    (violation,) = about(tx, completed["sku"])
    assert violation.startswith("lost: database: ")
    assert "3 reserved, but active reservations hold 2" in violation


def test_a_saga_whose_workflow_returned_early_is_stuck(
    tx: psycopg.Connection[Any], completed: dict[str, Any]
) -> None:
    tx.execute(
        "UPDATE orders.orders SET state = 'PENDING' WHERE order_id = %s",
        (completed["order_id"],),
    )
    violations = about(tx, completed["order_id"])
    assert any(
        v.startswith("stuck: ") and "PENDING, but its DBOS workflow has returned" in v
        for v in violations
    )


def test_an_order_whose_saga_never_started_is_stuck(tx: psycopg.Connection[Any]) -> None:
    tx.execute(
        """INSERT INTO orders.orders
               (order_id, saga_id, request, request_sha256, state, created_at)
           VALUES ('never-started', 'no-such-workflow', '{"items": []}', '-', 'STARTED',
                   now() - interval '2 minutes')"""
    )
    (violation,) = about(tx, "never-started")
    assert violation.startswith("stuck: ")
    assert "never started" in violation


def test_make_audit_exits_nonzero_and_prints_each_violation(
    completed: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    with psycopg.connect(os.environ["DATABASE_URL"], autocommit=True) as conn:
        conn.execute(
            "UPDATE notifications.notifications SET status = 'voided' WHERE order_id = %s",
            (completed["order_id"],),
        )
    try:
        code = main([])
    finally:
        with psycopg.connect(os.environ["DATABASE_URL"], autocommit=True) as conn:
            conn.execute(
                "UPDATE notifications.notifications SET status = 'sent' WHERE order_id = %s",
                (completed["order_id"],),
            )
    out = capsys.readouterr().out
    assert code == 1
    assert f"lost: saga {completed['saga_id']} (order {completed['order_id']})" in out
    assert "COMPLETED but notifications []" in out
    assert "audit: " in out.splitlines()[-1]


@pytest.fixture
def choreographed(api: httpx.Client, stock: Any) -> dict[str, Any]:
    view = finished(api, order_body({stock(10): 1}, coordination="choreography"))
    assert view["state"] == "COMPLETED"
    return view


def test_an_event_whose_handler_never_came_is_lost(
    tx: psycopg.Connection[Any], choreographed: dict[str, Any]
) -> None:
    tx.execute(
        """DELETE FROM dbos.workflow_status WHERE workflow_uuid IN (
               SELECT d.workflow_id FROM orders.deliveries d JOIN orders.events e
                   ON e.seq = d.event_seq
                WHERE d.order_id = %s AND e.type = 'PaymentCaptured')""",
        (choreographed["order_id"],),
    )
    tx.execute(  # long enough ago for its handler to have been started, or swept
        "UPDATE orders.events SET at = at - interval '2 minutes' WHERE order_id = %s",
        (choreographed["order_id"],),
    )
    (violation,) = about(tx, choreographed["order_id"])
    assert violation.startswith("lost: ")
    assert "PaymentCaptured was routed to shipping, which never got it" in violation


def test_an_ended_order_without_its_end_event_lost_it(
    tx: psycopg.Connection[Any], choreographed: dict[str, Any]
) -> None:
    tx.execute(
        "DELETE FROM orders.events WHERE order_id = %s AND type = 'OrderCompleted'",
        (choreographed["order_id"],),
    )
    (violation,) = about(tx, choreographed["order_id"])
    assert violation.startswith("lost: ")
    assert "COMPLETED but no OrderCompleted event" in violation


def test_a_handler_that_ended_in_error_is_stuck(
    tx: psycopg.Connection[Any], choreographed: dict[str, Any]
) -> None:
    tx.execute(
        """UPDATE dbos.workflow_status SET status = 'ERROR' WHERE workflow_uuid IN (
               SELECT workflow_id FROM orders.deliveries WHERE order_id = %s
                  AND subscriber = 'notifications')""",
        (choreographed["order_id"],),
    )
    (violation,) = about(tx, choreographed["order_id"])
    assert violation.startswith("stuck: ")
    assert "the notifications handler of ShipmentCreated ended ERROR" in violation


def test_two_handlers_of_one_order_at_once_are_a_duplicate(
    tx: psycopg.Connection[Any], choreographed: dict[str, Any]
) -> None:
    tx.execute(
        """UPDATE dbos.workflow_status SET status = 'ENQUEUED' WHERE workflow_uuid IN (
               SELECT workflow_id FROM orders.deliveries WHERE order_id = %s
                  AND subscriber IN ('payments', 'shipping'))""",
        (choreographed["order_id"],),
    )
    violations = about(tx, choreographed["order_id"])
    assert any(
        v.startswith("duplicated: ")
        and "handlers at once: payments on InventoryReserved, shipping on PaymentCaptured" in v
        for v in violations
    )


def test_a_handler_that_announced_twice_decided_twice(
    tx: psycopg.Connection[Any], choreographed: dict[str, Any]
) -> None:
    tx.execute(
        """INSERT INTO orders.events (order_id, type, by, caused_by)
           SELECT order_id, 'PaymentFailed', 'payments', caused_by FROM orders.events
            WHERE order_id = %s AND type = 'PaymentCaptured'""",
        (choreographed["order_id"],),
    )
    violations = about(tx, choreographed["order_id"])
    assert any(
        v.startswith("duplicated: ")
        and ":InventoryReserved:payments decided twice: PaymentCaptured, PaymentFailed" in v
        for v in violations
    ), violations
