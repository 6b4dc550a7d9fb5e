"""Needs attention: a saga that is not COMPLETED/FAILED and is parked, or whose DBOS workflow
ended without finishing it, or that has not changed for more than ATTENTION_AFTER_SECONDS (one
waiting for approval: counted from its deadline). The saga_status column, the order view's
field and reason, and GET /orders?attention=.

ATTENTION_AFTER_SECONDS is the database's (orders.settings, written by each process as it
starts): the tests here write it as a start does (runtime.migrate.migrate) and put this
process's own value back after. States a healthy saga never stays in for long (a deadline long
past, a workflow that ended while the order is unfinished) are planted on real sagas inside a
transaction that is rolled back, where now() is the transaction's start.
"""

import os
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import psycopg
import pytest
from dbos import DBOS
from pydantic import ValidationError

from orders import intake
from runtime.migrate import migrate
from runtime.settings import Settings
from tests.api.test_approvals import big_order
from tests.api.test_stuck_compensation import park_an_order
from tests.support import postgres
from tests.support.orders import order_body, wait_for_state, wait_for_step
from tests.support.process import ServiceProcess

ENDED = "workflow ended without finishing it"


@pytest.fixture
def attention_after() -> Iterator[Callable[[float], None]]:
    """attention_after(seconds): the database's ATTENTION_AFTER_SECONDS, written the way a
    process writes it at start; this process's own again after the test."""
    url = os.environ["DATABASE_URL"]
    yield lambda seconds: migrate(url, Settings(attention_after_seconds=seconds))
    migrate(url)


@pytest.fixture
def tx() -> Iterator[psycopg.Connection[Any]]:
    """A connection in a transaction that is rolled back: what is planted never lands."""
    with psycopg.connect(os.environ["DATABASE_URL"]) as conn:
        yield conn
        conn.rollback()


def attention(conn: psycopg.Connection[Any], order_id: str) -> tuple[Any, ...]:
    """(state, dbos_status, needs_attention, attention_reason) from saga_status."""
    row = conn.execute(
        """SELECT state, dbos_status, needs_attention, attention_reason
             FROM saga_status WHERE order_id = %s""",
        (order_id,),
    ).fetchone()
    assert row is not None, order_id
    return tuple(row)


def listed(api: httpx.Client, **params: Any) -> set[str]:
    response = api.get("/orders", params={"limit": 1000, **params})
    assert response.status_code == 200, response.text
    return {o["order_id"] for o in response.json()["orders"]}


@pytest.mark.usefixtures("faults_repaired")
def test_a_parked_saga_needs_attention_until_it_is_retried_to_the_end(
    api: httpx.Client, db: psycopg.Connection[Any], stock: Callable[..., str]
) -> None:
    _, body = park_an_order(api, stock)
    order_id = body["order_id"]

    parked = api.get(f"/orders/{order_id}").json()
    row = attention(db, order_id)
    needing, not_needing = listed(api, attention="true"), listed(api, attention="false")
    parked_needing = listed(api, attention="true", state="COMPENSATION_FAILED")
    api.put("/faults/refund_payment", json={"down": False}).raise_for_status()
    assert api.post(f"/orders/{order_id}/retry-compensation").status_code == 202
    failed = api.post("/orders", json=body, params={"wait": 30}).json()

    assert (parked["needs_attention"], parked["attention_reason"]) == (True, "parked")
    assert row == ("COMPENSATION_FAILED", "PENDING", True, "parked")  # alive, but waiting
    assert order_id in needing
    assert order_id in parked_needing
    assert order_id not in not_needing
    assert failed["state"] == "FAILED"
    assert (failed["needs_attention"], failed["attention_reason"]) == (False, None)
    assert order_id in listed(api, attention="false")
    assert order_id not in listed(api, attention="true")


