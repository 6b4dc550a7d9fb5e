"""Waits that survive a SIGKILL: the approval deadline, a parked saga, and the durable
waits between tries of a failing compensation."""

import time
from datetime import datetime, timedelta
from typing import Any

import httpx
import psycopg
import pytest

from tests.recovery.conftest import wait_for_end, wait_until
from tests.support.orders import assert_nothing_lost, order_body
from tests.support.process import ServiceProcess

AQ = {"name": "A", "line1": "1", "city": "C", "postal_code": "1", "country": "AQ"}


# These run for both coordinations: an orchestrated saga's waits, or a choreographed
# order's handlers waiting (the order service's approval wait, a parked compensation).
COORDINATIONS = pytest.mark.parametrize("coordination", ["orchestration", "choreography"])


def place(service: ServiceProcess, price_cents: int, **fields: Any) -> dict[str, Any]:
    with httpx.Client(base_url=service.url) as client:
        client.put("/inventory/WIDGET", json={"available": 5, "price_cents": price_cents})
        body = order_body({"WIDGET": 2}, **fields)
        assert client.post("/orders", json=body).status_code == 202
    return body


def saga_row(sql: psycopg.Connection[Any], order_id: str) -> dict[str, Any]:
    cur = sql.execute("SELECT * FROM saga_status WHERE order_id = %s", (order_id,))
    names = [c.name for c in cur.description or []]
    row = cur.fetchone()
    assert row is not None
    return dict(zip(names, row, strict=True))


@COORDINATIONS
def test_a_restart_during_the_approval_wait_keeps_the_original_deadline(
    service: ServiceProcess, sql: psycopg.Connection[Any], coordination: str
) -> None:
    service.start(APPROVAL_TIMEOUT_SECONDS="10")
    body = place(service, price_cents=60_000, coordination=coordination)
    awaiting = "SELECT approval_deadline FROM orders.orders WHERE order_id = %s AND state = %s"
    args = (body["order_id"], "AWAITING_APPROVAL")
    wait_until(lambda: sql.execute(awaiting, args).fetchone() is not None, "awaiting approval")
    deadline: datetime = sql.execute(awaiting, args).fetchone()[0]  # type: ignore[index]

    service.kill()
    time.sleep(3)
    # Back well before the deadline, even on a loaded machine; a fresh 10 s wait begun after
    # this restart would end at least 4 s after the deadline.
    service.start(APPROVAL_TIMEOUT_SECONDS="10")
    view = wait_for_end(service.url, body["order_id"])

    assert view["state"] == "FAILED"
    assert view["error"] == "not approved within 10 s"
    assert [c["name"] for c in view["compensations"]] == ["release_reservation"]
    ended = datetime.fromisoformat(view["updated_at"])
    assert deadline <= ended < deadline + timedelta(seconds=3), (deadline, ended)
    assert_nothing_lost(sql, view, {"WIDGET": 5}, {"WIDGET": 2})


@COORDINATIONS
def test_an_approval_after_a_restart_reaches_the_waiting_saga(
    service: ServiceProcess, sql: psycopg.Connection[Any], coordination: str
) -> None:
    service.start()
    body = place(service, price_cents=60_000, coordination=coordination)
    wait_until(lambda: saga_row(sql, body["order_id"])["state"] == "AWAITING_APPROVAL", "awaiting")

    service.kill()
    service.start()
    approved = httpx.post(f"{service.url}/orders/{body['order_id']}/approve")
    view = wait_for_end(service.url, body["order_id"])

    assert approved.status_code == 202
    assert view["state"] == "COMPLETED"
    assert view["approval"]["decision"] == "approved"
    assert_nothing_lost(sql, view, {"WIDGET": 5}, {"WIDGET": 2})


@COORDINATIONS
def test_a_saga_parked_across_a_kill_is_still_parked_and_still_retryable(
    service: ServiceProcess, sql: psycopg.Connection[Any], coordination: str
) -> None:
    service.start(COMPENSATION_ATTEMPTS="2")
    httpx.put(f"{service.url}/faults/refund_payment", json={"down": True}).raise_for_status()
    body = place(service, price_cents=1000, shipping_address=AQ, coordination=coordination)
    parked = lambda: saga_row(sql, body["order_id"])["state"] == "COMPENSATION_FAILED"  # noqa: E731
    wait_until(parked, "parked")

    service.kill()
    service.start(COMPENSATION_ATTEMPTS="2")
    # DBOS recovers through its internal queue: ENQUEUED, then PENDING once running again.
    wait_until(lambda: saga_row(sql, body["order_id"])["dbos_status"] == "PENDING", "recovered")
    time.sleep(1)  # give a wrongly resumed saga the time to move on

    row = saga_row(sql, body["order_id"])
    assert (row["state"], row["dbos_status"], row["current_step"]) == (
        "COMPENSATION_FAILED",
        "PENDING",
        "refund_payment",
    )
    assert row["step_attempts"] == 2
    httpx.put(f"{service.url}/faults/refund_payment", json={"down": False}).raise_for_status()
    retried = httpx.post(f"{service.url}/orders/{body['order_id']}/retry-compensation")
    view = wait_for_end(service.url, body["order_id"])
    assert retried.status_code == 202
    assert view["state"] == "FAILED"
    assert [c["name"] for c in view["compensations"]] == ["refund_payment", "release_reservation"]
    assert_nothing_lost(sql, view, {"WIDGET": 5}, {"WIDGET": 2})


