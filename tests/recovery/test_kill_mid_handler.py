"""SIGKILL the service inside the order service's own handlers of a choreographed order, the
ones that call no downstream service (test_kill_mid_step.py holds the others in flight with
latency): `OrderFailed`'s and `OrderCompleted`'s, before their effect and after it.

They are held where they are with PostgreSQL's own locks, taken by the test:
- before the effect: the test has written the handler's event itself, uncommitted, so the
  handler's insert of it waits (and with it, for OrderFailed, the FAILED it writes in the
  same transaction);
- after the effect: the test also holds the handler's row of dbos.workflow_status, so once
  the gate opens and the effect commits, DBOS cannot checkpoint the step (it locks that row
  first) nor finish the workflow.
Then the service is killed, the locks let go, and the service started again: the order
ends as it must, its end event once, each handler once, each effect once.
"""

from typing import Any

import httpx
import psycopg
import pytest

from tests.recovery.conftest import wait_for_end, wait_until
from tests.support.orders import assert_nothing_lost, order_body
from tests.support.process import ServiceProcess

# The handler (reaction, its event) and what makes an order reach it.
HANDLERS = {
    "OrderFailed": ("InventoryReleased", {"payment_method": "pm_card_declined"}, "FAILED"),
    "OrderCompleted": ("OrderConfirmed", {}, "COMPLETED"),
}


def waiting_for_a_lock(sql: psycopg.Connection[Any], fragment: str) -> bool:
    """A session of the service waits for a lock, in a statement containing `fragment`."""
    row = sql.execute(
        """SELECT 1 FROM pg_stat_activity
            WHERE wait_event_type = 'Lock' AND query LIKE %s AND pid <> pg_backend_pid()""",
        (f"%{fragment}%",),
    ).fetchone()
    return row is not None


def handler_id(sql: psycopg.Connection[Any], order_id: str, event: str) -> str | None:
    row = sql.execute(
        """SELECT d.workflow_id FROM orders.deliveries d
             JOIN orders.events e ON e.seq = d.event_seq
            WHERE d.order_id = %s AND e.type = %s""",
        (order_id, event),
    ).fetchone()
    return None if row is None else str(row[0])


@pytest.mark.parametrize("when", ["before-effect", "after-effect"])
@pytest.mark.parametrize("end", sorted(HANDLERS))
def test_a_kill_in_the_order_services_end_handler_still_ends_the_order_once(
    service: ServiceProcess, service_db: str, sql: psycopg.Connection[Any], end: str, when: str
) -> None:
    cause, fields, state = HANDLERS[end]
    service.start(PARTICIPANT_LATENCY_MS="300")  # time to take the gate before the end
    body = order_body({"WIDGET": 2}, coordination="choreography", **fields)
    with httpx.Client(base_url=service.url) as client:
        client.put("/inventory/WIDGET", json={"available": 5, "price_cents": 1500})
        assert client.post("/orders", json=body).status_code == 202
    order_id = body["order_id"]

    with psycopg.connect(service_db) as gate, psycopg.connect(service_db) as hold:
        gate.execute(  # the handler's own event, written first (uncommitted)
            "INSERT INTO orders.events (order_id, type, by) VALUES (%s, %s, 'test')",
            (order_id, end),
        )
        wait_until(lambda: waiting_for_a_lock(sql, "INSERT INTO orders.events"), "the gate")
        handler = handler_id(sql, order_id, cause)
        assert handler is not None
        if when == "after-effect":
            hold.execute(
                "SELECT 1 FROM dbos.workflow_status WHERE workflow_uuid = %s FOR UPDATE",
                (handler,),
            )
            gate.rollback()  # the effect commits; DBOS then waits for the handler's row
            wait_until(lambda: ended_event(sql, order_id, end), f"{end} written")
            wait_until(lambda: waiting_for_a_lock(sql, "workflow_status"), "DBOS held")
        service.kill()
        assert ended_event(sql, order_id, end) == (when == "after-effect")
        status = sql.execute(
            "SELECT status FROM dbos.workflow_status WHERE workflow_uuid = %s", (handler,)
        ).fetchone()
        assert status == ("PENDING",), "killed too late to test anything"
        gate.rollback()
        hold.rollback()

    service.start(PARTICIPANT_LATENCY_MS="0")
    view = wait_for_end(service.url, order_id)

    assert view["state"] == state
    types = [e["type"] for e in view["events"]]
    assert types[-1] == end
    assert types.count(end) == 1
    handlers = sql.execute(
        """SELECT count(*), count(*) FILTER (WHERE w.status = 'SUCCESS')
             FROM orders.deliveries d
             LEFT JOIN dbos.workflow_status w ON w.workflow_uuid = d.workflow_id
            WHERE d.order_id = %s""",
        (order_id,),
    ).fetchone()
    assert handlers is not None
    assert handlers[0] == handlers[1]  # each handler ran to its end, once
    assert_nothing_lost(sql, view, {"WIDGET": 5}, {"WIDGET": 2})


def ended_event(sql: psycopg.Connection[Any], order_id: str, end: str) -> bool:
    row = sql.execute(
        "SELECT 1 FROM orders.events WHERE order_id = %s AND type = %s AND by = 'orders'",
        (order_id, end),
    ).fetchone()
    return row is not None