def test_finished_sagas_never_need_attention(
    api: httpx.Client,
    db: psycopg.Connection[Any],
    tx: psycopg.Connection[Any],
    stock: Callable[..., str],
    attention_after: Callable[[float], None],
) -> None:
    sku = stock(10)
    completed = api.post("/orders", json=order_body({sku: 1}), params={"wait": 30}).json()
    failed = api.post(
        "/orders", json=order_body({sku: 1}, payment_method="pm_card_declined"), params={"wait": 30}
    ).json()
    attention_after(0.05)
    time.sleep(0.2)  # both unchanged for longer than that

    views = [api.get(f"/orders/{v['order_id']}").json() for v in (completed, failed)]
    rows = [attention(db, v["order_id"]) for v in (completed, failed)]
    needing, not_needing = listed(api, attention="true"), listed(api, attention="false")
    # Not even with a workflow that ended badly: the order is finished.
    tx.execute(
        "UPDATE dbos.workflow_status SET status = 'ERROR' WHERE workflow_uuid IN (%s, %s)",
        (completed["saga_id"], failed["saga_id"]),
    )
    planted = [attention(tx, v["order_id"]) for v in (completed, failed)]

    assert [(v["state"], v["needs_attention"], v["attention_reason"]) for v in views] == [
        ("COMPLETED", False, None),
        ("FAILED", False, None),
    ]
    assert rows == [("COMPLETED", "SUCCESS", False, None), ("FAILED", "SUCCESS", False, None)]
    assert {completed["order_id"], failed["order_id"]} <= not_needing
    assert not {completed["order_id"], failed["order_id"]} & needing
    assert planted == [("COMPLETED", "ERROR", False, None), ("FAILED", "ERROR", False, None)]


def test_a_saga_waiting_for_approval_within_its_deadline_does_not_need_attention(
    api: httpx.Client,
    db: psycopg.Connection[Any],
    tx: psycopg.Connection[Any],
    stock: Callable[..., str],
    attention_after: Callable[[float], None],
) -> None:
    attention_after(0.2)
    body = big_order(api, stock)  # waits APPROVAL_TIMEOUT_SECONDS (4 s in the suite)
    order_id = body["order_id"]
    wait_for_state(api, order_id, "AWAITING_APPROVAL")
    time.sleep(0.5)  # unchanged for longer than ATTENTION_AFTER_SECONDS

    waiting = attention(db, order_id)
    view = api.get(f"/orders/{order_id}").json()
    # Past its deadline, but by less than ATTENTION_AFTER_SECONDS: it is about to time out.
    tx.execute(
        """UPDATE orders.orders SET approval_deadline = now() - interval '0.1 s',
                  updated_at = now() - interval '10 s' WHERE order_id = %s""",
        (order_id,),
    )
    just_past = attention(tx, order_id)
    # Past its deadline by more: its timeout did not happen.
    tx.execute(
        "UPDATE orders.orders SET approval_deadline = now() - interval '3 s' WHERE order_id = %s",
        (order_id,),
    )
    long_past = attention(tx, order_id)
    tx.rollback()
    assert api.post(f"/orders/{order_id}/reject").status_code == 202
    rejected = api.post("/orders", json=body, params={"wait": 30}).json()

    assert waiting == ("AWAITING_APPROVAL", "PENDING", False, None)
    assert (view["state"], view["needs_attention"], view["attention_reason"]) == (
        "AWAITING_APPROVAL", False, None
    )  # fmt: skip
    assert just_past == ("AWAITING_APPROVAL", "PENDING", False, None)
    assert long_past == (
        "AWAITING_APPROVAL", "PENDING", True, "unchanged for 3 s past its approval deadline"
    )  # fmt: skip
    assert (rejected["state"], rejected["needs_attention"]) == ("FAILED", False)