@COORDINATIONS
def test_a_restart_between_tries_of_a_failing_compensation_goes_on_counting(
    service: ServiceProcess, sql: psycopg.Connection[Any], coordination: str
) -> None:
    settings = {"COMPENSATION_ATTEMPTS": "3", "RETRY_BACKOFF_SECONDS": "2"}
    service.start(**settings)
    httpx.put(f"{service.url}/faults/refund_payment", json={"down": True}).raise_for_status()
    body = place(service, price_cents=1000, shipping_address=AQ, coordination=coordination)
    first_try_failed = "SELECT 1 FROM orders.saga_steps WHERE order_id = %s AND name = %s AND status = 'failed' AND attempts = 1"  # noqa: E501
    args = (body["order_id"], "refund_payment")
    wait_until(lambda: sql.execute(first_try_failed, args).fetchone() is not None, "a failed try")
    # ... and checkpointed by DBOS (a kill before that would run the same try again).
    checkpointed = """SELECT 1 FROM dbos.operation_outputs op JOIN saga_status v
                        ON v.workflow_id = op.workflow_uuid
                       WHERE v.order_id = %s AND op.function_name = %s AND op.error IS NOT NULL"""
    wait_until(lambda: sql.execute(checkpointed, args).fetchone() is not None, "checkpointed")

    service.kill()  # during the durable 2 s wait before the second try
    service.start(**settings)
    wait_until(lambda: saga_row(sql, body["order_id"])["state"] == "COMPENSATION_FAILED", "parked")

    row = saga_row(sql, body["order_id"])
    assert row["current_step"] == "refund_payment"
    assert row["step_attempts"] == 3  # three tries in all, not three after the restart


def test_a_saga_completed_just_before_a_kill_stays_completed_whatever_fails_next(
    service: ServiceProcess, service_db: str, sql: psycopg.Connection[Any]
) -> None:
    """The last step marks the saga COMPLETED a moment before DBOS checkpoints it. A kill in
    that moment re-runs the step on restart: it must keep its outcome, even if the
    notification service is down by then, and never undo a completed order."""
    service.start(PARTICIPANT_LATENCY_MS="600")
    body = place(service, price_cents=1000)
    confirming = (
        "SELECT 1 FROM orders.saga_steps WHERE order_id = %s AND name = %s AND status = 'executing'"
    )
    args = (body["order_id"], "send_confirmation")
    wait_until(lambda: sql.execute(confirming, args).fetchone() is not None, "confirming")
    with psycopg.connect(service_db) as holder:  # holds DBOS's checkpoint of the step back
        holder.execute("LOCK TABLE dbos.operation_outputs IN EXCLUSIVE MODE")
        wait_until(
            lambda: saga_row(sql, body["order_id"])["state"] == "COMPLETED", "completed in SQL"
        )
        service.kill()
        assert "send_confirmation" not in _recorded(sql, body["order_id"])
    for operation in ("send_confirmation", "send_cancellation_notice"):
        sql.execute("INSERT INTO faults.switches (operation, down) VALUES (%s, true)", (operation,))

    service.start()
    view = wait_for_end(service.url, body["order_id"])

    assert view["state"] == "COMPLETED"
    assert view["compensations"] == []
    confirmation = next(s for s in view["steps"] if s["name"] == "send_confirmation")
    assert confirmation["attempts"] == 1  # its recorded outcome stood; no second call
    assert_nothing_lost(sql, view, {"WIDGET": 5}, {"WIDGET": 2})


def _recorded(sql: psycopg.Connection[Any], order_id: str) -> list[str]:
    rows = sql.execute(
        """SELECT op.function_name FROM dbos.operation_outputs op
             JOIN orders.orders o ON o.saga_id = op.workflow_uuid WHERE o.order_id = %s""",
        (order_id,),
    ).fetchall()
    return [name for (name,) in rows]


@COORDINATIONS
@pytest.mark.parametrize("request_kind", ["approve", "cancel"])
def test_a_request_whose_wake_up_was_lost_in_a_crash_reaches_the_saga_on_restart(
    service: ServiceProcess,
    service_db: str,
    sql: psycopg.Connection[Any],
    request_kind: str,
    coordination: str,
) -> None:
    from orders import control

    service.start()
    body = place(service, price_cents=60_000, coordination=coordination)
    wait_until(lambda: saga_row(sql, body["order_id"])["state"] == "AWAITING_APPROVAL", "awaiting")
    service.kill()
    # What the API leaves if it dies after settling the request, before waking the saga.
    with psycopg.connect(service_db, autocommit=True) as conn:
        if request_kind == "approve":
            control.decide(conn, body["order_id"], "approved", control.Operator())
        else:
            control.cancel(conn, body["order_id"], control.Operator())

    service.start()  # the default approval timeout is a day: only a wake-up ends the wait
    view = wait_for_end(service.url, body["order_id"], timeout=30)

    assert view["state"] == ("COMPLETED" if request_kind == "approve" else "FAILED")
    assert_nothing_lost(sql, view, {"WIDGET": 5}, {"WIDGET": 2})
