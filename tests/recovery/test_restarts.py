"""Restarts of the whole service: many sagas at once, a clean stop, and an order whose
saga was never created because the process died between storing it and starting it."""

import signal
from typing import Any

import httpx
import psycopg

from tests.recovery.conftest import wait_for_end, wait_until
from tests.support.orders import assert_effects_match, assert_nothing_lost, available, order_body
from tests.support.process import ServiceProcess

CARDS: list[dict[str, Any]] = [
    {},
    {"payment_method": "pm_card_declined"},
    {"payment_method": "pm_card_flaky"},
    {"customer_email": "ada@bounce.test"},
    {"shipping_address": {"name": "A", "line1": "1", "city": "C", "postal_code": "1",
                          "country": "AQ"}},
]  # fmt: skip


def test_a_kill_with_many_sagas_in_flight_finishes_every_one_exactly_once(
    service: ServiceProcess, sql: psycopg.Connection[Any]
) -> None:
    service.start(PARTICIPANT_LATENCY_MS="300")
    skus = {f"SKU{i}": 3 for i in range(5)}
    bodies = []
    with httpx.Client(base_url=service.url) as client:
        for sku, count in skus.items():
            client.put(f"/inventory/{sku}", json={"available": count, "price_cents": 700})
        for i in range(15):
            body = order_body({f"SKU{i % 5}": 1}, **CARDS[i % len(CARDS)])
            assert client.post("/orders", json=body).status_code == 202
            bodies.append(body)
    in_flight = "SELECT count(*) FROM orders.orders WHERE state IN ('PENDING', 'COMPENSATING')"
    wait_until(lambda: sql.execute(in_flight).fetchone() == (15,), "all 15 sagas in flight")

    service.kill()
    service.start(PARTICIPANT_LATENCY_MS="0")

    views = [wait_for_end(service.url, body["order_id"]) for body in bodies]
    states = [view["state"] for view in views]
    assert states.count("COMPLETED") == 6  # visa and flaky, 3 orders each
    for view in views:
        assert_effects_match(sql, view)
    for sku, before in skus.items():
        completed = sum(
            1
            for view, body in zip(views, bodies, strict=True)
            if view["state"] == "COMPLETED" and body["items"][0]["sku"] == sku
        )
        assert available(sql, sku) == before - completed


def test_a_clean_stop_mid_saga_undoes_nothing_and_the_saga_resumes(
    service: ServiceProcess, sql: psycopg.Connection[Any]
) -> None:
    service.start(PARTICIPANT_LATENCY_MS="1000")
    with httpx.Client(base_url=service.url) as client:
        client.put("/inventory/WIDGET", json={"available": 5, "price_cents": 1500})
        body = order_body({"WIDGET": 1})
        client.post("/orders", json=body)
    paying = "SELECT 1 FROM payments.payments WHERE order_id = %s"
    wait_until(lambda: sql.execute(paying, (body["order_id"],)).fetchone() is not None, "capture")

    exit_code = service.stop()

    assert exit_code in (0, -signal.SIGTERM)
    row = sql.execute(
        "SELECT state, dbos_status FROM saga_status WHERE order_id = %s", (body["order_id"],)
    ).fetchone()
    assert row == ("PENDING", "PENDING")  # stopped mid-saga, nothing compensated
    service.start(PARTICIPANT_LATENCY_MS="0")
    view = wait_for_end(service.url, body["order_id"])
    assert view["state"] == "COMPLETED"
    assert view["compensations"] == []
    assert_nothing_lost(sql, view, {"WIDGET": 5}, {"WIDGET": 1})


def test_an_order_stored_without_its_saga_is_started_on_the_next_start(
    service: ServiceProcess, service_db: str, sql: psycopg.Connection[Any]
) -> None:
    service.start()
    with httpx.Client(base_url=service.url) as client:
        client.put("/inventory/WIDGET", json={"available": 5, "price_cents": 1500})
    service.kill()
    # What POST /orders leaves if the process dies after storing the order, before the start.
    from orders import intake

    body = order_body({"WIDGET": 1})
    with psycopg.connect(service_db, autocommit=True) as conn:
        placement = intake.place(conn, body, idempotency_key=None)
    assert placement.created

    service.start()
    view = wait_for_end(service.url, body["order_id"])

    assert view["saga_id"] == placement.saga_id
    assert view["state"] == "COMPLETED"
    assert_nothing_lost(sql, view, {"WIDGET": 5}, {"WIDGET": 1})


def test_a_second_process_on_the_same_database_and_executor_id_refuses_to_start(
    service: ServiceProcess, service_db: str, sql: psycopg.Connection[Any]
) -> None:
    service.start(PARTICIPANT_LATENCY_MS="600")
    with httpx.Client(base_url=service.url) as client:
        client.put("/inventory/WIDGET", json={"available": 5, "price_cents": 1500})
        body = order_body({"WIDGET": 1})
        client.post("/orders", json=body)
    second = ServiceProcess(service_db, EXECUTOR_LOCK_WAIT_SECONDS="1", LOG_LEVEL="WARNING")

    exit_code = second.start_expecting_failure()

    assert exit_code != 0
    assert "executor id 'local' is in use by another live process" in second.tail()
    view = wait_for_end(service.url, body["order_id"])
    assert view["state"] == "COMPLETED"
    assert all(step["attempts"] == 1 for step in view["steps"])  # nobody ran them twice
    assert_nothing_lost(sql, view, {"WIDGET": 5}, {"WIDGET": 1})


def test_a_second_process_on_a_busy_port_exits_before_touching_the_database(
    service: ServiceProcess, service_db: str
) -> None:
    service.start()
    second = ServiceProcess(service_db, LOG_LEVEL="WARNING")
    second.port = service.port

    exit_code = second.start_expecting_failure(timeout=30)

    assert exit_code == 1
    assert f"cannot listen on 127.0.0.1:{service.port}" in second.tail()
    assert "executor id" not in second.tail()


def test_a_saga_recovered_more_than_a_hundred_times_is_not_dead_lettered(
    service: ServiceProcess, sql: psycopg.Connection[Any]
) -> None:
    """DBOS dead-letters a workflow after 100 recoveries by default; a saga (waiting for an
    approval, parked) may outlive that many restarts and must still finish."""
    service.start(PARTICIPANT_LATENCY_MS="1500")
    with httpx.Client(base_url=service.url) as client:
        client.put("/inventory/WIDGET", json={"available": 5, "price_cents": 1500})
        body = order_body({"WIDGET": 1})
        assert client.post("/orders", json=body).status_code == 202
    running = "SELECT state FROM orders.orders WHERE order_id = %s"
    wait_until(
        lambda: sql.execute(running, (body["order_id"],)).fetchone() == ("PENDING",), "running"
    )
    service.kill()
    sql.execute(  # as if it had been recovered 150 times already
        """UPDATE dbos.workflow_status SET recovery_attempts = 150
            WHERE workflow_uuid = (SELECT saga_id FROM orders.orders WHERE order_id = %s)""",
        (body["order_id"],),
    )
    service.start(PARTICIPANT_LATENCY_MS="0")
    view = wait_for_end(service.url, body["order_id"])
    assert view["state"] == "COMPLETED"
    assert_nothing_lost(sql, view, {"WIDGET": 5}, {"WIDGET": 1})