def test_an_unfinished_saga_whose_workflow_ended_needs_attention(
    api: httpx.Client,
    db: psycopg.Connection[Any],
    tx: psycopg.Connection[Any],
    stock: Callable[..., str],
) -> None:
    body = big_order(api, stock)
    order_id = body["order_id"]
    saga_id = wait_for_state(api, order_id, "AWAITING_APPROVAL")["saga_id"]

    planted = {}
    for status in ("SUCCESS", "ERROR", "MAX_RECOVERY_ATTEMPTS_EXCEEDED", "ENQUEUED", "PENDING"):
        tx.execute(
            "UPDATE dbos.workflow_status SET status = %s WHERE workflow_uuid = %s",
            (status, saga_id),
        )
        planted[status] = attention(tx, order_id)[2:]
    tx.rollback()
    DBOS.cancel_workflow(saga_id)  # an operator's kill switch: it undoes nothing
    cancelled = attention(db, order_id)
    view = api.get(f"/orders/{order_id}").json()
    needing = listed(api, attention="true")
    DBOS.resume_workflow(saga_id)  # back on a queue, then running again where it stopped
    until = time.monotonic() + 10
    while attention(db, order_id)[1] != "PENDING" and time.monotonic() < until:
        time.sleep(0.01)
    resumed = attention(db, order_id)
    api.post(f"/orders/{order_id}/reject")  # (409 if its deadline came first: it timed out)
    rejected = api.post("/orders", json=body, params={"wait": 30}).json()

    assert planted == {
        "SUCCESS": (True, ENDED),
        "ERROR": (True, ENDED),
        "MAX_RECOVERY_ATTEMPTS_EXCEEDED": (True, ENDED),
        "ENQUEUED": (False, None),
        "PENDING": (False, None),
    }
    assert cancelled == ("AWAITING_APPROVAL", "CANCELLED", True, ENDED)
    assert (view["dbos_status"], view["needs_attention"], view["attention_reason"]) == (
        "CANCELLED", True, ENDED
    )  # fmt: skip
    assert order_id in needing
    assert resumed == ("AWAITING_APPROVAL", "PENDING", False, None)
    assert (rejected["state"], rejected["needs_attention"]) == ("FAILED", False)


def test_a_stored_order_without_its_workflow_needs_attention_only_once_unchanged_long(
    tx: psycopg.Connection[Any], stock: Callable[..., str]
) -> None:
    # Stored as POST /orders stores it, never started, never committed (the sweeper would
    # start it). ATTENTION_AFTER_SECONDS is this process's: 300.
    body = order_body({stock(1): 1})
    intake.place(tx, body, None)

    fresh = attention(tx, body["order_id"])
    tx.execute(
        "UPDATE orders.orders SET updated_at = now() - interval '299 s' WHERE order_id = %s",
        (body["order_id"],),
    )
    almost = attention(tx, body["order_id"])
    tx.execute(
        "UPDATE orders.orders SET updated_at = now() - interval '301 s' WHERE order_id = %s",
        (body["order_id"],),
    )
    old = attention(tx, body["order_id"])

    assert fresh == ("STARTED", None, False, None)  # no workflow yet is not an ended one
    assert almost == ("STARTED", None, False, None)
    assert old == ("STARTED", None, True, "unchanged for 301 s")


@pytest.mark.usefixtures("faults_repaired")
@pytest.mark.parametrize(
    ("after", "needed"), [(0.2, True), (30, False)], ids=["longer-than-it", "within-it"]
)
def test_a_running_saga_unchanged_longer_than_the_setting_needs_attention(
    api: httpx.Client,
    db: psycopg.Connection[Any],
    stock: Callable[..., str],
    attention_after: Callable[[float], None],
    after: float,
    needed: bool,
) -> None:
    attention_after(after)
    # Slow, but under STEP_TIMEOUT_SECONDS (1 s in the suite): one call, nothing changing.
    api.put("/faults/create_shipment", json={"down": False, "latency_ms": 600}).raise_for_status()
    body = order_body({stock(1): 1})
    assert api.post("/orders", json=body).status_code == 202
    wait_for_step(api, body["order_id"], "create_shipment", "executing")

    seen = set()
    while (row := attention(db, body["order_id"]))[0] == "PENDING":
        seen.add(row[2:])
        time.sleep(0.01)
    finished = api.post("/orders", json=body, params={"wait": 30}).json()

    if needed:
        assert any(n and r.startswith("unchanged for ") for n, r in seen), seen
    else:
        assert seen == {(False, None)}
    assert (finished["state"], finished["needs_attention"]) == ("COMPLETED", False)


