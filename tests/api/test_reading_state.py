"""What a user and an operator read: order views, lists, health, docs, and the SQL view."""

from collections.abc import Callable
from typing import Any

import httpx
import psycopg

from tests.support.orders import order_body


def test_a_new_order_shows_its_four_steps_before_they_run(
    api: httpx.Client, stock: Callable[..., str]
) -> None:
    sku = stock(1)
    body = order_body({sku: 1})
    accepted = api.post("/orders", json=body)

    view = api.get(accepted.headers["Location"]).json()

    assert view["order_id"] == body["order_id"]
    assert [s["name"] for s in view["steps"]] == [
        "reserve_inventory",
        "process_payment",
        "create_shipment",
        "send_confirmation",
    ]
    assert view["state"] in ("STARTED", "PENDING", "COMPLETED")
    api.post("/orders", json=body, params={"wait": 30})


def test_orders_are_listed_newest_first_and_filtered_by_state(
    api: httpx.Client, stock: Callable[..., str]
) -> None:
    sku = stock(10)
    done = api.post("/orders", json=order_body({sku: 1}), params={"wait": 30}).json()
    failed = api.post(
        "/orders", json=order_body({sku: 1}, payment_method="pm_card_declined"), params={"wait": 30}
    ).json()

    newest = api.get("/orders", params={"limit": 2}).json()["orders"]
    only_failed = api.get("/orders", params={"state": "FAILED", "limit": 1000}).json()["orders"]

    assert [o["order_id"] for o in newest] == [failed["order_id"], done["order_id"]]
    assert set(newest[0]) == {
        "order_id", "saga_id", "state", "total_cents", "error", "current_step", "customer_id",
        "needs_attention", "attention_reason", "coordination", "created_at", "updated_at"
    }  # fmt: skip
    assert {o["state"] for o in only_failed} == {"FAILED"}
    assert failed["order_id"] in {o["order_id"] for o in only_failed}
    assert done["order_id"] not in {o["order_id"] for o in only_failed}


def test_times_are_iso_8601_utc(api: httpx.Client, stock: Callable[..., str]) -> None:
    view = api.post("/orders", json=order_body({stock(1): 1}), params={"wait": 30}).json()

    stamps = [view["created_at"], view["updated_at"]] + [
        s[key] for s in view["steps"] for key in ("started_at", "finished_at")
    ]
    assert all(stamp.endswith("Z") for stamp in stamps), stamps


def test_saga_status_view_matches_the_api(
    api: httpx.Client, db: psycopg.Connection[Any], stock: Callable[..., str]
) -> None:
    view = api.post(
        "/orders",
        json=order_body({stock(1): 1}, customer_email="x@bounce.test"),
        params={"wait": 30},
    ).json()

    row = db.execute(
        """SELECT saga_id, order_id, state, current_step, error, dbos_status, created_at, updated_at
             FROM saga_status WHERE order_id = %s""",
        (view["order_id"],),
    ).fetchone()

    assert row is not None
    assert row[:6] == (
        view["saga_id"], view["order_id"], "FAILED", None, view["error"], "SUCCESS"
    )  # fmt: skip


def test_recorded_steps_are_readable_json_in_dbos_tables(
    api: httpx.Client, db: psycopg.Connection[Any], stock: Callable[..., str]
) -> None:
    view = api.post("/orders", json=order_body({stock(1): 1}), params={"wait": 30}).json()

    outputs = db.execute(
        """SELECT function_name, output::jsonb ->> 'outcome', serialization
             FROM dbos.operation_outputs WHERE workflow_uuid = %s ORDER BY function_id""",
        (view["saga_id"],),
    ).fetchall()
    inputs = db.execute(
        "SELECT inputs::jsonb FROM dbos.workflow_input WHERE workflow_uuid = %s",
        (view["saga_id"],),
    ).fetchone()

    assert [(name, outcome) for name, outcome, _ in outputs] == [
        ("reserve_inventory", "done"),
        ("process_payment", "done"),
        ("create_shipment", "done"),
        ("send_confirmation", "done"),
    ]
    assert {serialization for _, _, serialization in outputs} == {"portable_json"}
    assert inputs is not None
    assert view["order_id"] in str(inputs[0])


def test_health_and_docs(api: httpx.Client) -> None:
    assert api.get("/healthz").json() == {"status": "ok"}
    assert api.get("/docs").status_code == 200
    paths = api.get("/openapi.json").json()["paths"]
    assert {"/orders", "/orders/{order_id}", "/inventory/{sku}", "/faults/{operation}"} <= set(
        paths
    )


def test_fault_switches_are_listed_for_every_operation(api: httpx.Client) -> None:
    switches = api.get("/faults").json()

    assert set(switches) == {
        "reserve_inventory", "process_payment", "create_shipment", "send_confirmation",
        "release_reservation", "refund_payment", "cancel_shipment", "send_cancellation_notice",
    }  # fmt: skip
    assert set(switches.values()) == {False}
