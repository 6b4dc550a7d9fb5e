"""SIGKILL the service while a step or a compensation is in flight; started again, the saga
finishes by itself in the right state with every effect exactly once.

PARTICIPANT_LATENCY_MS holds each downstream call in flight: half of it passes before the
service acts, half after. So a kill can land before the effect, or after the effect but
before DBOS has checkpointed the step (the case idempotency keys exist for).
"""

from typing import Any

import httpx
import psycopg
import pytest

from tests.recovery.conftest import wait_for_end, wait_until
from tests.support.orders import assert_nothing_lost, order_body
from tests.support.process import ServiceProcess

LATENCY_MS = "1000"

# What each operation leaves behind in its service's tables once it has acted.
EFFECT = {
    "reserve_inventory": "SELECT 1 FROM inventory.reservations WHERE order_id = %s",
    "process_payment": "SELECT 1 FROM payments.payments WHERE order_id = %s",
    "create_shipment": "SELECT 1 FROM shipping.shipments WHERE order_id = %s",
    "send_confirmation": "SELECT 1 FROM notifications.notifications WHERE order_id = %s",
    "release_reservation": "SELECT 1 FROM inventory.reservations "
    "WHERE order_id = %s AND status = 'released'",
    "refund_payment": "SELECT 1 FROM payments.payments WHERE order_id = %s AND status = 'refunded'",
    "cancel_shipment": "SELECT 1 FROM shipping.shipments "
    "WHERE order_id = %s AND status = 'cancelled'",
}
# An order whose saga reaches each compensation soonest, and the compensations it runs.
FAILING = {
    "release_reservation": ({"payment_method": "pm_card_declined"}, ["release_reservation"]),
    "refund_payment": (
        {
            "shipping_address": {
                "name": "A",
                "line1": "1",
                "city": "C",
                "postal_code": "1",
                "country": "AQ",
            }
        },
        ["refund_payment", "release_reservation"],
    ),
    "cancel_shipment": (
        {"customer_email": "ada@bounce.test"},
        ["cancel_shipment", "refund_payment", "release_reservation"],
    ),
}


# Each test runs for both coordinations: the orchestrated saga's workflow is killed in a step,
# or a choreographed order's event handler is.
COORDINATIONS = pytest.mark.parametrize("coordination", ["orchestration", "choreography"])


def assert_handled_once(sql: psycopg.Connection[Any], view: dict[str, Any]) -> None:
    """A choreographed order's events were each handled by one workflow per subscriber,
    which finished; there is no other handler of the order."""
    if view["coordination"] != "choreography":
        return
    handlers = sql.execute(
        """SELECT d.subscriber, e.type, w.status FROM orders.deliveries d
             JOIN orders.events e ON e.seq = d.event_seq
             LEFT JOIN dbos.workflow_status w ON w.workflow_uuid = d.workflow_id
            WHERE d.order_id = %s""",
        (view["order_id"],),
    ).fetchall()
    others = sql.execute(
        """SELECT count(*) FROM dbos.workflow_status WHERE name = 'handle_event'
              AND workflow_uuid LIKE %s
              AND workflow_uuid NOT IN (SELECT workflow_id FROM orders.deliveries)""",
        (view["saga_id"] + ":%",),
    ).fetchone()
    assert handlers
    assert all(status == "SUCCESS" for _, _, status in handlers), handlers
    assert len({(s, t) for s, t, _ in handlers}) == len(handlers)
    assert others == (0,)
    assert [e["type"] for e in view["events"]][-1] in ("OrderCompleted", "OrderFailed")


def happened(sql: psycopg.Connection[Any], operation: str, order_id: str) -> bool:
    return sql.execute(EFFECT[operation], (order_id,)).fetchone() is not None


def journal_status(sql: psycopg.Connection[Any], order_id: str, name: str) -> str | None:
    row = sql.execute(
        "SELECT status FROM orders.saga_steps WHERE order_id = %s AND name = %s", (order_id, name)
    ).fetchone()
    return None if row is None else str(row[0])