@pytest.mark.parametrize("value", ["maybe", "", "2", "truee"])
def test_a_bad_attention_filter_is_a_422(api: httpx.Client, value: str) -> None:
    response = api.get("/orders", params={"attention": value})

    assert response.status_code == 422, response.text
    (error,) = response.json()["detail"]
    assert error["loc"] == ["query", "attention"]


def test_attention_after_seconds_must_be_above_zero(monkeypatch: pytest.MonkeyPatch) -> None:
    for bad in ("0", "-1", "nan", "soon"):
        monkeypatch.setenv("ATTENTION_AFTER_SECONDS", bad)
        with pytest.raises(ValidationError, match="attention_after_seconds"):
            Settings()
    monkeypatch.setenv("ATTENTION_AFTER_SECONDS", "0.5")
    assert Settings().attention_after_seconds == 0.5
    monkeypatch.delenv("ATTENTION_AFTER_SECONDS")
    assert Settings().attention_after_seconds == 300


def test_the_process_writes_its_setting_for_psql_to_read() -> None:
    """`python -m api` with ATTENTION_AFTER_SECONDS=7 on a database of its own: psql then
    reads 7 in orders.settings, and saga_status's rule uses it."""
    url = postgres.create_database("saga_attention")
    service = ServiceProcess(url, ATTENTION_AFTER_SECONDS="7")
    try:
        service.start()
        with psycopg.connect(url) as sql:
            setting = sql.execute("SELECT attention_after_seconds FROM orders.settings").fetchall()
            for age in (6, 8):
                body = order_body({"SKU-X": 1}, order_id=f"planted-{age}")
                intake.place(sql, body, None)
                sql.execute(
                    "UPDATE orders.orders SET updated_at = now() - make_interval(secs => %s)"
                    " WHERE order_id = %s",
                    (age, body["order_id"]),
                )
            rows = sql.execute(
                """SELECT order_id, needs_attention, attention_reason FROM saga_status
                    ORDER BY order_id"""
            ).fetchall()
            sql.rollback()
    finally:
        service.stop()
        postgres.drop_database(url)

    assert setting == [(7.0,)]
    assert rows == [("planted-6", False, None), ("planted-8", True, "unchanged for 8 s")]


def test_counting_those_that_need_attention_reads_only_unfinished_sagas(
    tx: psycopg.Connection[Any],
) -> None:
    # 100,000 finished orders (old, so out of everyone's newest-first way), never committed.
    tx.execute(
        """INSERT INTO orders.orders
               (order_id, saga_id, request, request_sha256, state, created_at, updated_at)
           SELECT 'bulk-' || i, 'bulk-' || i, '{}', '', 'COMPLETED', '2000-01-01', '2000-01-01'
             FROM generate_series(1, 100000) i"""
    )
    tx.execute("ANALYZE orders.orders")

    plan = "\n".join(
        row[0]
        for row in tx.execute(
            "EXPLAIN SELECT count(*) FROM saga_status WHERE needs_attention"
        ).fetchall()
    )
    newest = "\n".join(
        row[0]
        for row in tx.execute(
            """EXPLAIN SELECT order_id FROM saga_status WHERE needs_attention
                ORDER BY created_at DESC, order_id DESC LIMIT 50"""
        ).fetchall()
    )

    assert "orders_unfinished" in plan, plan
    assert "Seq Scan on orders" not in plan, plan
    assert "orders_unfinished" in newest, newest