def checkpointed(sql: psycopg.Connection[Any], order_id: str, name: str) -> bool:
    """DBOS has checkpointed step `name` of the order: in its saga's workflow, or in one of
    the event handlers of a choreographed order."""
    row = sql.execute(
        """SELECT 1 FROM dbos.operation_outputs op
            WHERE op.function_name = %(name)s AND op.workflow_uuid IN (
                  SELECT saga_id FROM orders.orders WHERE order_id = %(order_id)s
                  UNION ALL
                  SELECT workflow_id FROM orders.deliveries WHERE order_id = %(order_id)s)""",
        {"order_id": order_id, "name": name},
    ).fetchone()
    return row is not None


def start_order(
    service: ServiceProcess, stock: int, fields: dict[str, Any], coordination: str
) -> dict[str, Any]:
    with httpx.Client(base_url=service.url) as client:
        client.put("/inventory/WIDGET", json={"available": stock, "price_cents": 1500})
        body = order_body({"WIDGET": 2}, **fields, coordination=coordination)
        assert client.post("/orders", json=body).status_code == 202
    return body


def kill_in_flight(
    service: ServiceProcess, sql: psycopg.Connection[Any], order_id: str, name: str, when: str
) -> None:
    """SIGKILL while `name` is in flight: before its effect, or right after it."""
    if when == "before-effect":
        wait_until(lambda: journal_status(sql, order_id, name) == "executing", f"{name} starts")
    else:
        wait_until(lambda: happened(sql, name, order_id), f"{name} acts")
    service.kill()
    assert happened(sql, name, order_id) == (when == "after-effect")
    assert not checkpointed(sql, order_id, name), "killed too late to test anything"


def attempts(view: dict[str, Any], name: str) -> int:
    return next(s["attempts"] for s in view["steps"] + view["compensations"] if s["name"] == name)


@COORDINATIONS
@pytest.mark.parametrize("when", ["before-effect", "after-effect"])
@pytest.mark.parametrize(
    "step", ["reserve_inventory", "process_payment", "create_shipment", "send_confirmation"]
)
def test_a_kill_during_a_forward_step_still_completes_the_saga_once(
    service: ServiceProcess,
    sql: psycopg.Connection[Any],
    step: str,
    when: str,
    coordination: str,
) -> None:
    service.start(PARTICIPANT_LATENCY_MS=LATENCY_MS)
    body = start_order(service, stock=5, fields={}, coordination=coordination)

    kill_in_flight(service, sql, body["order_id"], step, when)
    service.start(PARTICIPANT_LATENCY_MS="0")
    view = wait_for_end(service.url, body["order_id"])

    assert view["state"] == "COMPLETED"
    assert view["compensations"] == []
    assert attempts(view, step) == 2  # it ran again after the restart...
    assert_nothing_lost(sql, view, {"WIDGET": 5}, {"WIDGET": 2})  # ...but acted once
    assert_handled_once(sql, view)


@COORDINATIONS
@pytest.mark.parametrize(
    ("compensation", "when"),
    [
        ("release_reservation", "before-effect"),
        ("release_reservation", "after-effect"),
        ("refund_payment", "after-effect"),
        ("cancel_shipment", "after-effect"),
    ],
)
def test_a_kill_during_a_compensation_still_undoes_everything_once(
    service: ServiceProcess,
    sql: psycopg.Connection[Any],
    compensation: str,
    when: str,
    coordination: str,
) -> None:
    fields, compensations = FAILING[compensation]
    service.start(PARTICIPANT_LATENCY_MS=LATENCY_MS)
    body = start_order(service, stock=5, fields=fields, coordination=coordination)

    kill_in_flight(service, sql, body["order_id"], compensation, when)
    service.start(PARTICIPANT_LATENCY_MS="0")
    view = wait_for_end(service.url, body["order_id"])

    assert view["state"] == "FAILED"
    assert [c["name"] for c in view["compensations"]] == compensations
    assert attempts(view, compensation) == 2
    assert_nothing_lost(sql, view, {"WIDGET": 5}, {"WIDGET": 2})
    assert_handled_once(sql, view)
